//! The answer cache: an answer kept under its request's exact key (`key.rs`) in this
//! process (moka, bounded by `max_entries`) or in the shared Redis (each entry expiring
//! after its TTL), and optionally under its last user message's embedding in a bucket of
//! otherwise equal requests (`semantic.rs`), reused when a new prompt's embedding is at
//! least `threshold` similar. Only whole, successful completions are kept.

pub mod key;
mod semantic;
mod shared;

use crate::config::{CacheConfig, CacheStore, StateConfig};
use crate::quota::shared::StoreError;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A cached answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The `chat.completion` JSON as the client got it.
    #[serde(with = "body_text")]
    pub body: Bytes,
    /// The backend that made it.
    pub backend: String,
    /// What it cost then (0 without a `cost` on the backend).
    pub cost_usd: f64,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Hit {
    Exact(Arc<Entry>),
    /// An earlier prompt this similar (cosine).
    Semantic(Arc<Entry>, f32),
}

impl Hit {
    pub fn entry(&self) -> &Arc<Entry> {
        match self {
            Hit::Exact(e) | Hit::Semantic(e, _) => e,
        }
    }

    /// `hit` or `semantic-hit`, as `x-semroute-cache` says.
    pub fn label(&self) -> &'static str {
        match self {
            Hit::Exact(_) => "hit",
            Hit::Semantic(..) => "semantic-hit",
        }
    }
}

/// Where a request's answer is looked for and kept.
#[derive(Debug, Clone)]
pub struct Keys {
    pub exact: [u8; 32],
    /// With the last user message's embedding (requests routed by classification).
    pub semantic: Option<([u8; 32], Arc<Vec<f32>>)>,
}

enum Exact {
    Memory(moka::sync::Cache<[u8; 32], Arc<Entry>>),
    Redis(shared::RedisEntries),
}

pub struct AnswerCache {
    config: CacheConfig,
    exact: Option<Exact>,
    semantic: Option<semantic::Index>,
}

impl AnswerCache {
    /// The cache `config` describes; with `store: redis`, on `state`'s Redis (connected
    /// lazily: a Redis that is down makes lookups miss, never fail a request).
    pub fn new(config: &CacheConfig, state: &StateConfig) -> Result<AnswerCache, StoreError> {
        let exact = match (&config.exact, config.store, &state.redis) {
            (None, ..) => None,
            (Some(e), CacheStore::Redis, Some(url)) => Some(Exact::Redis(
                shared::RedisEntries::new(url, &state.prefix, state.timeout, e.ttl)?,
            )),
            (Some(e), ..) => Some(Exact::Memory(
                moka::sync::Cache::builder()
                    .max_capacity(e.max_entries)
                    .time_to_live(e.ttl)
                    .build(),
            )),
        };
        let max_buckets = config.exact.map_or(100_000, |e| e.max_entries);
        Ok(AnswerCache {
            config: config.clone(),
            exact,
            semantic: config
                .semantic
                .map(|s| semantic::Index::new(s.threshold, s.ttl, max_buckets)),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Whether the semantic cache is on (then the keys carry the prompt's embedding).
    pub fn semantic(&self) -> bool {
        self.semantic.is_some()
    }

    /// Whether `body`'s answer may come from (and go to) the cache: it asks for
    /// `temperature: 0` or sets a `seed`, unless `any_temperature` is on.
    pub fn cacheable(&self, body: &Map<String, Value>) -> bool {
        let zero = body
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t == 0.0);
        let seeded = body.get("seed").is_some_and(Value::is_number);
        self.config.any_temperature || zero || seeded
    }

    /// The answer kept for `keys`, exact first.
    pub async fn get(&self, keys: &Keys) -> Option<Hit> {
        let exact = match &self.exact {
            Some(Exact::Memory(m)) => m.get(&keys.exact),
            Some(Exact::Redis(r)) => r.get(&keys.exact).await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "the answer cache cannot be read; a miss");
                None
            }),
            None => None,
        };
        if let Some(entry) = exact {
            return Some(Hit::Exact(entry));
        }
        let (bucket, vector) = keys.semantic.as_ref()?;
        let (entry, similarity) = self.semantic.as_ref()?.get(bucket, vector)?;
        Some(Hit::Semantic(entry, similarity))
    }

    /// Keeps `entry` under `keys`: in this process at once (the next request finds it),
    /// in Redis on a task of the runtime.
    pub fn put(self: &Arc<Self>, keys: &Keys, entry: Entry) {
        let entry = Arc::new(entry);
        if let (Some(index), Some((bucket, vector))) = (&self.semantic, &keys.semantic) {
            index.put(*bucket, vector.clone(), entry.clone());
        }
        match &self.exact {
            Some(Exact::Memory(m)) => m.insert(keys.exact, entry),
            Some(Exact::Redis(_)) => {
                let (cache, key) = (self.clone(), keys.exact);
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    if let Some(Exact::Redis(r)) = &cache.exact
                        && let Err(err) = r.put(&key, &entry).await
                    {
                        tracing::warn!(error = %err, "an answer was not cached");
                    }
                });
            }
            None => {}
        }
    }
}

/// The body as text in Redis (a completion is JSON, so UTF-8).
mod body_text {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        String::deserialize(d).map(Bytes::from)
    }
}
