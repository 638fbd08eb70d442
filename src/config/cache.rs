//! `cache:`: the exact cache (TTL and size), the optional semantic one (similarity
//! threshold and TTL), where entries live (`memory`, or the `state.redis` server), and
//! whether answers at a temperature above 0 without a seed may be cached.

use super::Checker;
use super::tenants::StateConfig;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::time::Duration;

const DEFAULT_TTL_S: i64 = 3600;
const MAX_TTL_S: i64 = 30 * 24 * 3600;
const DEFAULT_MAX_ENTRIES: i64 = 100_000;
const MAX_ENTRIES: i64 = 100_000_000;
const DEFAULT_MAX_MB: i64 = 256;
const MAX_MB: i64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    #[serde(default)]
    pub exact: Option<RawExact>,
    #[serde(default)]
    pub semantic: Option<RawSemantic>,
    #[serde(default)]
    pub store: Option<Spanned<String>>,
    #[serde(default)]
    pub any_temperature: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExact {
    #[serde(default)]
    pub ttl_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_entries: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_mb: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSemantic {
    pub threshold: Spanned<f64>,
    #[serde(default)]
    pub ttl_s: Option<Spanned<i64>>,
}

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStore {
    /// In this process (bounded by `max_entries`).
    Memory,
    /// In `state.redis`, shared by the replicas (each entry expires after its TTL).
    Redis,
}

/// The cache, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub exact: Option<ExactCache>,
    pub semantic: Option<SemanticCache>,
    pub store: CacheStore,
    /// Cache answers at any temperature (by default only `temperature: 0` or a `seed`).
    pub any_temperature: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExactCache {
    pub ttl: Duration,
    pub max_entries: u64,
    /// The most memory the answers kept in this process take (and the semantic index's).
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemanticCache {
    /// Cosine similarity of the prompts' embeddings at which an earlier answer is reused.
    pub threshold: f32,
    pub ttl: Duration,
}

impl Checker<'_> {
    pub(super) fn cache(
        &mut self,
        raw: Option<RawCache>,
        state: Option<&StateConfig>,
    ) -> Option<Option<CacheConfig>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let exact = match &raw.exact {
            Some(e) => self.exact(e).map(Some),
            None => Some(None),
        };
        let semantic = match &raw.semantic {
            Some(s) => self.semantic(s).map(Some),
            None => Some(None),
        };
        let store = self.cache_store(raw.store.as_ref(), state);
        let (exact, semantic) = (exact?, semantic?);
        if exact.is_none() && semantic.is_none() {
            self.issue(
                "cache".into(),
                serde_saphyr::Location::UNKNOWN,
                "`cache:` sets neither `exact` nor `semantic`: nothing would be cached".into(),
                "add `exact: {ttl_s: 3600, max_entries: 100000}` (and `semantic:` if wanted)",
            );
            return None;
        }
        Some(Some(CacheConfig {
            exact,
            semantic,
            store: store?,
            any_temperature: raw.any_temperature.unwrap_or(false),
        }))
    }

    fn ttl(&mut self, path: &str, raw: Option<&Spanned<i64>>) -> Option<Duration> {
        let seconds = match raw {
            Some(t) => self.bounded(path, t, 1, MAX_TTL_S)?,
            None => DEFAULT_TTL_S as usize,
        };
        Some(Duration::from_secs(seconds as u64))
    }

    fn exact(&mut self, raw: &RawExact) -> Option<ExactCache> {
        let ttl = self.ttl("cache.exact.ttl_s", raw.ttl_s.as_ref());
        let max_entries = match &raw.max_entries {
            Some(m) => self.bounded("cache.exact.max_entries", m, 1, MAX_ENTRIES),
            None => Some(DEFAULT_MAX_ENTRIES as usize),
        };
        let max_mb = match &raw.max_mb {
            Some(m) => self.bounded("cache.exact.max_mb", m, 1, MAX_MB),
            None => Some(DEFAULT_MAX_MB as usize),
        };
        Some(ExactCache {
            ttl: ttl?,
            max_entries: max_entries? as u64,
            max_bytes: max_mb? as u64 * (1 << 20),
        })
    }

    fn semantic(&mut self, raw: &RawSemantic) -> Option<SemanticCache> {
        let ttl = self.ttl("cache.semantic.ttl_s", raw.ttl_s.as_ref());
        let t = &raw.threshold;
        let threshold = if t.value > 0.0 && t.value <= 1.0 {
            Some(t.value as f32)
        } else {
            self.issue(
                "cache.semantic.threshold".into(),
                t.referenced,
                format!("{} is not in (0, 1]", t.value),
                "write a cosine similarity close to 1, such as 0.97: lower reuses answers for prompts that only look alike",
            );
            None
        };
        Some(SemanticCache {
            threshold: threshold?,
            ttl: ttl?,
        })
    }

    fn cache_store(
        &mut self,
        raw: Option<&Spanned<String>>,
        state: Option<&StateConfig>,
    ) -> Option<CacheStore> {
        let Some(raw) = raw else {
            return Some(CacheStore::Memory);
        };
        match raw.value.trim() {
            "memory" => Some(CacheStore::Memory),
            "redis" if state.is_some_and(|s| s.redis.is_some()) => Some(CacheStore::Redis),
            "redis" => {
                // An invalid `state:` is reported on its own.
                if state.is_some() {
                    self.issue(
                        "cache.store".into(),
                        raw.referenced,
                        "`store: redis` needs the Redis of `state.redis`, and none is set".into(),
                        "set `state: {redis: redis://host:6379}`, or use `store: memory`",
                    );
                }
                None
            }
            other => {
                self.issue(
                    "cache.store".into(),
                    raw.referenced,
                    format!("unknown cache store `{other}`"),
                    "use memory or redis",
                );
                None
            }
        }
    }
}
