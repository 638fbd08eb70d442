//! The arithmetic of limits, the same in every store: a rate limit is GCRA over a one-minute
//! window (a limit of N admits N at once, then one per 60/N s), a budget admits a request
//! while what is spent, what is reserved and the request's maximum fit under the limit.
//! Times are µs since the epoch, money is nano-USD (integers: sums never drift).

/// A rate limit's window: one minute.
pub const WINDOW_US: u64 = 60_000_000;

/// One limiter charged `cost` (a request, or its tokens) against `limit` per minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCharge {
    pub key: String,
    pub limit: u64,
    pub cost: u64,
    /// Whether it counts tokens (then settled to the tokens used) or requests.
    pub tokens: bool,
    /// A key's or a backend's (as many as the config names, never a client-chosen user's):
    /// never evicted from the in-memory store.
    pub pinned: bool,
}

/// What a limiter allows after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: u64,
    pub remaining: u64,
    /// Until it is back at its full allowance.
    pub reset_us: u64,
}

impl RateCharge {
    /// The theoretical arrival time `units` of this limit add.
    pub fn span(&self, units: u64) -> u64 {
        let span = (units as u128 * WINDOW_US as u128).div_ceil(self.limit.max(1) as u128);
        u64::try_from(span).unwrap_or(u64::MAX)
    }

    /// Charges the limiter whose time is `tat` at `now`: the new time and what remains, or
    /// how long until the charge would pass.
    pub fn check(&self, tat: u64, now: u64) -> Result<(u64, RateState), u64> {
        let new_tat = tat.max(now).saturating_add(self.span(self.cost));
        let ahead = new_tat - now;
        if ahead > WINDOW_US {
            return Err(ahead - WINDOW_US);
        }
        Ok((new_tat, self.allowance(ahead)))
    }

    /// The limiter's allowance at `now` without charging it.
    pub fn state(&self, tat: u64, now: u64) -> RateState {
        self.allowance(tat.saturating_sub(now))
    }

    pub fn allowance(&self, ahead: u64) -> RateState {
        let free = (WINDOW_US - ahead.min(WINDOW_US)) as u128;
        RateState {
            limit: self.limit,
            remaining: (free * self.limit as u128 / WINDOW_US as u128) as u64,
            reset_us: ahead,
        }
    }

    /// The time after giving back `units` charged too much, never before `now`.
    pub fn refunded(&self, tat: u64, units: u64, now: u64) -> u64 {
        tat.saturating_sub(self.span(units)).max(now)
    }

    /// Whether the charge can ever pass (a request larger than a minute's allowance cannot).
    pub fn possible(&self) -> bool {
        self.cost <= self.limit
    }
}

/// One budget charged `amount` against `limit` (nano-USD) for its period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCharge {
    pub key: String,
    pub limit: i64,
    pub amount: i64,
    /// How long the period's record is kept once used (µs).
    pub keep_us: u64,
    /// A key's (as many as the config names, never a client-chosen user's): never evicted
    /// from the in-memory store.
    pub pinned: bool,
}

impl BudgetCharge {
    pub fn fits(&self, spent: i64, reserved: i64) -> bool {
        spent.saturating_add(reserved).saturating_add(self.amount) <= self.limit
    }
}

/// Every limiter and budget a request is charged, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The request's reservation id (unique across replicas).
    pub id: String,
    /// A reservation never settled lapses after this long (µs).
    pub ttl_us: u64,
    pub rates: Vec<RateCharge>,
    pub budgets: Vec<BudgetCharge>,
}

/// What came of an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Charged; the state of each limiter, in order.
    Admitted(Vec<RateState>),
    /// `rates[at]` is over its limit for `retry_after_us`; nothing was charged.
    Limited { at: usize, retry_after_us: u64 },
    /// `budgets[at]` cannot hold the request; nothing was charged.
    OverBudget {
        at: usize,
        spent: i64,
        reserved: i64,
    },
}

/// The end of a request: each budget's actual spend (nano-USD), tokens to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub id: String,
    pub budgets: Vec<(BudgetCharge, i64)>,
    pub refunds: Vec<(RateCharge, u64)>,
}

/// USD as nano-USD, rounded up (a reservation never falls short by rounding).
pub fn nano_ceil(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).ceil().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// USD as nano-USD, rounded to the nearest.
pub fn nano(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_reports_what_remains_and_when_it_resets() {
        let rate = RateCharge {
            key: "k".into(),
            limit: 60,
            cost: 1,
            tokens: false,
            pinned: false,
        };
        let (tat, state) = rate.check(0, 1_000_000_000).unwrap();
        assert_eq!(tat, 1_000_000_000 + 1_000_000);
        assert_eq!(
            state,
            RateState {
                limit: 60,
                remaining: 59,
                reset_us: 1_000_000
            }
        );
        // A refund never puts the limiter before `now`.
        assert_eq!(rate.refunded(tat, 5, 1_000_000_000), 1_000_000_000);
    }

    #[test]
    fn a_charge_larger_than_the_limit_is_impossible_not_merely_late() {
        let rate = RateCharge {
            key: "k".into(),
            limit: 1_000,
            cost: 1_001,
            tokens: true,
            pinned: false,
        };
        assert!(!rate.possible());
        assert!(rate.check(0, 0).is_err());
    }

    #[test]
    fn money_rounds_up_for_reservations_and_ignores_nonsense() {
        assert_eq!(nano_ceil(0.000_000_001_5), 2);
        assert_eq!(nano(0.000_000_001_4), 1);
        assert_eq!(nano_ceil(f64::NAN), 0);
        assert_eq!(nano(-3.0), 0);
        assert_eq!(nano_ceil(f64::INFINITY), 0);
    }
}
