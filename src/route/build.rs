//! Building a router: every utterance's embedding (from the model, the on-disk cache, or the
//! router being replaced), the index, and the head (trained, or read from its cache).

use super::head::{Head, INVERSE_REGULARIZATION};
use super::router::{BuildError, Router};
use crate::config::{Config, RouteId};
use crate::embed::cache::{EmbeddingCache, HeadCache, TextKey, text_key};
use crate::embed::{Embedder, Encoder};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Where a router's utterance embeddings came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Utterances the model embedded.
    pub embedded: usize,
    /// Utterances whose embedding was reused (the replaced router's, or the disk cache's).
    pub reused: usize,
}

impl Router {
    /// Embeds every route utterance and builds the index.
    pub fn build(config: Config, encoder: &Encoder) -> Result<Router, BuildError> {
        let texts = utterance_texts(&config);
        let embeddings = encoder.embed(&texts)?;
        let vectors = embeddings.into_iter().map(|e| e.vector).collect();
        Router::from_embeddings(config, vectors)
    }

    /// Like `build`, reading the embeddings of unchanged utterances from the cache in
    /// `cache_dir` and writing back the current set. Cache problems are logged, not fatal.
    pub fn build_cached(
        config: Config,
        encoder: &Encoder,
        cache_dir: Option<&Path>,
    ) -> Result<Router, BuildError> {
        Router::rebuild(config, encoder, None, cache_dir).map(|(router, _)| router)
    }

    /// Builds the router for `config` beside `previous` (a reload): utterances `previous`
    /// already holds, or the cache in `cache_dir`, are not embedded again, and the head
    /// comes from its cache when the utterances are the same.
    pub fn rebuild(
        config: Config,
        embedder: &dyn Embedder,
        previous: Option<&Router>,
        cache_dir: Option<&Path>,
    ) -> Result<(Router, Provenance), BuildError> {
        let encoder = embedder.model();
        let key = match (cache_dir, encoder.cache_key()) {
            (Some(_), Ok(key)) => Some(key),
            (Some(_), Err(err)) => {
                tracing::warn!(error = %err, "cannot hash the model weights; not caching");
                None
            }
            (None, _) => None,
        };
        let dir = cache_dir.filter(|_| key.is_some());
        let texts = utterance_texts(&config);
        let keys: Vec<TextKey> = texts.iter().map(|t| text_key(t)).collect();
        let mut known: HashMap<TextKey, Vec<f32>> = previous.map(known_vectors).unwrap_or_default();
        let mut cache = dir
            .zip(key.as_deref())
            .map(|(dir, key)| EmbeddingCache::open(dir, key, encoder.dim()));
        let missing: Vec<usize> = (0..texts.len())
            .filter(|&i| {
                !known.contains_key(&keys[i])
                    && cache.as_ref().and_then(|c| c.get(&keys[i])).is_none()
            })
            .collect();
        let missing_texts: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
        let fresh = if missing_texts.is_empty() {
            Vec::new()
        } else {
            embedder.embed_texts(&missing_texts)?
        };
        for (&i, embedding) in missing.iter().zip(fresh) {
            known.insert(keys[i], embedding.vector);
        }
        let mut current: HashMap<TextKey, Vec<f32>> = HashMap::with_capacity(texts.len());
        for key in &keys {
            let vector = known
                .get(key)
                .cloned()
                .or_else(|| cache.as_ref().and_then(|c| c.get(key)).map(<[f32]>::to_vec));
            if let Some(vector) = vector {
                current.insert(*key, vector);
            }
        }
        let vectors: Vec<Vec<f32>> = keys
            .iter()
            .filter_map(|k| current.get(k).cloned())
            .collect();
        let provenance = Provenance {
            embedded: missing.len(),
            reused: texts.len() - missing.len(),
        };
        tracing::info!(
            reused = provenance.reused,
            embedded = provenance.embedded,
            "utterance embeddings"
        );
        let head = match (dir, key.as_deref(), cache.as_mut()) {
            (Some(dir), Some(key), Some(cache)) => {
                if (!missing.is_empty() || cache.len() != current.len())
                    && let Err(err) = cache.store(current)
                {
                    tracing::warn!(path = %cache.path().display(), error = %err, "cannot write the embedding cache");
                }
                cached_head(
                    &config,
                    &vectors,
                    &keys,
                    &HeadCache::open(dir, key),
                    previous,
                )
            }
            _ => train_head(&config, &vectors, previous),
        };
        Ok((Router::from_parts(config, vectors, head)?, provenance))
    }

    /// Builds from precomputed utterance embeddings, in route order then utterance order,
    /// training the head.
    pub fn from_embeddings(config: Config, vectors: Vec<Vec<f32>>) -> Result<Router, BuildError> {
        let head = train_head(&config, &vectors, None);
        Router::from_parts(config, vectors, head)
    }
}

/// Every utterance's text, in route order then utterance order (the index's order).
fn utterance_texts(config: &Config) -> Vec<&str> {
    config
        .routes
        .iter()
        .flat_map(|r| r.utterances.iter().map(String::as_str))
        .collect()
}

/// The embeddings `router` holds, by text.
fn known_vectors(router: &Router) -> HashMap<TextKey, Vec<f32>> {
    utterance_texts(router.config())
        .into_iter()
        .enumerate()
        .filter_map(|(i, text)| Some((text_key(text), router.index().vector(i)?.to_vec())))
        .collect()
}

/// Each indexed utterance's route, in index order.
fn owners(config: &Config) -> Vec<RouteId> {
    config
        .route_ids()
        .flat_map(|r| std::iter::repeat_n(r, config.route(r).utterances.len()))
        .collect()
}

/// Trains the head, from `previous`'s where it has one (same routes by name).
fn train_head(config: &Config, vectors: &[Vec<f32>], previous: Option<&Router>) -> Option<Head> {
    if config.head_weight <= 0.0 {
        return None;
    }
    let started = Instant::now();
    let old_of = |r: RouteId| previous?.config().route_id(config.route(r).name.as_str());
    let start = previous
        .and_then(Router::head)
        .map(|head| (head, &old_of as &dyn Fn(RouteId) -> Option<RouteId>));
    let head = Head::train_from(vectors, &owners(config), start);
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "trained the route head"
    );
    head
}

/// The head for these utterances from `cache`, else trained and stored there.
fn cached_head(
    config: &Config,
    vectors: &[Vec<f32>],
    keys: &[TextKey],
    cache: &HeadCache,
    previous: Option<&Router>,
) -> Option<Head> {
    if config.head_weight <= 0.0 {
        return None;
    }
    let owners = owners(config);
    // The head depends on the texts (their vectors, given the cache's model), which route
    // owns each, and the training settings.
    let mut hasher = Sha256::new();
    hasher.update(INVERSE_REGULARIZATION.to_le_bytes());
    for (key, route) in keys.iter().zip(&owners) {
        hasher.update(key);
        hasher.update((route.index() as u64).to_le_bytes());
    }
    let content: [u8; 32] = hasher.finalize().into();
    if let Some(head) = cache
        .load(&content)
        .and_then(|b| Head::from_bytes(&b, |i| config.route_at(i)))
    {
        return Some(head);
    }
    let head = train_head(config, vectors, previous)?;
    if let Err(err) = cache.store(&content, &head.to_bytes()) {
        tracing::warn!(path = %cache.path().display(), error = %err, "cannot write the head cache");
    }
    Some(head)
}
