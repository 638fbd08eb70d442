//! The semantic cache's index, in this process: per bucket (requests equal but for their
//! last user message) the embeddings of the prompts answered and their answers; a lookup
//! takes the most similar one at or above the threshold. Buckets are few entries each, so
//! a scan is exact and fast (a dot product of 384 per entry).

use super::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most prompts kept per bucket (the oldest go first).
pub const PER_BUCKET: usize = 64;

struct Near {
    vector: Arc<Vec<f32>>,
    entry: Arc<Entry>,
    at: Instant,
}

pub struct Index {
    threshold: f32,
    ttl: Duration,
    buckets: moka::sync::Cache<[u8; 32], Arc<Mutex<Vec<Near>>>>,
}

impl Index {
    /// An index taking at most about `max_bytes` (each bucket weighs its answers and
    /// embeddings, weighed again at each change).
    pub fn new(threshold: f32, ttl: Duration, max_bytes: u64) -> Index {
        Index {
            threshold,
            ttl,
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, nears: &Arc<Mutex<Vec<Near>>>| {
                    let nears = nears.lock().unwrap_or_else(PoisonError::into_inner);
                    let bytes: usize = nears
                        .iter()
                        .map(|n| n.entry.body.len() + 4 * n.vector.len() + 64)
                        .sum();
                    u32::try_from(bytes.max(1)).unwrap_or(u32::MAX)
                })
                .time_to_idle(ttl)
                .build(),
        }
    }

    /// The answer of the most similar earlier prompt in `bucket`, if similar enough.
    pub fn get(&self, bucket: &[u8; 32], vector: &[f32]) -> Option<(Arc<Entry>, f32)> {
        let nears = self.buckets.get(bucket)?;
        let nears = nears.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        nears
            .iter()
            .filter(|n| now.duration_since(n.at) < self.ttl && n.vector.len() == vector.len())
            .map(|n| (n, dot(&n.vector, vector)))
            .filter(|(_, s)| *s >= self.threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, s)| (n.entry.clone(), s))
    }

    pub fn put(&self, bucket: [u8; 32], vector: Arc<Vec<f32>>, entry: Arc<Entry>) {
        let shared = self.buckets.get_with(bucket, Arc::default);
        {
            let mut nears = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            nears.retain(|n| now.duration_since(n.at) < self.ttl);
            if nears.len() >= PER_BUCKET {
                nears.remove(0);
            }
            nears.push(Near {
                vector,
                entry,
                at: now,
            });
        }
        // Inserted again so that its weight counts what it holds now.
        self.buckets.insert(bucket, shared);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(backend: &str) -> Arc<Entry> {
        Arc::new(Entry {
            body: bytes::Bytes::from_static(b"{}"),
            backend: backend.into(),
            cost_usd: 0.0,
        })
    }

    fn unit(v: &[f32]) -> Arc<Vec<f32>> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        Arc::new(v.iter().map(|x| x / n).collect())
    }

    #[test]
    fn the_most_similar_prompt_above_the_threshold_answers() {
        let index = Index::new(0.95, Duration::from_secs(60), 1 << 20);
        index.put([1; 32], unit(&[1.0, 0.0, 0.0]), entry("a"));
        index.put([1; 32], unit(&[0.9, 0.1, 0.0]), entry("b"));
        let (hit, similarity) = index.get(&[1; 32], &unit(&[0.92, 0.08, 0.0])).unwrap();
        assert_eq!(hit.backend, "b");
        assert!(similarity > 0.99);
        // Not similar enough, or another bucket: nothing.
        assert!(index.get(&[1; 32], &unit(&[0.0, 1.0, 0.0])).is_none());
        assert!(index.get(&[2; 32], &unit(&[1.0, 0.0, 0.0])).is_none());
    }

    #[test]
    fn entries_expire() {
        let index = Index::new(0.9, Duration::from_millis(1), 1 << 20);
        index.put([1; 32], unit(&[1.0, 0.0]), entry("a"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(index.get(&[1; 32], &unit(&[1.0, 0.0])).is_none());
    }
}
