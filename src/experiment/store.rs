//! Each variant's counters: requests, errors, and the sums of latency, time to first byte,
//! tokens, cost and feedback that the report's means and tests are computed from; and which
//! request went to which variant, for feedback that comes later. Kept in this process, or
//! in the shared Redis (`shared.rs`): the sums only ever add, so replicas' counters merge.

use super::stats::Sums;
use crate::quota::shared::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long a request's assignment is remembered for its feedback.
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most assignments remembered for feedback (the oldest go first).
const MAX_REMEMBERED: u64 = 1_000_000;

/// What one request of a variant came to, when it is over.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Not answered with a 2xx.
    pub failed: bool,
    /// For answered requests only: the client waited that long.
    pub latency_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    /// Prompt and completion, as the upstream reported them.
    pub tokens: Option<f64>,
    pub cost_usd: Option<f64>,
}

/// One variant's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub latency_ms: Sums,
    pub ttfb_ms: Sums,
    pub tokens: Sums,
    pub cost_usd: Sums,
    pub feedback: Sums,
}

impl Counters {
    fn observe(&mut self, o: &Observation) {
        self.requests += 1;
        self.errors += u64::from(o.failed);
        add(&mut self.latency_ms, o.latency_ms);
        add(&mut self.ttfb_ms, o.ttfb_ms);
        add(&mut self.tokens, o.tokens);
        add(&mut self.cost_usd, o.cost_usd);
    }
}

fn add(sums: &mut Sums, value: Option<f64>) {
    if let Some(v) = value.filter(|v| v.is_finite()) {
        sums.n += 1.0;
        sums.sum += v;
        sums.sum_sq += v * v;
    }
}

/// A request in an experiment, remembered for its feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub experiment: String,
    pub variant: String,
}

/// Where a request's assignment is kept: its id under the client key that sent it, so
/// feedback from another key (or ids two clients both chose) never meet.
pub fn slot(key: Option<&str>, request_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [key.unwrap_or(""), request_id] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The counters, in this process or in the shared Redis.
pub enum Store {
    Memory(MemoryStore),
    Redis(super::shared::RedisCounters),
}

impl Store {
    /// The store `state` names: its Redis, or this process.
    pub fn for_state(state: &crate::config::StateConfig) -> Result<Store, StoreError> {
        Ok(match &state.redis {
            Some(url) => Store::Redis(super::shared::RedisCounters::new(
                url,
                &state.prefix,
                state.timeout,
            )?),
            None => Store::Memory(MemoryStore::default()),
        })
    }

    pub async fn assigned(&self, slot: &str, assigned: Assigned) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.assigned(slot, assigned);
                Ok(())
            }
            Store::Redis(r) => r.assigned(slot, &assigned).await,
        }
    }

    /// Counts a request that is over (from any thread: to Redis on a task of the runtime,
    /// a failure logged).
    pub fn observe(self: &Arc<Self>, experiment: String, variant: String, o: Observation) {
        match &**self {
            Store::Memory(m) => m.observe(&experiment, &variant, &o),
            Store::Redis(_) => {
                let store = self.clone();
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::warn!(%experiment, "no async runtime: a request was not counted");
                    return;
                };
                runtime.spawn(async move {
                    if let Store::Redis(r) = &*store
                        && let Err(err) = r.observe(&experiment, &variant, &o).await
                    {
                        tracing::warn!(%experiment, %variant, error = %err, "a request of an experiment was not counted");
                    }
                });
            }
        }
    }

    pub async fn feedback(
        &self,
        slot: &str,
        score: f64,
    ) -> Result<Result<Arc<Assigned>, FeedbackError>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.feedback(slot, score)),
            Store::Redis(r) => Ok(r.feedback(slot, score).await?.map(Arc::new)),
        }
    }

    pub async fn counters(&self, experiment: &str, variant: &str) -> Result<Counters, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.counters(experiment, variant)),
            Store::Redis(r) => r.counters(experiment, variant).await,
        }
    }
}

/// Why feedback was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error(
        "no request with this id was in an experiment in the last 24 hours (or it was another client key's)"
    )]
    Unknown,
    #[error("this request already has feedback")]
    Repeated,
}

/// The counters of every experiment's variants, in this process.
pub struct MemoryStore {
    counters: Mutex<HashMap<(String, String), Counters>>,
    /// slot (key and request id) -> its assignment; `None` once its feedback is in.
    assigned: moka::sync::Cache<String, Option<Arc<Assigned>>>,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore {
            counters: Mutex::default(),
            assigned: moka::sync::Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(FEEDBACK_WINDOW)
                .build(),
        }
    }
}

impl MemoryStore {
    /// Remembers that the request in `slot` went to a variant, for its feedback. A slot
    /// already taken (a client that sends the same `x-request-id` again) keeps its first
    /// assignment, and its feedback once given stays given.
    pub fn assigned(&self, slot: &str, assigned: Assigned) {
        self.assigned
            .entry(slot.to_string())
            .or_insert_with(|| Some(Arc::new(assigned)));
    }

    /// Counts a request of `variant` of `experiment` that is over.
    pub fn observe(&self, experiment: &str, variant: &str, o: &Observation) {
        self.with(experiment, variant, |c| c.observe(o));
    }

    /// Counts `score` as the feedback of the request in `slot`: the assignment it was
    /// counted to.
    pub fn feedback(&self, slot: &str, score: f64) -> Result<Arc<Assigned>, FeedbackError> {
        let entry = self.assigned.entry(slot.to_string());
        let mut found = None;
        let mut repeated = false;
        entry.and_compute_with(|current| {
            use moka::ops::compute::Op;
            match current.map(moka::Entry::into_value) {
                Some(Some(a)) => {
                    found = Some(a);
                    Op::Put(None)
                }
                Some(None) => {
                    repeated = true;
                    Op::Nop
                }
                _ => Op::Nop,
            }
        });
        let assigned = match (found, repeated) {
            (Some(a), _) => a,
            (None, true) => return Err(FeedbackError::Repeated),
            (None, false) => return Err(FeedbackError::Unknown),
        };
        self.with(&assigned.experiment, &assigned.variant, |c| {
            add(&mut c.feedback, Some(score));
        });
        Ok(assigned)
    }

    /// The counters of `experiment`'s `variant` (zero when it has seen nothing).
    pub fn counters(&self, experiment: &str, variant: &str) -> Counters {
        let all = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(&(experiment.to_string(), variant.to_string()))
            .copied()
            .unwrap_or_default()
    }

    fn with(&self, experiment: &str, variant: &str, change: impl FnOnce(&mut Counters)) {
        let mut all = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        change(
            all.entry((experiment.to_string(), variant.to_string()))
                .or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned() -> Assigned {
        Assigned {
            experiment: "e".into(),
            variant: "small".into(),
        }
    }

    #[test]
    fn requests_add_up_per_variant() {
        let store = MemoryStore::default();
        let ok = Observation {
            latency_ms: Some(10.0),
            tokens: Some(30.0),
            ..Observation::default()
        };
        let failed = Observation {
            failed: true,
            ..Observation::default()
        };
        store.observe("e", "small", &ok);
        store.observe("e", "small", &ok);
        store.observe("e", "small", &failed);
        store.observe("e", "big", &ok);
        let small = store.counters("e", "small");
        assert_eq!((small.requests, small.errors), (3, 1));
        assert_eq!(small.latency_ms.n, 2.0);
        assert_eq!(small.tokens.sum, 60.0);
        assert_eq!(store.counters("e", "big").requests, 1);
        assert_eq!(store.counters("other", "big").requests, 0);
    }

    #[test]
    fn feedback_counts_once_and_only_in_the_senders_slot() {
        let store = MemoryStore::default();
        store.assigned(&slot(Some("team-a"), "r1"), assigned());
        for other in [
            slot(Some("team-b"), "r1"),
            slot(None, "r1"),
            slot(None, "nope"),
        ] {
            assert_eq!(store.feedback(&other, 1.0), Err(FeedbackError::Unknown));
        }
        let mine = slot(Some("team-a"), "r1");
        let counted = store.feedback(&mine, 1.0);
        assert_eq!(
            counted.map(|a| a.variant.clone()).ok(),
            Some("small".into())
        );
        assert_eq!(store.feedback(&mine, 0.0), Err(FeedbackError::Repeated));
        // The same id sent again does not open the slot again.
        store.assigned(&mine, assigned());
        assert_eq!(store.feedback(&mine, 0.0), Err(FeedbackError::Repeated));
        let feedback = store.counters("e", "small").feedback;
        assert_eq!((feedback.n, feedback.sum), (1.0, 1.0));
        // The parts are length-prefixed: a key and an id cannot be shifted into each other.
        assert_ne!(slot(Some("ab"), "c"), slot(Some("a"), "bc"));
    }
}
