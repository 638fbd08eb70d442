//! Passive health per backend: a circuit breaker. Consecutive failures open it for an
//! exponentially growing cooldown, capped at 15 s so a recovered backend is back in use
//! within seconds of its recovery however long it was down; a 429 opens it for its
//! `Retry-After`, a refused credential for a minute. When the cooldown ends, one request
//! at a time is let through as a probe (half-open), holding a `ProbeSlot` that frees the
//! slot whatever becomes of the request: success closes the breaker, failure opens it
//! again. Also the load figures the balancers read: requests in flight (held by an
//! `InFlight` guard for as long as the answer, streams included, lasts) and a peak-EWMA of
//! latency. `Board` holds every backend's `Health` and applies attempts' and active health
//! checks' verdicts to it.

use super::verdict::Cooldown;
use crate::config::{Backend, BackendId, Config};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// First cooldown after opening; doubles on each further failure.
pub const BASE_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest failure cooldown: a backend that recovers is probed again within this.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(15);
/// Cooldown after the backend refused its own credential (401/403): retrying sooner
/// cannot help until its key is fixed.
pub const CREDENTIAL_COOLDOWN: Duration = Duration::from_secs(60);
/// Longest `Retry-After` honoured.
pub const MAX_RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(3600);
/// Cooldown for a 429 without a usable `Retry-After`.
pub const DEFAULT_RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(5);
/// Decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// The cooldown is over; this request may probe.
    Probe,
    /// Cooling down until then.
    Cooling(Instant),
}

/// A breaker as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// In use.
    Closed,
    /// Failures opened it: skipped until its cooldown ends.
    Open,
    /// The provider's rate limit or a refused credential: skipped until the cooldown ends,
    /// which a health check cannot lift.
    Cooling,
    /// The cooldown is over: one request at a time probes it.
    HalfOpen,
}

/// One backend's health at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub state: BreakerState,
    /// Consecutive failures.
    pub failures: u32,
    /// Time left in the cooldown.
    pub remaining: Option<Duration>,
    pub in_flight: usize,
    /// The peak-EWMA latency (`None`: no answer yet).
    pub latency: Option<Duration>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    until: Option<Instant>,
    /// The probe in progress, by its slot number.
    probing: Option<u64>,
    /// How many times it has opened in a row (for the exponential backoff).
    opened: u32,
    /// The cooldown is a provider's rate limit or a refused credential: a health check
    /// (which says nothing about either) cannot lift it.
    pinned: bool,
}

#[derive(Debug, Default)]
pub struct Health {
    breaker: Mutex<Breaker>,
    in_flight: AtomicUsize,
    /// Numbers probe slots, so a stale slot never frees a newer probe's.
    probes: AtomicU64,
    /// (latency estimate in µs, when last updated)
    latency: Mutex<(f64, Option<Instant>)>,
}

impl Health {
    pub fn availability(&self, now: Instant) -> Availability {
        let Ok(b) = self.breaker.lock() else {
            return Availability::Ready;
        };
        match b.until {
            None => Availability::Ready,
            Some(until) if now < until => Availability::Cooling(until),
            // One probe at a time: the others wait for its verdict a little.
            Some(_) if b.probing.is_some() => {
                Availability::Cooling(now + Duration::from_millis(100))
            }
            Some(_) => Availability::Probe,
        }
    }

    /// Admits a request: at once when the backend is ready or cooling (the caller checked
    /// it may be tried), as its probe when the cooldown is over, and `None` while another
    /// request holds the probe.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<Admission> {
        let probe = match self.availability(now) {
            Availability::Probe => Some(self.start_probe()?),
            _ => None,
        };
        Some(Admission { _probe: probe })
    }

    /// Claims the probe slot; `None` if another request holds it. The slot is freed when
    /// the returned guard drops, whether or not a verdict was recorded.
    pub fn start_probe(self: &Arc<Self>) -> Option<ProbeSlot> {
        let mut b = self.breaker.lock().ok()?;
        if b.probing.is_some() {
            return None;
        }
        let id = self.probes.fetch_add(1, Ordering::Relaxed);
        b.probing = Some(id);
        Some(ProbeSlot {
            health: self.clone(),
            id,
        })
    }

    pub fn succeeded(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            *b = Breaker::default();
        }
    }

    /// An active health check passed: lifts a failure cooldown at once, but not a rate
    /// limit's (the models endpoint answering says nothing about the chat quota).
    pub fn check_passed(&self, now: Instant) {
        if let Ok(mut b) = self.breaker.lock() {
            if b.pinned && b.until.is_some_and(|u| now < u) {
                return;
            }
            *b = Breaker::default();
        }
    }

    /// Records a failure; returns whether the backend entered a cooldown.
    pub fn failed(&self, now: Instant) -> bool {
        let Ok(mut b) = self.breaker.lock() else {
            return false;
        };
        b.failures += 1;
        let was_probing = b.probing.take().is_some();
        if b.failures < FAILURES_TO_OPEN && !was_probing {
            return false;
        }
        let backoff = BASE_COOLDOWN
            .saturating_mul(1 << b.opened.min(16))
            .min(MAX_COOLDOWN);
        b.opened += 1;
        b.until = Some(now + backoff);
        true
    }

    /// A 429: cool down for `retry_after` (or the default); always enters a cooldown.
    pub fn rate_limited(&self, now: Instant, retry_after: Option<Duration>) {
        let wait = retry_after
            .unwrap_or(DEFAULT_RATE_LIMIT_COOLDOWN)
            .min(MAX_RATE_LIMIT_COOLDOWN);
        self.pin(now, wait);
    }

    /// The backend refused its own credential: out for `CREDENTIAL_COOLDOWN`.
    pub fn credential_refused(&self, now: Instant) {
        self.pin(now, CREDENTIAL_COOLDOWN);
    }

    /// Another replica saw a rate limit or a refused credential: out for `wait`.
    pub fn pinned_for(&self, now: Instant, wait: Duration) {
        self.pin(now, wait.min(MAX_RATE_LIMIT_COOLDOWN));
    }

    /// Another replica opened its breaker: open here too for `wait` (then probed as usual).
    pub fn opened_for(&self, now: Instant, wait: Duration) {
        if let Ok(mut b) = self.breaker.lock() {
            let until = now + wait.min(MAX_COOLDOWN);
            b.until = Some(b.until.map_or(until, |u| u.max(until)));
        }
    }

    /// When the cooldown ends, if one is on.
    pub fn cooling_until(&self) -> Option<Instant> {
        self.breaker.lock().ok().and_then(|b| b.until)
    }

    fn pin(&self, now: Instant, wait: Duration) {
        if let Ok(mut b) = self.breaker.lock() {
            b.probing = None;
            b.pinned = true;
            b.until = Some(b.until.map_or(now + wait, |u| u.max(now + wait)));
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Peak-EWMA: a slower sample replaces the estimate at once, faster ones decay into it.
    pub fn observe_latency(&self, now: Instant, sample: Duration) {
        if let Ok(mut l) = self.latency.lock() {
            let micros = sample.as_secs_f64() * 1e6;
            let (estimate, at) = *l;
            let updated = match at {
                None => micros,
                Some(_) if micros > estimate => micros,
                Some(at) => {
                    let elapsed = now.saturating_duration_since(at).as_secs_f64();
                    let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
                    estimate * w + micros * (1.0 - w)
                }
            };
            *l = (updated, Some(now));
        }
    }

    /// The breaker and the load as an operator reads them (the page, `/admin/backends`).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let (state, failures, remaining) = match self.breaker.lock() {
            Ok(b) => {
                let state = match b.until {
                    None => BreakerState::Closed,
                    Some(until) if now < until && b.pinned => BreakerState::Cooling,
                    Some(until) if now < until => BreakerState::Open,
                    Some(_) => BreakerState::HalfOpen,
                };
                let remaining = b.until.map(|u| u.saturating_duration_since(now));
                (state, b.failures, remaining.filter(|r| !r.is_zero()))
            }
            Err(_) => (BreakerState::Closed, 0, None),
        };
        let latency = self
            .latency
            .lock()
            .ok()
            .and_then(|l| l.1.map(|_| Duration::from_secs_f64(l.0 / 1e6)));
        Snapshot {
            state,
            failures,
            remaining,
            in_flight: self.in_flight(),
            latency,
        }
    }

    /// The latency estimate times the load: what the latency balancer minimises.
    pub fn latency_cost(&self) -> f64 {
        let estimate = self.latency.lock().map(|l| l.0).unwrap_or(0.0);
        (estimate.max(1.0)) * (self.in_flight() as f64 + 1.0)
    }
}

/// Decrements the in-flight count on drop; a stream's relay holds it to the stream's end.
#[derive(Debug)]
pub struct InFlight(Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The half-open probe slot of one backend, held by the request probing it. Dropping it
/// frees the slot if no verdict did (a 4xx for the client, a context-length error, a client
/// that went away): the next request may probe, instead of the backend staying "probing"
/// and unused forever.
#[derive(Debug)]
pub struct ProbeSlot {
    health: Arc<Health>,
    id: u64,
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if let Ok(mut b) = self.health.breaker.lock()
            && b.probing == Some(self.id)
        {
            b.probing = None;
        }
    }
}

/// Every backend's health, by `BackendId`.
pub struct Board(Vec<Arc<Health>>);

impl Board {
    pub fn new(backends: usize) -> Board {
        Board((0..backends).map(|_| Arc::default()).collect())
    }

    pub fn get(&self, b: BackendId) -> &Arc<Health> {
        &self.0[b.index()]
    }

    /// The board for config `next`, sharing this one's (`previous`'s) health of every
    /// backend that keeps its name.
    pub fn carried(&self, previous: &Config, next: &Config) -> Board {
        Board(
            next.backends
                .iter()
                .map(|b| {
                    previous
                        .backend_id(&b.name)
                        .and_then(|old| self.0.get(old.index()))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect(),
        )
    }

    pub fn all(&self) -> &[Arc<Health>] {
        &self.0
    }

    /// Whether `b` may be tried now: not cooling down and not at its concurrency limit.
    pub fn usable(&self, b: BackendId, max_concurrent: Option<usize>, now: Instant) -> bool {
        let health = self.get(b);
        let full = max_concurrent.is_some_and(|max| health.in_flight() >= max);
        !full && !matches!(health.availability(now), Availability::Cooling(_))
    }

    /// Applies a failed attempt's effect on `backend` (`b`); `jitter` draws a number in
    /// [0, 1) that spreads a rate limit's end (drawn only for a rate limit). Returns whether the backend entered a cooldown.
    pub fn cool_down(
        &self,
        backend: &Backend,
        b: BackendId,
        cooldown: Cooldown,
        jitter: impl FnOnce() -> f64,
    ) -> bool {
        let (health, now) = (self.get(b), Instant::now());
        match cooldown {
            Cooldown::None => false,
            Cooldown::Failure => {
                let cooled = health.failed(now);
                if cooled {
                    tracing::warn!(backend = %backend.name, "backend cooling down");
                }
                cooled
            }
            Cooldown::RateLimited(wait) => {
                // Jittered, so a herd of clients does not return at once.
                let wait = wait.map(|w| w.mul_f64(1.0 + 0.2 * jitter()));
                health.rate_limited(now, wait);
                true
            }
            Cooldown::Credential => {
                tracing::error!(
                    backend = %backend.name,
                    api_key_env = backend.api_key_env.as_deref().unwrap_or("-"),
                    cooldown_s = CREDENTIAL_COOLDOWN.as_secs(),
                    "the backend refused its own credential (HTTP 401/403); check the key in this variable"
                );
                health.credential_refused(now);
                true
            }
        }
    }

    /// Applies an active health check's answer (`None`: no answer) to `backend` (`b`): a 2xx
    /// brings it back at once. Returns whether the backend entered a cooldown.
    pub fn checked(&self, backend: &Backend, b: BackendId, status: Option<u16>) -> bool {
        if let Some(401 | 403) = status {
            tracing::error!(backend = %backend.name, api_key_env = backend.api_key_env.as_deref().unwrap_or("-"), "the backend refuses its credential; check the key in this variable");
        }
        let (health, now) = (self.get(b), Instant::now());
        if matches!(status, Some(200..=299)) {
            // Back in at once, without waiting for a probe request.
            let was_out = health.availability(now) != Availability::Ready;
            health.check_passed(now);
            if was_out && health.availability(now) == Availability::Ready {
                tracing::info!(backend = %backend.name, "health check passed; backend back in");
            }
            false
        } else if health.failed(now) {
            tracing::warn!(backend = %backend.name, "health check failed; backend cooling down");
            true
        } else {
            false
        }
    }
}

/// Leave to send to a backend now; when that is its half-open probe, it holds the probe
/// slot until dropped.
#[derive(Debug)]
pub struct Admission {
    _probe: Option<ProbeSlot>,
}

impl Admission {
    /// Whether this request is the backend's half-open probe.
    pub fn is_probe(&self) -> bool {
        self._probe.is_some()
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
