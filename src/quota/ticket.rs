//! A request's hold on its limits: created when it is admitted, told the usage its answer
//! reports, and settled when the last holder lets go (the answer ended, failed, or the
//! client left), so no path can forget to release a reservation.

use super::rules::{Admission, Settlement, nano};
use super::{Charge, Quota, now_us};
use std::sync::{Arc, Mutex};

pub struct Ticket {
    quota: Arc<Quota>,
    admission: Admission,
    /// What was charged at admission.
    charged: Charge,
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
    pub(super) fn new(quota: Arc<Quota>, admission: Admission, charged: Charge) -> Ticket {
        Ticket {
            quota,
            admission,
            charged,
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
        self.quota.local().settle(&settlement, now_us());
    }
}
