//! Limits and budgets: what a request is charged before it is sent (requests and tokens per
//! minute, and a reservation of its maximum cost against every USD budget that applies),
//! and settled after (the reservation replaced by the cost its usage reports). The rules
//! are `rules.rs`; the counters live in this process (`memory.rs`) or in a Redis every
//! replica shares.

pub mod demand;
pub mod memory;
pub mod period;
pub mod rules;
pub mod shared;
pub mod signals;
mod ticket;

use crate::config::{Backend, ClientKey, Config, Limits, OnError};
use crate::telemetry::Metrics;
use memory::MemoryStore;
use rules::{Admission, BudgetCharge, Outcome, RateCharge, RateState, nano_ceil};
use shared::{RedisStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use ticket::Ticket;

/// Who is asking: a client key (its place in `auth.keys`; `None`: no key) and a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key: Option<usize>,
    /// The request's `user` or `x-semroute-user`, made safe for a counter's name; empty:
    /// none given (one anonymous user per key).
    pub user: String,
}

/// What a request may take: tokens per minute and USD, at most.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Charge {
    pub tokens: u64,
    pub usd: f64,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Over a rate limit: which one, and when to come back.
    Rate {
        which: String,
        retry_after: Duration,
        state: RateState,
        tokens: bool,
    },
    /// A single request larger than a limit allows in a minute.
    TooLarge { which: String },
    /// Over a budget: which one, what is spent and reserved, the limit (USD).
    Budget {
        which: String,
        spent: f64,
        reserved: f64,
        limit: f64,
        retry_after: Duration,
    },
    /// Redis cannot be reached and `on_error` is `fail_closed`.
    Unavailable,
}

/// An admitted request: its ticket (settled when dropped) and the limits' state for the
/// `x-ratelimit-*` headers.
pub struct Admitted {
    pub ticket: Arc<Ticket>,
    /// The tightest request and token limits after this request, if any apply.
    pub requests: Option<RateState>,
    pub tokens: Option<RateState>,
}

pub struct Quota {
    config: Arc<Config>,
    /// Shared with the quotas of earlier configs (a reload keeps every counter).
    local: Arc<MemoryStore>,
    /// With `state.redis`: the counters every replica shares.
    shared: Option<Arc<RedisStore>>,
    metrics: Arc<Metrics>,
    /// Makes reservation ids unique across replicas.
    replica: u64,
    /// Shared with earlier configs' quotas, so ids stay unique across a reload.
    next: Arc<AtomicU64>,
}

/// What each limiter and budget of an admission is, for messages and metrics.
struct Labels {
    rates: Vec<(String, bool)>,
    budgets: Vec<(String, f64, Duration)>,
    /// Per budget: its period (`day`, `month`) when it is the key's own (for the remaining
    /// budget metric), `None` for a user's.
    key_budgets: Vec<Option<&'static str>>,
}

impl Quota {
    /// The counters `config.state` names; an unusable Redis URL is an error (a Redis that is
    /// down is not: it is reached lazily, and `on_error` decides meanwhile).
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Quota, StoreError> {
        let shared = match &config.state.redis {
            Some(url) => Some(Arc::new(RedisStore::new(
                url,
                &config.state.prefix,
                config.state.timeout,
            )?)),
            None => None,
        };
        let replica = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
        Ok(Quota {
            config,
            local: Arc::default(),
            shared,
            metrics,
            replica,
            next: Arc::default(),
        })
    }

    /// The quota for a reloaded `config`: the counters of `previous` carry on (they are
    /// keyed by the names of keys, users and backends), and so does its Redis connection
    /// when `state` names the same server.
    pub fn succeed(previous: &Quota, config: Arc<Config>) -> Result<Quota, StoreError> {
        let same_state = previous.config.state.redis == config.state.redis
            && previous.config.state.prefix == config.state.prefix
            && previous.config.state.timeout == config.state.timeout;
        let shared = match (&previous.shared, &config.state.redis) {
            (Some(shared), Some(_)) if same_state => Some(shared.clone()),
            (_, Some(url)) => Some(Arc::new(RedisStore::new(
                url,
                &config.state.prefix,
                config.state.timeout,
            )?)),
            (_, None) => None,
        };
        Ok(Quota {
            config,
            local: previous.local.clone(),
            shared,
            metrics: previous.metrics.clone(),
            replica: previous.replica,
            next: previous.next.clone(),
        })
    }

    pub fn shared(&self) -> Option<&RedisStore> {
        self.shared.as_deref()
    }

    /// Connects to Redis (a first connection may take longer than `state.timeout_ms`),
    /// and says in the log whether it answers.
    pub async fn warm_up(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        for _ in 0..20 {
            match shared.ping().await {
                Ok(rtt) => {
                    tracing::info!(
                        rtt_us = rtt.as_micros() as u64,
                        "shared state (Redis) reached"
                    );
                    return;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "Redis not reached yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::warn!(
            on_error = ?self.config.state.on_error,
            "the shared state (Redis) cannot be reached; state.on_error applies until it can"
        );
    }

    /// Decides `admission` in the shared store, or in this process when there is none or
    /// it failed and `on_error` is `fail_open`. Returns whether the shared store decided.
    async fn decide(&self, admission: &Admission, now: u64) -> Result<(Outcome, bool), Refusal> {
        let Some(shared) = &self.shared else {
            return Ok((self.local.admit(admission, now), false));
        };
        let started = std::time::Instant::now();
        let decided = shared.admit(admission).await;
        self.metrics
            .tenants
            .state_call("admit", started.elapsed(), decided.is_err());
        if decided.is_err() && !admission.budgets.is_empty() {
            // The script may have run and only its answer been late: undo its reservation.
            undo_later(shared.clone(), admission);
        }
        match decided {
            Ok(outcome) => Ok((outcome, true)),
            Err(err) => match self.config.state.on_error {
                OnError::FailOpen => {
                    tracing::warn!(error = %err, "the shared limits cannot be reached; counting in this process (on_error: fail_open)");
                    Ok((self.local.admit(admission, now), false))
                }
                OnError::FailClosed => {
                    tracing::warn!(error = %err, "the shared limits cannot be reached; refusing (on_error: fail_closed)");
                    Err(Refusal::Unavailable)
                }
            },
        }
    }

    /// Whether any client or user limit is configured (else admission is skipped).
    pub fn any_limits(config: &Config) -> bool {
        !config.per_user.is_empty() || config.auth.keys.iter().any(|k| !k.limits.is_empty())
    }

    /// Whether any limit at all is configured, a backend's quota included, or a Redis to
    /// share health through.
    pub fn needed(config: &Config) -> bool {
        Quota::any_limits(config)
            || config.backends.iter().any(|b| !b.limits.is_empty())
            || config.state.redis.is_some()
    }

    /// Takes one request of `tokens` from `backend`'s own quota (its provider's `rpm` and
    /// `tpm`): `Ok` if it may be called now, else how long until it may.
    pub async fn pace(&self, backend: &Backend, tokens: u64) -> Result<(), Duration> {
        let mut admission = Admission {
            id: String::new(),
            ttl_us: 0,
            rates: Vec::new(),
            budgets: Vec::new(),
        };
        for (limit, name, cost, tokens) in [
            (backend.limits.rpm, "rpm", 1, false),
            (backend.limits.tpm, "tpm", tokens, true),
        ] {
            if let Some(limit) = limit {
                admission.rates.push(RateCharge {
                    key: format!("{}:{name}:backend:{}", self.prefix(), backend.name),
                    limit,
                    // A request larger than a minute's quota goes when the quota is whole.
                    cost: cost.min(limit),
                    tokens,
                    pinned: true,
                });
            }
        }
        if admission.rates.is_empty() {
            return Ok(());
        }
        match self.decide(&admission, now_us()).await {
            Ok((Outcome::Limited { retry_after_us, .. }, _)) => {
                Err(Duration::from_micros(retry_after_us))
            }
            // fail_closed with Redis away: a backend is not paced blind, it is skipped.
            Err(_) => Err(Duration::from_secs(1)),
            Ok(_) => Ok(()),
        }
    }

    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn prefix(&self) -> &str {
        &self.config.state.prefix
    }

    /// Charges `caller`'s limits with `charge`, or says which limit refuses it.
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        charge: Charge,
    ) -> Result<Admitted, Refusal> {
        let now = now_us();
        let (admission, labels) = self.admission(caller, charge, now);
        for (rate, (which, _)) in admission.rates.iter().zip(&labels.rates) {
            if !rate.possible() {
                return Err(Refusal::TooLarge {
                    which: which.clone(),
                });
            }
        }
        let (outcome, shared) = self.decide(&admission, now).await?;
        match outcome {
            Outcome::Admitted(states) => {
                let tightest = |tokens: bool| {
                    states
                        .iter()
                        .zip(&labels.rates)
                        .filter(|(_, (_, t))| *t == tokens)
                        .map(|(s, _)| *s)
                        .min_by_key(|s| s.remaining)
                };
                Ok(Admitted {
                    requests: tightest(false),
                    tokens: tightest(true),
                    ticket: Arc::new(Ticket::new(
                        self.clone(),
                        ticket::Held {
                            admission,
                            charged: charge,
                            shared,
                            key: caller.key,
                            key_budgets: labels.key_budgets,
                            limits: labels.budgets.iter().map(|b| b.1).collect(),
                        },
                    )),
                })
            }
            Outcome::Limited { at, retry_after_us } => {
                let (which, tokens) = labels.rates[at].clone();
                let rate = &admission.rates[at];
                // Full until `retry_after`, then back to its allowance one interval at a time.
                let ahead = retry_after_us.saturating_add(rules::WINDOW_US - rate.span(rate.cost));
                Err(Refusal::Rate {
                    which,
                    retry_after: Duration::from_micros(retry_after_us),
                    state: RateState {
                        limit: rate.limit,
                        remaining: 0,
                        reset_us: ahead,
                    },
                    tokens,
                })
            }
            Outcome::OverBudget {
                at,
                spent,
                reserved,
            } => {
                let (which, limit, retry_after) = labels.budgets[at].clone();
                Err(Refusal::Budget {
                    which,
                    spent: spent as f64 / 1e9,
                    reserved: reserved as f64 / 1e9,
                    limit,
                    retry_after,
                })
            }
        }
    }

    /// Every limiter and budget that applies to `caller`, charged with `charge`.
    fn admission(&self, caller: &Caller, charge: Charge, now: u64) -> (Admission, Labels) {
        let key: Option<&ClientKey> = caller.key.and_then(|k| self.config.auth.keys.get(k));
        let key_name = key.map_or(crate::config::NO_KEY, |k| k.name.as_str());
        let mut owners: Vec<(String, String, &Limits)> = Vec::new();
        if let Some(k) = key {
            owners.push((
                format!("key:{key_name}"),
                format!("key `{key_name}`"),
                &k.limits,
            ));
        }
        if !self.config.per_user.is_empty() {
            let shown = if caller.user.is_empty() {
                "(no user)"
            } else {
                caller.user.as_str()
            };
            owners.push((
                format!("user:{key_name}:{}", caller.user),
                format!("user `{shown}` of key `{key_name}`"),
                &self.config.per_user,
            ));
        }
        let mut admission = Admission {
            id: format!(
                "{:016x}-{}",
                self.replica,
                self.next.fetch_add(1, Ordering::Relaxed)
            ),
            ttl_us: self.config.state.reservation_ttl.as_micros() as u64,
            rates: Vec::new(),
            budgets: Vec::new(),
        };
        let mut labels = Labels {
            rates: Vec::new(),
            budgets: Vec::new(),
            key_budgets: Vec::new(),
        };
        let day = period::Period::day(now);
        let month = period::Period::month(now);
        for (owner, shown, limits) in owners {
            let is_key = owner.starts_with("key:");
            for (per_minute, name, cost, tokens) in [
                (limits.rpm, "rpm", 1, false),
                (limits.tpm, "tpm", charge.tokens, true),
            ] {
                if let Some(limit) = per_minute {
                    admission.rates.push(RateCharge {
                        key: format!("{}:{name}:{owner}", self.prefix()),
                        limit,
                        cost,
                        tokens,
                        pinned: is_key,
                    });
                    labels
                        .rates
                        .push((format!("{shown} {name} ({limit})"), tokens));
                }
            }
            for (budget, name, period, span) in [
                (limits.usd_per_day, "usd_per_day", &day, "day"),
                (limits.usd_per_month, "usd_per_month", &month, "month"),
            ] {
                if let Some(limit) = budget {
                    admission.budgets.push(BudgetCharge {
                        key: format!("{}:usd:{owner}:{}", self.prefix(), period.name),
                        limit: rules::nano(limit),
                        amount: nano_ceil(charge.usd),
                        keep_us: period.keep_us,
                        pinned: is_key,
                    });
                    labels.key_budgets.push(is_key.then_some(span));
                    labels.budgets.push((
                        format!("{shown} {name}"),
                        limit,
                        Duration::from_micros(period.ends_us.saturating_sub(now)),
                    ));
                }
            }
        }
        (admission, labels)
    }
}

/// One budget's state, for `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct BudgetUsage {
    /// `usd_per_day` or `usd_per_month`.
    pub budget: &'static str,
    /// The period it counts (`d:2026-12-01`, `m:2026-12`).
    pub period: String,
    pub limit: f64,
    pub spent: f64,
    /// Held by requests in flight.
    pub reserved: f64,
}

impl Quota {
    /// The budgets of a key (`user`: `None`) or of one of its users, as they stand.
    pub async fn usage(
        &self,
        key: Option<usize>,
        user: Option<&str>,
    ) -> Result<Vec<BudgetUsage>, StoreError> {
        let key_name = key
            .and_then(|k| self.config.auth.keys.get(k))
            .map_or(crate::config::NO_KEY, |k| k.name.as_str());
        let (owner, limits) = match user {
            None => (
                format!("key:{key_name}"),
                key.and_then(|k| self.config.auth.keys.get(k))
                    .map(|k| k.limits)
                    .unwrap_or_default(),
            ),
            Some(user) => (format!("user:{key_name}:{user}"), self.config.per_user),
        };
        let now = now_us();
        let mut out = Vec::new();
        for (limit, budget, period) in [
            (limits.usd_per_day, "usd_per_day", period::Period::day(now)),
            (
                limits.usd_per_month,
                "usd_per_month",
                period::Period::month(now),
            ),
        ] {
            let Some(limit) = limit else { continue };
            let name = format!("{}:usd:{owner}:{}", self.prefix(), period.name);
            let state = match &self.shared {
                Some(shared) => shared.budget(&name).await?,
                None => self.local.budget(&name, now),
            };
            out.push(BudgetUsage {
                budget,
                period: period.name,
                limit,
                spent: state.spent as f64 / 1e9,
                reserved: state.reserved as f64 / 1e9,
            });
        }
        Ok(out)
    }
}

/// The most a request can take among `backends`: the largest tokens and cost of any.
pub fn most_of(backends: &[&Backend], demand: &demand::Demand) -> Charge {
    backends.iter().fold(Charge::default(), |most, b| Charge {
        tokens: most.tokens.max(demand.max_tokens_on(b)),
        usd: most.usd.max(demand.max_usd_on(b)),
    })
}

/// Settles `admission` at nothing in the background, a few times over a few seconds, so a
/// reservation whose answer timed out does not hold the budget until it lapses (a
/// settlement is recognised if repeated, and one for an admission that never ran only
/// leaves its marker).
fn undo_later(store: Arc<RedisStore>, admission: &Admission) {
    let settlement = rules::Settlement {
        id: admission.id.clone(),
        budgets: admission.budgets.iter().map(|b| (b.clone(), 0)).collect(),
        refunds: Vec::new(),
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if store.settle(&settlement).await.is_ok() {
                return;
            }
        }
    });
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A user id as a counter's name: kept when short and plain, else its SHA-256 (so no id can
/// reach into another's counter or grow a key without bound).
pub fn user_label(user: &str) -> String {
    let plain = user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if plain {
        user.to_string()
    } else {
        format!(
            "sha256.{}",
            hex::encode(crate::config::key_digest(user.as_bytes()))
        )
    }
}
