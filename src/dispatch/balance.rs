//! The order a route's targets are tried in, by its strategy: written order (fallback),
//! weighted round robin, fewest in flight, peak-EWMA latency with two random choices, or
//! rendezvous hashing of the client (sticky).
//! Every strategy returns all the targets: the first is preferred, the rest are fallbacks.
//! The `Balancer` owns what they remember between requests, and the random numbers they
//! (and the jitter of retries and cooldowns) draw.

use super::health::Health;
use crate::config::{Backend, BackendId, RouteId, Strategy};
use crate::experiment::hash::rendezvous_score;
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

    /// `targets` of `route` (`None`: a backend named directly) reordered for one request
    /// from `client` (what keeps it on one target under `sticky`; `None`: nothing does).
    pub fn order(
        &self,
        strategy: Strategy,
        route: Option<RouteId>,
        targets: &[BackendId],
        backends: &[Backend],
        health: &[Arc<Health>],
        client: Option<&str>,
    ) -> Vec<BackendId> {
        let unrouted = AtomicUsize::new(0);
        let counter = route
            .and_then(|r| self.positions.get(r.index()))
            .unwrap_or(&unrouted);
        let picks = Picks {
            counter,
            random: self.random(),
            client,
        };
        order(strategy, targets, backends, health, &picks)
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

/// What one request's order draws on besides the targets.
pub struct Picks<'a> {
    /// The route's round-robin position.
    pub counter: &'a AtomicUsize,
    /// A fresh random number.
    pub random: u64,
    /// The client's sticky key (`None`: nothing identifies it).
    pub client: Option<&'a str>,
}

/// `targets` reordered for one request.
pub fn order(
    strategy: Strategy,
    targets: &[BackendId],
    backends: &[Backend],
    health: &[Arc<Health>],
    picks: &Picks<'_>,
) -> Vec<BackendId> {
    let (counter, random) = (picks.counter, picks.random);
    let mut out = targets.to_vec();
    match strategy {
        // The cheapest order depends on the request: `plan.rs` sorts by it.
        Strategy::Fallback | Strategy::Cheapest => {}
        Strategy::Sticky => {
            // Highest score first: the client's own target, then where it would go if
            // that one were down, and so on. Without a client, the written order.
            if let Some(client) = picks.client {
                let score = |t: &BackendId| {
                    let backend = &backends[t.index()];
                    rendezvous_score(client, &backend.name, f64::from(backend.weight))
                };
                out.sort_by(|a, b| score(b).total_cmp(&score(a)));
            }
        }
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

    fn picks(counter: &AtomicUsize, random: u64) -> Picks<'_> {
        Picks {
            counter,
            random,
            client: None,
        }
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
            .map(|_| {
                order(
                    Strategy::RoundRobin,
                    &ids(2),
                    &b,
                    &health,
                    &picks(&counter, 0),
                )[0]
                .index()
            })
            .collect();
        assert_eq!(firsts, [0, 0, 0, 1, 0, 0, 0, 1]);
        // The other target is always there as the fallback.
        assert_eq!(
            order(
                Strategy::RoundRobin,
                &ids(2),
                &b,
                &health,
                &picks(&counter, 0)
            )
            .len(),
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
            &picks(&AtomicUsize::new(0), 0),
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
                &picks(&AtomicUsize::new(0), random),
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
            &picks(&AtomicUsize::new(5), 9),
        );
        assert_eq!(got, ids(3));
    }

    #[test]
    fn sticky_moves_only_the_clients_of_a_target_that_goes_down() {
        let b = backends(&[1, 1, 2]);
        let health: Vec<Arc<Health>> = (0..3).map(|_| Arc::default()).collect();
        let first = |targets: &[BackendId], client: &str| {
            let picks = Picks {
                counter: &AtomicUsize::new(0),
                random: 0,
                client: Some(client),
            };
            order(Strategy::Sticky, targets, &b, &health, &picks)[0]
        };
        let clients: Vec<String> = (0..3_000).map(|i| format!("user:{i}")).collect();
        let all = ids(3);
        let before: Vec<BackendId> = clients.iter().map(|c| first(&all, c)).collect();
        // The weights hold: 1:1:2.
        let on_last = before.iter().filter(|t| t.index() == 2).count() as f64 / 3_000.0;
        assert!((on_last - 0.5).abs() < 0.03, "{on_last}");
        // Target 1 down (left out of the usable ones, as the plan does).
        let without = [BackendId::at(0), BackendId::at(2)];
        for (client, was) in clients.iter().zip(&before) {
            let now = first(&without, client);
            if was.index() != 1 {
                assert_eq!(now, *was, "{client} moved though its target is up");
            }
        }
        // And back when it recovers; the same client always gets the same order.
        for (client, was) in clients.iter().zip(&before) {
            assert_eq!(first(&all, client), *was);
        }
        let picks = Picks {
            counter: &AtomicUsize::new(0),
            random: 0,
            client: None,
        };
        assert_eq!(order(Strategy::Sticky, &all, &b, &health, &picks), all);
    }
}
