//! The tenants' metrics: requests refused and why, what each client key spent and has left,
//! and how the shared state (Redis) answers. Labelled by a key's configured name, never by
//! the key, a user or anything a request sends.

use super::{BUCKETS, Histograms, Listed};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Why a request was refused before any upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No key, or an unknown one (401).
    Auth,
    /// A route, backend or data class the key may not use (403).
    Forbidden,
    /// Over a rate limit (429).
    Rate,
    /// Over a budget (429).
    Budget,
    /// The shared state could not be reached with `on_error: fail_closed` (503).
    Unavailable,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Auth => "auth",
            Refused::Forbidden => "forbidden",
            Refused::Rate => "rate",
            Refused::Budget => "budget",
            Refused::Unavailable => "state_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OnKey {
    key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KeyPeriod {
    key: String,
    period: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Operation {
    op: &'static str,
}

pub struct Tenants {
    refused: Family<Reason, Counter>,
    spend: Family<OnKey, Counter<f64, AtomicU64>>,
    remaining: Family<KeyPeriod, Gauge<f64, AtomicU64>>,
    state_errors: Family<Operation, Counter>,
    state_latency: Histograms<Operation>,
}

impl Default for Tenants {
    fn default() -> Self {
        Tenants {
            refused: Family::default(),
            spend: Family::default(),
            remaining: Family::default(),
            state_errors: Family::default(),
            state_latency: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl Tenants {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "semroute_refused",
            "Requests refused before any upstream call, by reason",
            Listed(self.refused.clone()),
        );
        r.register(
            "semroute_spend_usd",
            "USD settled against each client key's budgets (the usage its answers reported)",
            Listed(self.spend.clone()),
        );
        r.register(
            "semroute_budget_remaining_usd",
            "What is left of each client key's budget, by period (day, month), as last seen",
            Listed(self.remaining.clone()),
        );
        r.register(
            "semroute_state_errors",
            "Calls to the shared state (Redis) that failed or timed out, by operation",
            Listed(self.state_errors.clone()),
        );
        r.register(
            "semroute_state_latency_seconds",
            "Round trips to the shared state (Redis), by operation",
            Listed(self.state_latency.clone()),
        );
    }

    pub fn refused(&self, why: Refused) {
        self.refused
            .get_or_create(&Reason {
                reason: why.label(),
            })
            .inc();
    }

    /// `usd` settled against `key`'s budgets.
    pub fn spent(&self, key: &str, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.spend
                .get_or_create(&OnKey { key: key.into() })
                .inc_by(usd);
        }
    }

    /// What is left of `key`'s budget for `period` (`day` or `month`).
    pub fn remaining(&self, key: &str, period: &'static str, usd: f64) {
        self.remaining
            .get_or_create(&KeyPeriod {
                key: key.into(),
                period,
            })
            .set(usd);
    }

    /// A call to the shared state took `elapsed`, and failed if `failed`.
    pub fn state_call(&self, op: &'static str, elapsed: Duration, failed: bool) {
        let labels = Operation { op };
        self.state_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.state_errors.get_or_create(&labels).inc();
        }
    }
}
