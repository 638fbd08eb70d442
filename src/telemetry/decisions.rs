//! The decision log: one JSON line per `/classify` and per proxied request (the route and
//! how it was matched; for the proxy also the backend, attempts, status, timings, tokens and
//! cost). A request only builds a plain record and hands it to a bounded channel; a thread
//! of its own formats and writes the lines (`decisions/writer.rs`), so no request waits on
//! a disk: when the channel is full the line is dropped and counted. With `log_prompts` on,
//! the last decisions are also kept in memory with their prompts (for `GET
//! /admin/decisions` and the page); with it off, nothing of a prompt is kept anywhere.

mod pending;
mod prompt;
pub mod time;
mod writer;

pub use pending::{CLIENT_LEFT, PendingDecision};
pub use prompt::{MAX_PROMPT_BYTES, MAX_PROMPT_MESSAGES, Prompt, PromptMessage};
pub use writer::open_sink;

use super::Metrics;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use writer::Message;

/// Decisions kept in memory (with `log_prompts` on) unless told otherwise.
pub const DEFAULT_RECENT: usize = 1000;
/// Lines that may wait for the writer; more are dropped. At a few microseconds a line, a
/// burst of this many is written in tens of milliseconds.
pub const DEFAULT_QUEUE: usize = 8192;

/// One decision, as its log line: plain data, every name already rendered.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    #[serde(serialize_with = "time::rfc3339")]
    pub ts: SystemTime,
    pub request_id: String,
    /// `/classify` or `/v1/chat/completions`.
    pub endpoint: &'static str,
    #[serde(flatten)]
    pub routing: Routing,
    /// Present for proxied requests only.
    #[serde(flatten)]
    pub proxied: Option<Proxied>,
    /// The client key's name, when the request carried a known one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The experiment the request was in, and the variant (backend) it was assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// What the answer cache did: `hit`, `semantic-hit` or `miss` (absent: not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// The prompt, only with `log_prompts` on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
}

/// Which route a request took and how sure the router was (each `null` when the request
/// was not classified: the client named a route or a backend, or it was refused first).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Routing {
    pub route: Option<String>,
    pub matched_by: Option<&'static str>,
    pub score: Option<f32>,
    pub margin: Option<f32>,
    pub ambiguous: Option<bool>,
}

/// What became of a proxied request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Proxied {
    /// The backend that answered last (`null`: none did).
    pub backend: Option<String>,
    /// Calls made upstream, on every backend (continuations of a broken stream included).
    pub attempts: u32,
    /// The HTTP status the client got ([`CLIENT_LEFT`], 499, when it left before the answer).
    pub status: u16,
    /// From arrival to the end of the answer (a stream: its last piece, or the client leaving).
    pub latency_ms: f64,
    /// From arrival to the answer's first byte from upstream (a stream's first event).
    pub ttfb_ms: Option<f64>,
    /// As the upstream's `usage` reported them (`null`: it reported none).
    pub tokens: Option<Tokens>,
    /// Those tokens at the backend's `cost` (`null`: no usage, or no `cost` configured).
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

impl Decision {
    /// A decision on `endpoint` for the request `request_id` that arrived at `ts`; nothing
    /// decided yet.
    pub fn new(ts: SystemTime, request_id: String, endpoint: &'static str) -> Decision {
        Decision {
            ts,
            request_id,
            endpoint,
            routing: Routing::default(),
            proxied: None,
            key: None,
            experiment: None,
            variant: None,
            cache: None,
            prompt: None,
        }
    }
}

/// Milliseconds, to the microsecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Which of the recent decisions to list.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    /// `Some(None)`: only decisions without a route.
    pub route: Option<Option<&'a str>>,
    pub matched_by: Option<&'a str>,
    pub limit: usize,
}

impl Filter<'_> {
    fn keeps(&self, d: &Decision) -> bool {
        self.route.is_none_or(|r| d.routing.route.as_deref() == r)
            && self
                .matched_by
                .is_none_or(|m| d.routing.matched_by == Some(m))
    }
}

/// Where decisions go: the writer's channel (with `--decision-log`) and the ring of recent
/// ones (with `log_prompts`).
pub struct DecisionLog {
    lines: Option<mpsc::Sender<Message>>,
    recent: Mutex<VecDeque<Arc<Decision>>>,
    recent_size: usize,
    log_prompts: AtomicBool,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// A log that writes nothing and keeps the last `recent` decisions when `log_prompts`.
    pub fn new(metrics: Arc<Metrics>, log_prompts: bool, recent: usize) -> DecisionLog {
        DecisionLog {
            lines: None,
            recent: Mutex::new(VecDeque::new()),
            recent_size: recent,
            log_prompts: AtomicBool::new(log_prompts),
            metrics,
        }
    }

    /// Lines also go to `out`, from a thread of their own, through a queue of `queue` lines.
    pub fn writing_to(
        mut self,
        out: Box<dyn Write + Send>,
        queue: usize,
    ) -> std::io::Result<DecisionLog> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        writer::spawn(out, rx, self.metrics.clone())?;
        self.lines = Some(tx);
        Ok(self)
    }

    /// Whether prompts are logged and kept (callers build a `Prompt` only then).
    pub fn log_prompts(&self) -> bool {
        self.log_prompts.load(Ordering::Relaxed)
    }

    /// Turns prompt logging on or off (a reloaded config); turning it off forgets the
    /// prompts kept so far.
    pub fn set_log_prompts(&self, on: bool) {
        self.log_prompts.store(on, Ordering::Relaxed);
        if !on {
            self.ring().clear();
        }
    }

    /// Whether anything is recorded at all (a line written or a decision kept).
    pub fn is_on(&self) -> bool {
        self.lines.is_some() || self.log_prompts()
    }

    /// Hands `decision` to the writer (never waiting: a full queue drops it and counts the
    /// drop) and, with `log_prompts` on, keeps it among the recent ones.
    pub fn record(&self, mut decision: Decision) {
        let keep = self.log_prompts();
        if !keep {
            decision.prompt = None;
            if self.lines.is_none() {
                return;
            }
        }
        let decision = Arc::new(decision);
        if keep {
            let mut ring = self.ring();
            let oldest = (ring.len() >= self.recent_size)
                .then(|| ring.pop_front())
                .flatten();
            if self.recent_size > 0 {
                ring.push_back(decision.clone());
            }
            drop(ring);
            // Freed after the lock is let go: the lock is held for two pointer moves.
            drop(oldest);
        }
        if let Some(lines) = &self.lines
            && lines.try_send(Message::Line(decision)).is_err()
        {
            self.metrics.decisions_dropped(1);
        }
    }

    /// A proxied request's decision, to be filled in as it goes and recorded when its last
    /// holder lets go (`None`: the log is off).
    /// `needed`: something else reads the finished decision (an experiment's counters), so
    /// it is made even with the log off.
    pub fn pending(
        self: &Arc<Self>,
        decision: Decision,
        arrived: Instant,
        needed: bool,
    ) -> Option<Arc<PendingDecision>> {
        (needed || self.is_on())
            .then(|| Arc::new(PendingDecision::new(self.clone(), decision, arrived)))
    }

    /// The recent decisions `filter` keeps, newest first (none with `log_prompts` off).
    pub fn recent(&self, filter: &Filter) -> Vec<Arc<Decision>> {
        self.ring()
            .iter()
            .rev()
            .filter(|d| filter.keeps(d))
            .take(filter.limit)
            .cloned()
            .collect()
    }

    /// Returns once every line recorded before it is written and flushed (at shutdown,
    /// and for tests); at once when no line is written.
    pub async fn sync(&self) {
        let Some(lines) = &self.lines else {
            return;
        };
        let (done, written) = oneshot::channel();
        if lines.send(Message::Sync(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Decision>>> {
        // A panic while holding the lock leaves a valid queue: keep using it.
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
