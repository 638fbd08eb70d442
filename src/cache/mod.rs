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

/// Answers larger than this are not kept (a completion is usually a few KiB).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// The semantic index's memory when there is no exact cache to take `max_mb` from.
const DEFAULT_MAX_BYTES: u64 = 256 << 20;

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
            (Some(e), ..) => {
                // Each entry weighs its bytes, and at least an equal share of the memory:
                // so both `max_mb` and `max_entries` hold.
                let floor = (e.max_bytes / e.max_entries.max(1)).max(1);
                Some(Exact::Memory(
                    moka::sync::Cache::builder()
                        .max_capacity(e.max_bytes)
                        .weigher(move |_, entry: &Arc<Entry>| {
                            let bytes = entry.body.len() as u64 + entry.backend.len() as u64;
                            u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
                        })
                        .time_to_live(e.ttl)
                        .build(),
                ))
            }
        };
        let max_bytes = config.exact.map_or(DEFAULT_MAX_BYTES, |e| e.max_bytes);
        Ok(AnswerCache {
            config: config.clone(),
            exact,
            semantic: config
                .semantic
                .map(|s| semantic::Index::new(s.threshold, s.ttl, max_bytes)),
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
        if entry.body.len() > MAX_ENTRY_BYTES {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExactCache;
    use std::time::Duration;

    fn cache(max_entries: u64, max_bytes: u64) -> Arc<AnswerCache> {
        let config = CacheConfig {
            exact: Some(ExactCache {
                ttl: Duration::from_secs(60),
                max_entries,
                max_bytes,
            }),
            semantic: None,
            store: CacheStore::Memory,
            any_temperature: false,
        };
        Arc::new(AnswerCache::new(&config, &StateConfig::default()).unwrap())
    }

    fn keys(i: u8) -> Keys {
        Keys {
            exact: [i; 32],
            semantic: None,
        }
    }

    fn entry(bytes: usize) -> Entry {
        Entry {
            body: Bytes::from(vec![b' '; bytes]),
            backend: "a".into(),
            cost_usd: 0.0,
        }
    }

    fn kept(cache: &AnswerCache, n: u8) -> usize {
        if let Some(Exact::Memory(m)) = &cache.exact {
            m.run_pending_tasks();
        }
        (0..n)
            .filter(|&i| {
                futures_util::FutureExt::now_or_never(cache.get(&keys(i)))
                    .flatten()
                    .is_some()
            })
            .count()
    }

    #[test]
    fn the_memory_cache_holds_to_its_entries_and_its_bytes() {
        let by_count = cache(4, 1 << 30);
        for i in 0..20 {
            by_count.put(&keys(i), entry(100));
        }
        assert!(kept(&by_count, 20) <= 4, "{}", kept(&by_count, 20));
        let by_bytes = cache(1_000, 10_000);
        for i in 0..20 {
            by_bytes.put(&keys(i), entry(2_000));
        }
        assert!(kept(&by_bytes, 20) <= 5, "{}", kept(&by_bytes, 20));
        let huge = cache(10, 1 << 30);
        huge.put(&keys(0), entry(MAX_ENTRY_BYTES + 1));
        assert_eq!(kept(&huge, 1), 0);
        huge.put(&keys(1), entry(10));
        assert_eq!(kept(&huge, 2), 1);
    }
}
