//! The counters in this process: rate limits as GCRA (one theoretical arrival time per
//! limiter) and budgets as spent + reserved amounts with expiring reservations. The Redis
//! store runs the same rules in Lua (`shared.rs`); this one serves a single process, and
//! every process when Redis cannot be reached and `on_error` is `fail_open`.
//!
//! Memory is bounded: at most [`MAX_ENTRIES`] limiters and budgets. Entries that hold no
//! information (a limiter back at its initial state, a budget whose period is over) are
//! dropped first; past that, the least recently used go.

use super::rules::{Admission, BudgetCharge, Outcome, RateCharge, RateState, Settlement};
use std::collections::HashMap;
use std::sync::Mutex;

/// Most limiters and budgets kept.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct Budget {
    /// Nano-USD settled.
    spent: i64,
    /// Reservations by request id: nano-USD and when it lapses (µs).
    held: HashMap<String, (i64, u64)>,
    /// When the period's record may go (µs).
    expires: u64,
    /// Last use (µs), for eviction.
    touched: u64,
    /// A key's: never evicted.
    pinned: bool,
}

impl Budget {
    fn reserved(&self) -> i64 {
        self.held.values().map(|(amount, _)| amount).sum()
    }

    fn purge(&mut self, now: u64) {
        self.held.retain(|_, (_, lapses)| *lapses > now);
    }

    fn state(&mut self, now: u64) -> BudgetState {
        self.purge(now);
        BudgetState {
            spent: self.spent,
            reserved: self.reserved(),
        }
    }
}

/// A limiter: its theoretical arrival time and last use, both in µs since the epoch.
#[derive(Debug, Clone, Copy)]
struct Rate {
    tat: u64,
    touched: u64,
    /// A key's or a backend's: never evicted.
    pinned: bool,
}

#[derive(Debug, Default)]
struct Slots {
    rates: HashMap<String, Rate>,
    budgets: HashMap<String, Budget>,
}

impl Slots {
    fn len(&self) -> usize {
        self.rates.len() + self.budgets.len()
    }

    fn tat(&self, key: &str) -> u64 {
        self.rates.get(key).map_or(0, |r| r.tat)
    }

    fn budget(&mut self, charge: &BudgetCharge, now: u64) -> &mut Budget {
        let budget = self.budgets.entry(charge.key.clone()).or_default();
        budget.touched = now;
        budget.pinned |= charge.pinned;
        budget.expires = budget.expires.max(now.saturating_add(charge.keep_us));
        budget
    }

    /// Frees space for `incoming` entries: first the entries that hold nothing, then the
    /// least recently used of the users' (a key's or a backend's are never evicted: the
    /// config bounds them, and a flood of users must not reset a key's spend).
    fn make_room(&mut self, now: u64, incoming: usize) {
        if self.len() + incoming <= MAX_ENTRIES {
            return;
        }
        self.rates.retain(|_, r| r.tat > now);
        self.budgets.retain(|_, b| b.expires > now);
        let over = (self.len() + incoming).saturating_sub(MAX_ENTRIES * 9 / 10);
        if over == 0 {
            return;
        }
        let mut by_age: Vec<(u64, bool, String)> = self
            .rates
            .iter()
            .filter(|(_, r)| !r.pinned)
            .map(|(k, r)| (r.touched, true, k.clone()))
            .chain(
                self.budgets
                    .iter()
                    .filter(|(_, b)| !b.pinned)
                    .map(|(k, b)| (b.touched, false, k.clone())),
            )
            .collect();
        by_age.sort_unstable();
        for (_, is_rate, key) in by_age.into_iter().take(over) {
            if is_rate {
                self.rates.remove(&key);
            } else {
                self.budgets.remove(&key);
            }
        }
        tracing::warn!(
            evicted = over,
            "the in-memory limits are full; the least recently used were dropped (use `state.redis` for many users)"
        );
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    slots: Mutex<Slots>,
}

/// What a budget holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetState {
    pub spent: i64,
    pub reserved: i64,
}

impl MemoryStore {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks every limiter and budget of `admission` at `now` (µs) and, only if all pass,
    /// charges them all.
    pub fn admit(&self, admission: &Admission, now: u64) -> Outcome {
        let mut slots = self.slots();
        let mut states = Vec::with_capacity(admission.rates.len());
        let mut new_tats = Vec::with_capacity(admission.rates.len());
        for (i, rate) in admission.rates.iter().enumerate() {
            match rate.check(slots.tat(&rate.key), now) {
                Ok((new_tat, state)) => {
                    new_tats.push(new_tat);
                    states.push(state);
                }
                Err(retry_after_us) => {
                    return Outcome::Limited {
                        at: i,
                        retry_after_us,
                    };
                }
            }
        }
        for (i, charge) in admission.budgets.iter().enumerate() {
            let held = slots
                .budgets
                .get_mut(&charge.key)
                .map(|b| b.state(now))
                .unwrap_or_default();
            if !charge.fits(held.spent, held.reserved) {
                return Outcome::OverBudget {
                    at: i,
                    spent: held.spent,
                    reserved: held.reserved,
                };
            }
        }
        slots.make_room(now, admission.rates.len() + admission.budgets.len());
        for (rate, tat) in admission.rates.iter().zip(new_tats) {
            let pinned = rate.pinned;
            slots.rates.insert(
                rate.key.clone(),
                Rate {
                    tat,
                    touched: now,
                    pinned,
                },
            );
        }
        for charge in &admission.budgets {
            let lapses = now.saturating_add(admission.ttl_us);
            slots
                .budget(charge, now)
                .held
                .insert(admission.id.clone(), (charge.amount, lapses));
        }
        Outcome::Admitted(states)
    }

    /// Ends a request: its reservations go, its actual spend is added, its token charges
    /// are corrected.
    pub fn settle(&self, settlement: &Settlement, now: u64) -> Vec<BudgetState> {
        let mut slots = self.slots();
        let mut states = Vec::with_capacity(settlement.budgets.len());
        for (charge, actual) in &settlement.budgets {
            let budget = slots.budget(charge, now);
            budget.held.remove(&settlement.id);
            budget.spent = budget.spent.saturating_add(*actual);
            states.push(budget.state(now));
        }
        for (rate, refund) in &settlement.refunds {
            if let Some(r) = slots.rates.get_mut(&rate.key) {
                r.tat = rate.refunded(r.tat, *refund, now);
                r.touched = now;
            }
        }
        states
    }

    /// What the budget at `key` holds at `now`.
    pub fn budget(&self, key: &str, now: u64) -> BudgetState {
        self.slots()
            .budgets
            .get_mut(key)
            .map(|b| b.state(now))
            .unwrap_or_default()
    }

    /// What the limiter `rate` allows at `now`.
    pub fn rate(&self, rate: &RateCharge, now: u64) -> RateState {
        rate.state(self.slots().tat(&rate.key), now)
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(key: &str, limit: u64, cost: u64) -> RateCharge {
        RateCharge {
            key: key.into(),
            limit,
            cost,
            tokens: false,
            pinned: false,
        }
    }

    fn budget(key: &str, limit: i64, amount: i64) -> BudgetCharge {
        BudgetCharge {
            key: key.into(),
            limit,
            amount,
            keep_us: 86_400_000_000,
            pinned: false,
        }
    }

    fn admission(id: &str, rates: Vec<RateCharge>, budgets: Vec<BudgetCharge>) -> Admission {
        Admission {
            id: id.into(),
            ttl_us: 1_000_000,
            rates,
            budgets,
        }
    }

    #[test]
    fn a_limit_of_n_per_minute_admits_n_at_once_then_one_per_interval() {
        let store = MemoryStore::default();
        let now = 1_000_000_000;
        for i in 0..3 {
            match store.admit(&admission("r", vec![rate("k", 3, 1)], vec![]), now) {
                Outcome::Admitted(states) => assert_eq!(states[0].remaining, 2 - i),
                other => panic!("{other:?}"),
            }
        }
        match store.admit(&admission("r", vec![rate("k", 3, 1)], vec![]), now) {
            Outcome::Limited { retry_after_us, .. } => assert_eq!(retry_after_us, 20_000_000),
            other => panic!("{other:?}"),
        }
        // One interval (20 s) later, one more.
        let later = now + 20_000_000;
        assert!(matches!(
            store.admit(&admission("r", vec![rate("k", 3, 1)], vec![]), later),
            Outcome::Admitted(_)
        ));
    }

    #[test]
    fn nothing_is_charged_unless_everything_passes() {
        let store = MemoryStore::default();
        let now = 5_000_000;
        let both = || admission("a", vec![rate("k", 10, 1), rate("u", 1, 1)], vec![]);
        assert!(matches!(store.admit(&both(), now), Outcome::Admitted(_)));
        assert!(matches!(
            store.admit(&both(), now),
            Outcome::Limited { at: 1, .. }
        ));
        // The refused request took nothing from `k`: 9 of 10 remain.
        assert_eq!(store.rate(&rate("k", 10, 1), now).remaining, 9);
    }

    #[test]
    fn reservations_hold_budget_until_settled_or_lapsed() {
        let store = MemoryStore::default();
        let now = 1_000;
        let ask = |id: &str| admission(id, vec![], vec![budget("b", 100, 60)]);
        assert!(matches!(
            store.admit(&ask("one"), now),
            Outcome::Admitted(_)
        ));
        assert_eq!(
            store.admit(&ask("two"), now),
            Outcome::OverBudget {
                at: 0,
                spent: 0,
                reserved: 60
            }
        );
        store.settle(
            &Settlement {
                id: "one".into(),
                budgets: vec![(budget("b", 100, 60), 25)],
                refunds: vec![],
            },
            now,
        );
        assert_eq!(
            store.budget("b", now),
            BudgetState {
                spent: 25,
                reserved: 0
            }
        );
        assert!(matches!(
            store.admit(&ask("two"), now),
            Outcome::Admitted(_)
        ));
        // Never settled: it lapses after its ttl and frees the budget.
        assert_eq!(store.budget("b", now + 2_000_000).reserved, 0);
        assert_eq!(store.budget("b", now + 2_000_000).spent, 25);
    }

    #[test]
    fn a_flood_of_users_never_evicts_a_keys_budget() {
        let store = MemoryStore::default();
        let now = 1_000_000_000;
        let mut key_budget = budget("semroute:usd:key:victim:d:1970-01-01", 1_000, 10);
        key_budget.pinned = true;
        let spend = admission("spend", vec![], vec![key_budget.clone()]);
        assert!(matches!(store.admit(&spend, now), Outcome::Admitted(_)));
        store.settle(
            &Settlement {
                id: "spend".into(),
                budgets: vec![(key_budget, 900)],
                refunds: vec![],
            },
            now,
        );
        // Other callers' users, each with a limiter and a budget of their own, later on.
        for i in 0..(MAX_ENTRIES / 2 + 5_000) as u64 {
            let user = format!("semroute:usd:user:other:u{i}:d:1970-01-01");
            let rate_key = format!("semroute:rpm:user:other:u{i}");
            let ask = admission(
                "x",
                vec![rate(&rate_key, 10, 1)],
                vec![budget(&user, 1_000, 1)],
            );
            let _ = store.admit(&ask, now + 1 + i);
        }
        assert!(store.len() <= MAX_ENTRIES, "{}", store.len());
        let later = now + MAX_ENTRIES as u64;
        let left = store.budget("semroute:usd:key:victim:d:1970-01-01", later);
        assert_eq!(left.spent, 900, "the key's spend was forgotten");
    }

    #[test]
    fn memory_stays_bounded_however_many_users_come() {
        let store = MemoryStore::default();
        for i in 0..(MAX_ENTRIES + 5_000) as u64 {
            let key = format!("user-{i}");
            let now = 1_000_000_000 + i;
            let _ = store.admit(&admission("x", vec![rate(&key, 10, 1)], vec![]), now);
        }
        assert!(store.len() <= MAX_ENTRIES, "{}", store.len());
    }
}
