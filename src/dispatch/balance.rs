//! The order a route's targets are tried in, by its strategy: written order (fallback),
//! weighted round robin, fewest in flight, or peak-EWMA latency with two random choices.
//! Every strategy returns all the targets: the first is preferred, the rest are fallbacks.
//! The `Balancer` owns what they remember between requests, and the random numbers they
//! (and the jitter of retries and cooldowns) draw.

use super::health::Health;
use crate::config::{Backend, BackendId, RouteId, Strategy};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Each route's round-robin position, and a shared random generator.
pub struct Balancer {
    /// Round-robin position per route.
    positions: Vec<AtomicUsize>,
    seed: AtomicU64,
}

impl Balancer {
    pub fn new(routes: usize) -> Balancer {
        Balancer {
            positions: (0..routes).map(|_| AtomicUsize::new(0)).collect(),
            seed: AtomicU64::new(0x853c_49e6_748f_ea9b ^ std::process::id() as u64),
        }
    }

    /// `targets` of `route` (`None`: a backend named directly) reordered for one request.
    pub fn order(
        &self,
        strategy: Strategy,
        route: Option<RouteId>,
        targets: &[BackendId],
        backends: &[Backend],
        health: &[Arc<Health>],
    ) -> Vec<BackendId> {
        let unrouted = AtomicUsize::new(0);
        let position = route
            .and_then(|r| self.positions.get(r.index()))
            .unwrap_or(&unrouted);
        order(strategy, targets, backends, health, position, self.random())
    }

    pub fn random(&self) -> u64 {
        // SplitMix64 over a shared counter: cheap, lock-free, good enough for jitter.
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random number in [0, 1).
    pub fn jitter(&self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `targets` reordered for one request. `counter` is the route's round-robin position;
/// `random` is a fresh random number.
pub fn order(
    strategy: Strategy,
    targets: &[BackendId],
    backends: &[Backend],
    health: &[Arc<Health>],
    counter: &AtomicUsize,
    random: u64,
) -> Vec<BackendId> {
    let mut out = targets.to_vec();
    match strategy {
        // The cheapest order depends on the request: `plan.rs` sorts by it.
        Strategy::Fallback | Strategy::Cheapest => {}
        Strategy::RoundRobin => {
            let total: usize = targets
                .iter()
                .map(|t| backends[t.index()].weight as usize)
                .sum();
            if total > 0 {
                let mut slot = counter.fetch_add(1, Ordering::Relaxed) % total;
                let first = targets
                    .iter()
                    .position(|t| {
                        let w = backends[t.index()].weight as usize;
                        if slot < w {
                            true
                        } else {
                            slot -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                out.rotate_left(first);
            }
        }
        Strategy::LeastBusy => {
            out.sort_by_key(|t| health[t.index()].in_flight());
        }
        Strategy::Latency => {
            if out.len() >= 2 {
                // Power of two choices: the better of two random targets goes first.
                let a = (random % out.len() as u64) as usize;
                let b = ((random >> 32) % (out.len() as u64 - 1)) as usize;
                let b = if b >= a { b + 1 } else { b };
                let cost = |i: usize| health[out[i].index()].latency_cost();
                let best = if cost(b) < cost(a) { b } else { a };
                let chosen = out.remove(best);
                out.sort_by(|x, y| {
                    health[x.index()]
                        .latency_cost()
                        .total_cmp(&health[y.index()].latency_cost())
                });
                out.insert(0, chosen);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn backends(weights: &[u32]) -> Vec<Backend> {
        let mut yaml = String::from("backends:\n");
        for (i, w) in weights.iter().enumerate() {
            yaml.push_str(&format!(
                "  - name: b{i}\n    url: http://127.0.0.1:1/v1\n    model: m\n    weight: {w}\n"
            ));
        }
        let names: Vec<String> = (0..weights.len()).map(|i| format!("b{i}")).collect();
        yaml.push_str(&format!(
            "routes:\n  - name: r\n    utterances: [x]\n    targets: [{}]\n",
            names.join(", ")
        ));
        crate::config::Config::parse(&yaml, "t", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
            .backends
    }

    fn ids(n: usize) -> Vec<BackendId> {
        (0..n).map(BackendId::at).collect()
    }

    #[test]
    fn weighted_round_robin_follows_the_weights() {
        let b = backends(&[3, 1]);
        let health: Vec<Arc<Health>> = (0..2).map(|_| Arc::default()).collect();
        let counter = AtomicUsize::new(0);
        let firsts: Vec<usize> = (0..8)
            .map(|_| order(Strategy::RoundRobin, &ids(2), &b, &health, &counter, 0)[0].index())
            .collect();
        assert_eq!(firsts, [0, 0, 0, 1, 0, 0, 0, 1]);
        // The other target is always there as the fallback.
        assert_eq!(
            order(Strategy::RoundRobin, &ids(2), &b, &health, &counter, 0).len(),
            2
        );
    }

    #[test]
    fn least_busy_prefers_the_fewest_in_flight() {
        let b = backends(&[1, 1, 1]);
        let health: Vec<Arc<Health>> = (0..3).map(|_| Arc::default()).collect();
        let _a = health[0].enter();
        let _b = health[0].enter();
        let _c = health[1].enter();
        let got = order(
            Strategy::LeastBusy,
            &ids(3),
            &b,
            &health,
            &AtomicUsize::new(0),
            0,
        );
        assert_eq!(got, [BackendId::at(2), BackendId::at(1), BackendId::at(0)]);
    }

    #[test]
    fn latency_picks_the_faster_of_two() {
        let b = backends(&[1, 1]);
        let health: Vec<Arc<Health>> = (0..2).map(|_| Arc::default()).collect();
        let now = Instant::now();
        health[0].observe_latency(now, Duration::from_millis(50));
        health[1].observe_latency(now, Duration::from_millis(5));
        for random in [0u64, 1, 1 << 32, u64::MAX] {
            let got = order(
                Strategy::Latency,
                &ids(2),
                &b,
                &health,
                &AtomicUsize::new(0),
                random,
            );
            assert_eq!(got, [BackendId::at(1), BackendId::at(0)], "random {random}");
        }
    }

    #[test]
    fn fallback_keeps_the_written_order() {
        let b = backends(&[1, 1, 1]);
        let health: Vec<Arc<Health>> = (0..3).map(|_| Arc::default()).collect();
        let got = order(
            Strategy::Fallback,
            &ids(3),
            &b,
            &health,
            &AtomicUsize::new(5),
            9,
        );
        assert_eq!(got, ids(3));
    }
}
