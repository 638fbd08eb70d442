//! Experiments on live traffic: which variant a client gets (a stable hash of the
//! experiment and the client, so every replica agrees), what each variant's requests came
//! to (`store.rs`), and whether the variants differ (`stats.rs`).

pub mod hash;
pub mod report;
pub mod shared;
pub mod stats;
pub mod store;

use crate::config::{BackendId, Experiment, StickyBy};
use std::net::IpAddr;

/// Who sent a request, as far as keeping it on one variant or target goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// The request's `user`, or its `x-semroute-user` header.
    pub user: Option<String>,
    /// The peer address of the connection.
    pub ip: Option<IpAddr>,
}

impl Client {
    /// What keeps this client in place under `by` (`None`: nothing does; draw at random).
    pub fn sticky_key(&self, by: StickyBy) -> Option<String> {
        let ip = || self.ip.map(|ip| format!("ip:{ip}"));
        match by {
            StickyBy::User => self.user.as_ref().map(|u| format!("user:{u}")).or_else(ip),
            StickyBy::Ip => ip(),
            StickyBy::None => None,
        }
    }
}

/// The variant `client` gets in `experiment`: the same one every time, on every replica,
/// unless `sticky: none` (or nothing identifies the client), when `random` draws it.
pub fn assign(
    experiment: &Experiment,
    client: &Client,
    random: impl FnOnce() -> u64,
) -> Option<BackendId> {
    let point = match client.sticky_key(experiment.sticky) {
        Some(key) => hash::unit(&[experiment.name.as_bytes(), key.as_bytes()]),
        None => hash::to_unit(random()),
    };
    pick(experiment, point)
}

/// The variant whose share covers `point` in [0, 1) (shares laid end to end in order).
fn pick(experiment: &Experiment, point: f64) -> Option<BackendId> {
    let mut end = 0.0;
    for variant in &experiment.variants {
        end += variant.share;
        if point < end {
            return Some(variant.backend);
        }
    }
    // Rounding may leave the last sliver of [0, 1) past the sum: it is the last variant's.
    experiment.variants.last().map(|v| v.backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Variant;

    fn experiment(sticky: StickyBy) -> Experiment {
        Experiment {
            name: "support-small-vs-big".into(),
            variants: vec![
                Variant {
                    backend: BackendId::at(0),
                    share: 0.9,
                },
                Variant {
                    backend: BackendId::at(1),
                    share: 0.1,
                },
            ],
            sticky,
        }
    }

    fn user(i: usize) -> Client {
        Client {
            user: Some(format!("u{i}")),
            ip: None,
        }
    }

    #[test]
    fn shares_hold_within_two_percent_and_a_user_keeps_its_variant() {
        let e = experiment(StickyBy::User);
        let n = 10_000;
        let assigned: Vec<Option<BackendId>> = (0..n).map(|i| assign(&e, &user(i), || 0)).collect();
        let small = assigned
            .iter()
            .filter(|v| **v == Some(BackendId::at(0)))
            .count();
        let share = small as f64 / n as f64;
        assert!((share - 0.9).abs() < 0.02, "{share}");
        for i in (0..n).step_by(97) {
            assert_eq!(assign(&e, &user(i), || 7), assigned[i]);
        }
        // Another experiment splits the same users independently.
        let mut other = e.clone();
        other.name = "another".into();
        let same = (0..n)
            .filter(|&i| assign(&other, &user(i), || 0) == assigned[i])
            .count();
        assert!(same < n, "an experiment's name changes who goes where");
    }

    #[test]
    fn the_client_address_stands_in_for_a_missing_user_and_none_draws() {
        let e = experiment(StickyBy::User);
        let ip = Client {
            user: None,
            ip: "10.1.2.3".parse().ok(),
        };
        assert_eq!(
            ip.sticky_key(StickyBy::User).as_deref(),
            Some("ip:10.1.2.3")
        );
        assert_eq!(user(1).sticky_key(StickyBy::Ip), None);
        assert_eq!(assign(&e, &ip, || 0), assign(&e, &ip, || u64::MAX));
        let random = experiment(StickyBy::None);
        assert_eq!(assign(&random, &user(1), || 0), Some(BackendId::at(0)));
        assert_eq!(
            assign(&random, &user(1), || u64::MAX),
            Some(BackendId::at(1))
        );
    }
}
