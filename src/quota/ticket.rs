//! A request's hold on its limits: created when it is admitted, told the usage its answer
//! reports, and settled when the last holder lets go (the answer ended, failed, or the
//! client left), so no path can forget to release a reservation.

use super::memory::BudgetState;
use super::rules::{Admission, Settlement, nano};
use super::{Charge, Quota, now_us};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Ticket {
    quota: Arc<Quota>,
    held: Held,
    used: Mutex<Used>,
}

/// What an admission charged.
pub(super) struct Held {
    pub admission: Admission,
    /// What was charged at admission.
    pub charged: Charge,
    /// Whether the shared store admitted it (and so settles it).
    pub shared: bool,
    /// The client key (its place in `auth.keys`).
    pub key: Option<usize>,
    /// Per budget: its period when it is the key's own, for the remaining-budget metric.
    pub key_budgets: Vec<Option<&'static str>>,
    /// Per budget: its limit in USD.
    pub limits: Vec<f64>,
}

/// What the request actually took so far.
#[derive(Debug, Default, Clone, Copy)]
struct Used {
    usd: f64,
    tokens: u64,
    /// Whether an upstream reported usage (else an estimate may stand in).
    reported: bool,
    /// Whether an estimate of an answer without usage was added.
    estimated: bool,
    /// The prompt of the attempt in progress (USD and tokens): charged when the ticket is
    /// dropped with neither usage nor an estimate (the client left before any answer, or
    /// a plain answer carried no usage).
    sent: Option<(f64, u64)>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.held.admission.id)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    pub(super) fn new(quota: Arc<Quota>, held: Held) -> Ticket {
        Ticket {
            quota,
            held,
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
        used.reported = true;
    }

    /// An estimate of what an answer without usage took; ignored once usage was reported.
    pub fn unreported(&self, usd: f64, tokens: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.reported {
            return;
        }
        if usd.is_finite() && usd > 0.0 {
            used.usd += usd;
        }
        used.tokens = used.tokens.saturating_add(tokens);
        used.estimated = true;
    }

    /// An attempt is sending the request upstream, whose prompt costs `usd` and `tokens`:
    /// the least it is charged unless the attempt fails (`unsent`).
    pub fn sent(&self, usd: f64, tokens: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.sent = Some((usd, tokens));
    }

    /// The attempt in progress failed: it costs nothing.
    pub fn unsent(&self) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.sent = None;
    }

    /// The settlement: each budget's actual spend, and the tokens charged beyond use.
    fn settlement(&self) -> Settlement {
        let mut used = *self.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((usd, tokens)) = used.sent.filter(|_| !used.reported && !used.estimated) {
            used.usd = if usd.is_finite() { usd.max(0.0) } else { 0.0 };
            used.tokens = tokens;
        }
        let actual = nano(used.usd);
        let refund = self.held.charged.tokens.saturating_sub(used.tokens);
        Settlement {
            id: self.held.admission.id.clone(),
            budgets: self
                .held
                .admission
                .budgets
                .iter()
                .map(|b| (b.clone(), actual))
                .collect(),
            refunds: self
                .held
                .admission
                .rates
                .iter()
                .filter(|r| r.tokens)
                .map(|r| (r.clone(), refund))
                .collect(),
        }
    }
}

/// Counts a settlement: the key's spend, and what is left of its budgets.
fn report(quota: &Quota, held: &Report, settlement: &Settlement, states: &[BudgetState]) {
    let tenants = &quota.metrics().tenants;
    let name = held
        .key
        .and_then(|k| quota.config().auth.keys.get(k))
        .map_or(crate::config::NO_KEY, |k| k.name.as_str());
    let actual = settlement.budgets.first().map_or(0, |(_, a)| *a);
    tenants.spent(name, actual as f64 / 1e9);
    for ((period, limit), state) in held.key_budgets.iter().zip(&held.limits).zip(states) {
        if let Some(period) = period {
            let left = limit - state.spent.saturating_add(state.reserved) as f64 / 1e9;
            tenants.remaining(name, period, left.max(0.0));
        }
    }
}

/// What `report` needs of a ticket once it is gone.
struct Report {
    key: Option<usize>,
    key_budgets: Vec<Option<&'static str>>,
    limits: Vec<f64>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let settlement = self.settlement();
        let held = Report {
            key: self.held.key,
            key_budgets: std::mem::take(&mut self.held.key_budgets),
            limits: std::mem::take(&mut self.held.limits),
        };
        if !self.held.shared {
            let states = self.quota.local().settle(&settlement, now_us());
            report(&self.quota, &held, &settlement, &states);
            return;
        }
        let quota = self.quota.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(states) = settle_shared(&quota, &settlement).await {
                        report(&quota, &held, &settlement, &states);
                    }
                });
            }
            Err(_) => tracing::error!(
                id = %settlement.id,
                "no runtime to settle a reservation on; it lapses after state.reservation_ttl_s"
            ),
        }
    }
}

/// Settles in Redis, retrying a failed call (a repeated settlement is recognised there).
async fn settle_shared(quota: &Quota, settlement: &Settlement) -> Option<Vec<BudgetState>> {
    let shared = quota.shared()?;
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=SETTLE_ATTEMPTS {
        let started = std::time::Instant::now();
        let settled = shared.settle(settlement).await;
        quota
            .metrics()
            .tenants
            .state_call("settle", started.elapsed(), settled.is_err());
        match settled {
            Ok(states) => return Some(states),
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
    None
}

/// Tries at settling one request in Redis (50 ms, 200 ms, 800 ms, 3.2 s, 12.8 s apart).
const SETTLE_ATTEMPTS: u32 = 6;
