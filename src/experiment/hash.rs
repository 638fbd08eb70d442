//! Stable hashing: the same parts give the same number on every replica, build and
//! platform (SHA-256, never the standard library's seeded hashers), spread evenly enough
//! that shares and rendezvous weights hold to a fraction of a percent.

use sha2::{Digest, Sha256};

/// A point in [0, 1) from `parts` (each length-prefixed, so `["ab", "c"]` and
/// `["a", "bc"]` differ).
pub fn unit(parts: &[&[u8]]) -> f64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    to_unit(u64::from_le_bytes(first))
}

/// A 64-bit number as a point in [0, 1) (its top 53 bits).
pub fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The rendezvous (highest random weight) score of a target named `target` with `weight`
/// for the client `key`: the client goes to the target scoring highest, and a target's
/// share of clients is its weight's share (the logarithmic method).
pub fn rendezvous_score(key: &str, target: &str, weight: f64) -> f64 {
    // In (0, 1): ln of it is finite and negative.
    let u = (unit(&[key.as_bytes(), target.as_bytes()]) * (1u64 << 53) as f64 + 0.5)
        / (1u64 << 53) as f64;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_parts_give_the_same_point_and_the_boundaries_matter() {
        assert_eq!(unit(&[b"a", b"b"]), unit(&[b"a", b"b"]));
        assert_ne!(unit(&[b"ab", b"c"]), unit(&[b"a", b"bc"]));
        let p = unit(&[b"experiment", b"user:42"]);
        assert!((0.0..1.0).contains(&p));
    }

    #[test]
    fn points_spread_evenly() {
        let n = 20_000;
        let below = (0..n)
            .filter(|i| unit(&[b"e", i.to_string().as_bytes()]) < 0.25)
            .count();
        let share = below as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.01, "{share}");
    }

    #[test]
    fn rendezvous_follows_the_weights() {
        let n = 20_000;
        let to_a = (0..n)
            .filter(|i| {
                let key = i.to_string();
                rendezvous_score(&key, "a", 3.0) > rendezvous_score(&key, "b", 1.0)
            })
            .count();
        let share = to_a as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }
}
