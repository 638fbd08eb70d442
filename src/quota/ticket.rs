//! A request's hold on its limits: created when it is admitted, told the usage its answer
//! reports, and settled when the last holder lets go (the answer ended, failed, or the
//! client left), so no path can forget to release a reservation.

use super::rules::{Admission, Settlement, nano};
use super::{Charge, Quota, now_us};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Ticket {
    quota: Arc<Quota>,
    admission: Admission,
    /// What was charged at admission.
    charged: Charge,
    /// Whether the shared store admitted it (and so settles it).
    shared: bool,
    used: Mutex<Used>,
}

/// What the request actually took so far.
#[derive(Debug, Default, Clone, Copy)]
struct Used {
    usd: f64,
    tokens: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.admission.id)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    pub(super) fn new(
        quota: Arc<Quota>,
        admission: Admission,
        charged: Charge,
        shared: bool,
    ) -> Ticket {
        Ticket {
            quota,
            admission,
            charged,
            shared,
            used: Mutex::new(Used::default()),
        }
    }

    /// Adds usage an upstream reported (or, for an answer cut short, what was relayed).
    pub fn used(&self, usd: f64, tokens: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if usd.is_finite() && usd > 0.0 {
            used.usd += usd;
        }
        used.tokens = used.tokens.saturating_add(tokens);
    }

    /// The settlement: each budget's actual spend, and the tokens charged beyond use.
    fn settlement(&self) -> Settlement {
        let used = *self.used.lock().unwrap_or_else(|e| e.into_inner());
        let actual = nano(used.usd);
        let refund = self.charged.tokens.saturating_sub(used.tokens);
        Settlement {
            id: self.admission.id.clone(),
            budgets: self
                .admission
                .budgets
                .iter()
                .map(|b| (b.clone(), actual))
                .collect(),
            refunds: self
                .admission
                .rates
                .iter()
                .filter(|r| r.tokens)
                .map(|r| (r.clone(), refund))
                .collect(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let settlement = self.settlement();
        if !self.shared {
            self.quota.local().settle(&settlement, now_us());
            return;
        }
        let quota = self.quota.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { settle_shared(&quota, &settlement).await });
            }
            Err(_) => tracing::error!(
                id = %settlement.id,
                "no runtime to settle a reservation on; it lapses after state.reservation_ttl_s"
            ),
        }
    }
}

/// Settles in Redis, retrying a failed call (a repeated settlement is recognised there).
async fn settle_shared(quota: &Quota, settlement: &Settlement) {
    let Some(shared) = quota.shared() else {
        return;
    };
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match shared.settle(settlement).await {
            Ok(()) => return,
            Err(err) if attempt == SETTLE_ATTEMPTS => {
                let usd = settlement.budgets.first().map_or(0, |(_, actual)| *actual) as f64 / 1e9;
                tracing::error!(error = %err, id = %settlement.id, usd, "a settlement could not reach Redis; its reservation lapses after state.reservation_ttl_s and this spend is not counted");
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, "settling in Redis failed; retrying");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(4);
            }
        }
    }
}

/// Tries at settling one request in Redis (50 ms, 200 ms, 800 ms, 3.2 s, 12.8 s apart).
const SETTLE_ATTEMPTS: u32 = 6;
