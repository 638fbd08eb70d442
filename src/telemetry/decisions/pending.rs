//! A proxied request's decision while the request runs: the handler fills in the route and
//! the status, the dispatcher the backend, attempts, first byte and usage, and the line is
//! recorded when the last holder lets go. A streamed answer's relay holds it until the
//! stream ends, so a stream, whether it finishes, breaks or loses its client, gives
//! exactly one line, with the whole request's latency.

use super::{Decision, DecisionLog, Prompt, Proxied, Routing, Tokens, millis};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

/// The status logged for a request whose client left before it was answered (nginx's
/// "client closed request"): the handler never got to set another.
pub const CLIENT_LEFT: u16 = 499;

/// What reads a finished decision besides the log.
type Done = Box<dyn FnOnce(&Decision) + Send>;

pub struct PendingDecision {
    log: Arc<DecisionLog>,
    arrived: Instant,
    decision: Mutex<Decision>,
    done: Mutex<Option<Done>>,
}

impl std::fmt::Debug for PendingDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDecision")
            .field("decision", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl PendingDecision {
    pub(super) fn new(
        log: Arc<DecisionLog>,
        mut decision: Decision,
        arrived: Instant,
    ) -> PendingDecision {
        decision.proxied.get_or_insert(Proxied {
            status: CLIENT_LEFT,
            ..Proxied::default()
        });
        PendingDecision {
            log,
            arrived,
            decision: Mutex::new(decision),
            done: Mutex::new(None),
        }
    }

    pub fn request_id(&self) -> Option<String> {
        Some(self.lock().request_id.clone()).filter(|id| !id.is_empty())
    }

    /// What the answer cache did: `hit`, `semantic-hit` or `miss`.
    pub fn cached(&self, label: &'static str) {
        self.lock().cache = Some(label);
    }

    /// The experiment the request is in and its variant.
    pub fn assigned(&self, experiment: &str, variant: &str) {
        let mut decision = self.lock();
        decision.experiment = Some(experiment.to_string());
        decision.variant = Some(variant.to_string());
    }

    /// Calls `done` with the finished decision (before the log gets it), once.
    pub fn on_done(&self, done: impl FnOnce(&Decision) + Send + 'static) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(done));
    }

    /// The route and how it was chosen.
    pub fn routed(&self, routing: Routing) {
        self.lock().routing = routing;
    }

    /// The name of the client key the request carried.
    pub fn key(&self, name: &str) {
        self.lock().key = Some(name.to_string());
    }

    /// Whether a prompt would be kept (build one only then).
    pub fn wants_prompt(&self) -> bool {
        self.log.log_prompts()
    }

    pub fn prompt(&self, prompt: Prompt) {
        if self.wants_prompt() {
            self.lock().prompt = Some(prompt);
        }
    }

    /// A call upstream is being made.
    pub fn attempted(&self) {
        self.proxied(|p| p.attempts += 1);
    }

    /// `backend` answered: its first byte is here now.
    pub fn answered_by(&self, backend: &str) {
        let ttfb = millis(self.arrived.elapsed());
        self.proxied(|p| {
            p.backend = Some(backend.to_string());
            p.ttfb_ms = Some(ttfb);
        });
    }

    /// A broken stream continues on `backend`.
    pub fn continued_on(&self, backend: &str) {
        self.proxied(|p| p.backend = Some(backend.to_string()));
    }

    /// Usage an upstream reported, and its cost when the backend has one (added up: a
    /// continued stream may report twice).
    pub fn used(&self, prompt: u64, completion: u64, usd: Option<f64>) {
        self.proxied(|p| {
            let tokens = p.tokens.get_or_insert_with(Tokens::default);
            tokens.prompt = tokens.prompt.saturating_add(prompt);
            tokens.completion = tokens.completion.saturating_add(completion);
            if let Some(usd) = usd {
                *p.cost_usd.get_or_insert(0.0) += usd;
            }
        });
    }

    /// The status the client got.
    pub fn status(&self, status: u16) {
        self.proxied(|p| p.status = status);
    }

    fn proxied(&self, change: impl FnOnce(&mut Proxied)) {
        if let Some(p) = &mut self.lock().proxied {
            change(p);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Decision> {
        // Every change leaves a whole record: a panic elsewhere cannot leave it half made.
        self.decision.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PendingDecision {
    fn drop(&mut self) {
        let latency = millis(self.arrived.elapsed());
        let decision = self
            .decision
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let mut decision = std::mem::replace(
            decision,
            Decision::new(SystemTime::UNIX_EPOCH, String::new(), ""),
        );
        if let Some(p) = &mut decision.proxied {
            p.latency_ms = latency;
        }
        let done = self.done.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = done.take() {
            done(&decision);
        }
        self.log.record(decision);
    }
}
