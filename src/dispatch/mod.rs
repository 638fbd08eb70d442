//! Dispatch: sends a chat request to its route's backends, in the order the route's
//! strategy gives, skipping backends in cooldown and any backend not allowed the request's
//! data class, retrying and falling over by the rules in `verdict.rs`, and relaying the
//! answer. Requests go upstream as streams (a non-streaming one too, reassembled by
//! `assemble.rs`, unless the backend says `upstream_stream: false`), so first-byte and
//! stall detection and mid-answer continuation (`relay.rs`) work for every answer. One
//! upstream call and what came of it is `attempt.rs`.

mod assemble;
mod attempt;
mod balance;
mod body;
pub mod classes;
pub mod health;
pub mod relay;
mod sse;
pub mod verdict;

use crate::config::{BackendId, Config, RouteId};
use crate::telemetry::{Metrics, TokenKind};
use bytes::Bytes;
use health::{Availability, Health};
use relay::Piece;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use verdict::{Cooldown, Outcome, Verdict, judge};

/// Client bodies larger than this are serialized for upstream on a blocking thread, so a
/// huge conversation never stalls the async runtime.
const BLOCKING_SERIALIZE_BYTES: usize = 256 * 1024;
/// Most bytes read of an upstream error body or a non-streamed answer.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// When every target is cooling down, wait at most this long for the first to recover.
pub const MAX_RECOVERY_WAIT: Duration = Duration::from_secs(3);

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The route's targets, by its strategy.
    Route(RouteId),
    /// One backend, named by the client.
    Backend(BackendId),
}

/// A chat request to dispatch: the client's JSON body, passed through except for `model`
/// (shared, never copied: a conversation can be tens of megabytes).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: Arc<Map<String, Value>>,
    pub destination: Destination,
    /// The strictest data class that applies (see `classes.rs`); `None`: unclassified.
    pub data_class: Option<classes::Classed>,
    /// The client's body size in bytes.
    pub size: usize,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.body.get("stream").and_then(|s| s.as_bool()) == Some(true)
    }
}

/// The answer to relay.
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: AnswerBody,
    /// The backend that answered.
    pub backend: BackendId,
    /// Attempts made, on every backend.
    pub attempts: u32,
}

pub enum AnswerBody {
    Full(Bytes),
    /// A streamed answer, relayed as it arrives (see `relay::frame`).
    Stream(tokio::sync::mpsc::Receiver<Piece>),
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no backend may receive data class `{class}`: {reason}")]
    NotEligible { class: String, reason: String },
    #[error("every target is cooling down; the first recovers in {}", fmt_ms(*.retry_after))]
    AllCooling { retry_after: Duration },
    #[error("every target failed: {}", .attempts.join("; "))]
    Exhausted {
        /// `backend: outcome` per attempt.
        attempts: Vec<String>,
    },
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

pub struct Dispatcher {
    config: Arc<Config>,
    /// One HTTP client per backend (its own connection pool and connect timeout).
    clients: Vec<reqwest::Client>,
    /// API keys, read from the environment once.
    keys: Vec<Option<String>>,
    health: Vec<Arc<Health>>,
    /// Round-robin position per route.
    counters: Vec<AtomicUsize>,
    seed: AtomicU64,
    metrics: Arc<Metrics>,
    /// Set when the server's drain time is over: open streams end with an error event.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Dispatcher {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Dispatcher, reqwest::Error> {
        // reqwest is built without a default TLS provider; install ring's once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clients = config
            .backends
            .iter()
            .map(|b| {
                reqwest::Client::builder()
                    .connect_timeout(b.connect_timeout)
                    // A redirect would send the conversation to a host the config never
                    // named (past its data classes): a 3xx is a failed attempt instead.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = config
            .backends
            .iter()
            .map(|b| {
                let name = b.api_key_env.as_deref()?;
                let key = std::env::var(name).ok().filter(|k| !k.is_empty());
                if key.is_none() {
                    tracing::warn!(backend = %b.name, variable = name, "the API key variable is not set; sending no key");
                }
                key
            })
            .collect();
        Ok(Dispatcher {
            health: config.backends.iter().map(|_| Arc::default()).collect(),
            closing: tokio::sync::watch::Sender::new(false),
            counters: config.routes.iter().map(|_| AtomicUsize::new(0)).collect(),
            seed: AtomicU64::new(0x853c_49e6_748f_ea9b ^ std::process::id() as u64),
            config,
            clients,
            keys,
            metrics,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn health(&self, backend: BackendId) -> &Arc<Health> {
        &self.health[backend.0]
    }

    /// Ends every stream still open with an error event (the server's drain time is over).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The route a request counts under in metrics (`-` for a backend named directly).
    fn route_label(&self, request: &ChatRequest) -> String {
        match request.destination {
            Destination::Route(r) => self.config.route(r).name.to_string(),
            Destination::Backend(_) => "-".into(),
        }
    }

    /// Adds an upstream `usage` object's tokens and their cost.
    fn record_usage(&self, route: &str, b: BackendId, usage: &serde_json::Value) {
        let backend = self.config.backend(b);
        let tokens = |key: &str| {
            usage
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
                // A counter never goes down: a negative count from a confused upstream is none.
                .max(0.0)
        };
        let (input, output) = (tokens("prompt_tokens"), tokens("completion_tokens"));
        let (route, name) = (route, backend.name.as_str());
        // Token counts are whole numbers (a fraction is dropped).
        self.metrics
            .tokens(route, name, TokenKind::Prompt, input as u64);
        self.metrics
            .tokens(route, name, TokenKind::Completion, output as u64);
        if let Some(cost) = backend.cost {
            let usd = (input * cost.input_per_mtok + output * cost.output_per_mtok) / 1e6;
            self.metrics.cost(route, name, usd);
        }
    }

    fn random(&self) -> u64 {
        // SplitMix64 over a shared counter: cheap, lock-free, good enough for jitter.
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn jitter(&self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn cooled(&self, b: BackendId) {
        self.metrics
            .cooled_down(self.config.backend(b).name.as_str());
    }

    /// Starts the active health checks (`GET {url}/models` every `health_check_interval_ms`)
    /// of the backends that ask for them. Each task stops when the dispatcher is dropped.
    pub fn start_health_checks(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        for (i, backend) in self.config.backends.iter().enumerate() {
            let Some(interval) = backend.health_check_interval else {
                continue;
            };
            let weak = Arc::downgrade(self);
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(dispatcher) = weak.upgrade() else {
                        return;
                    };
                    dispatcher.check_health(BackendId(i)).await;
                }
            });
        }
    }

    async fn check_health(&self, b: BackendId) {
        let backend = self.config.backend(b);
        let mut request = self.clients[b.0]
            .get(format!("{}/models", backend.url))
            .timeout(backend.first_byte_timeout);
        if let Some(key) = &self.keys[b.0] {
            request = request.bearer_auth(key);
        }
        let status = request.send().await.map(|r| r.status().as_u16());
        if let Ok(401 | 403) = status {
            tracing::error!(backend = %backend.name, api_key_env = backend.api_key_env.as_deref().unwrap_or("-"), "the backend refuses its credential; check the key in this variable");
        }
        let healthy = matches!(status, Ok(200..=299));
        let health = &self.health[b.0];
        if healthy {
            // Back in at once, without waiting for a probe request.
            let now = Instant::now();
            let was_out = health.availability(now) != Availability::Ready;
            health.check_passed(now);
            if was_out && health.availability(now) == Availability::Ready {
                tracing::info!(backend = %backend.name, "health check passed; backend back in");
            }
        } else if health.failed(Instant::now()) {
            tracing::warn!(backend = %backend.name, "health check failed; backend cooling down");
            self.cooled(b);
        }
    }

    /// Whether `b` may be tried now: not cooling down and not at its concurrency limit.
    fn usable(&self, b: BackendId, now: Instant) -> bool {
        let full = self
            .config
            .backend(b)
            .max_concurrent
            .is_some_and(|max| self.health[b.0].in_flight() >= max);
        !full && !matches!(self.health[b.0].availability(now), Availability::Cooling(_))
    }

    /// The targets to try, best first, with the data class enforced.
    fn plan(&self, request: &ChatRequest) -> Result<Vec<BackendId>, DispatchError> {
        let (targets, counter, strategy) = match request.destination {
            Destination::Backend(b) => (vec![b], None, crate::config::Strategy::Fallback),
            Destination::Route(r) => {
                let d = &self.config.route(r).dispatch;
                (d.targets.clone(), self.counters.get(r.index()), d.strategy)
            }
        };
        let class = request.data_class.as_ref();
        let eligible: Vec<BackendId> = targets
            .iter()
            .copied()
            .filter(|&t| {
                self.config
                    .backend(t)
                    .accepts(class.map(|c| c.class.as_str()))
            })
            .collect();
        if let (true, Some(class)) = (eligible.is_empty(), class) {
            let names: Vec<&str> = targets
                .iter()
                .map(|&t| self.config.backend(t).name.as_str())
                .collect();
            return Err(DispatchError::NotEligible {
                class: class.class.clone(),
                reason: format!(
                    "it was set by {}, and none of the targets ({}) accepts it in `data_classes`",
                    class.because,
                    names.join(", ")
                ),
            });
        }
        let fallback = AtomicUsize::new(0);
        Ok(balance::order(
            strategy,
            &eligible,
            &self.config.backends,
            &self.health,
            counter.unwrap_or(&fallback),
            self.random(),
        ))
    }

    /// Sends `request` and returns the answer to relay: a stream for a streaming client, else
    /// one body (a streamed upstream answer reassembled into one completion).
    pub async fn dispatch(
        self: &Arc<Self>,
        request: &ChatRequest,
    ) -> Result<Answer, DispatchError> {
        let plan = self.plan(request)?;
        let now = Instant::now();
        // Ready targets in plan order; a full one (max_concurrent) or one cooling down waits.
        let usable: Vec<BackendId> = plan
            .iter()
            .copied()
            .filter(|&b| self.usable(b, now))
            .collect();
        let order = if usable.is_empty() {
            // Every target is cooling down: wait for the first to recover, if soon enough.
            let soonest = plan
                .iter()
                .map(|&b| match self.health[b.0].availability(now) {
                    Availability::Cooling(until) => (until, b),
                    _ => (now, b),
                })
                .min_by_key(|(until, _)| *until);
            match soonest {
                Some((until, b)) if until.saturating_duration_since(now) <= MAX_RECOVERY_WAIT => {
                    tokio::time::sleep_until(until.into()).await;
                    vec![b]
                }
                Some((until, _)) => {
                    return Err(DispatchError::AllCooling {
                        retry_after: until.saturating_duration_since(now),
                    });
                }
                None => Vec::new(),
            }
        } else {
            usable
        };
        let answer = self.try_in_order(request, &order).await?;
        match answer.body {
            AnswerBody::Stream(pieces) if !request.is_stream() => {
                let (completion, backend) = collect(pieces).await?;
                let bytes =
                    serde_json::to_vec(&completion).map_err(|e| DispatchError::Exhausted {
                        attempts: vec![format!("cannot write the answer: {e}")],
                    })?;
                Ok(Answer {
                    status: 200,
                    content_type: Some("application/json".into()),
                    body: AnswerBody::Full(Bytes::from(bytes)),
                    backend,
                    attempts: answer.attempts,
                })
            }
            _ => Ok(answer),
        }
    }

    async fn try_in_order(
        self: &Arc<Self>,
        request: &ChatRequest,
        order: &[BackendId],
    ) -> Result<Answer, DispatchError> {
        let mut attempts = 0u32;
        let mut failures = Vec::new();
        for (i, &b) in order.iter().enumerate() {
            let health = &self.health[b.0];
            // A probe holds the slot until this target is done with, whatever happens.
            let _probe = match health.availability(Instant::now()) {
                Availability::Probe => match health.start_probe() {
                    Some(slot) => Some(slot),
                    None => continue,
                },
                _ => None,
            };
            let backend = self.config.backend(b);
            let mut tries_here = 0u32;
            loop {
                tries_here += 1;
                attempts += 1;
                let started = Instant::now();
                let outcome = match self.attempt(b, request, &order[i + 1..]).await {
                    Ok(mut answer) => {
                        self.metrics.attempted(backend.name.as_str(), "ok");
                        self.metrics
                            .upstream_latency(backend.name.as_str(), started.elapsed());
                        health.succeeded();
                        health.observe_latency(Instant::now(), started.elapsed());
                        let streaming = matches!(answer.body, AnswerBody::Stream(_));
                        tracing::info!(backend = %backend.name, attempts, status = answer.status, streaming, "answering");
                        answer.attempts = attempts;
                        return Ok(answer);
                    }
                    Err(outcome) => outcome,
                };
                self.metrics
                    .attempted(backend.name.as_str(), &outcome.label());
                let verdict = judge(&outcome, tries_here, backend, self.jitter());
                tracing::warn!(backend = %backend.name, attempt = tries_here, outcome = %outcome.describe(), ?verdict, "attempt failed");
                match verdict {
                    Verdict::Retry(pause) => tokio::time::sleep(pause).await,
                    Verdict::ToClient => {
                        if let Outcome::Status { status, body, .. } = outcome {
                            return Ok(Answer {
                                status,
                                content_type: Some("application/json".into()),
                                body: AnswerBody::Full(self.client_error_body(status, &body)),
                                backend: b,
                                attempts,
                            });
                        }
                        break;
                    }
                    Verdict::FallOver(cooldown) => {
                        self.cool_down(b, cooldown);
                        self.metrics
                            .fell_back(&self.route_label(request), backend.name.as_str());
                        failures.push(format!("{}: {}", backend.name, outcome.describe()));
                        break;
                    }
                }
            }
        }
        if attempts == 0 {
            // Every target was taken by another request's probe: nothing failed, ask the
            // client to come back shortly.
            return Err(DispatchError::AllCooling {
                retry_after: Duration::from_secs(1),
            });
        }
        Err(DispatchError::Exhausted { attempts: failures })
    }

    /// Applies a failed attempt's effect on the backend's health.
    fn cool_down(&self, b: BackendId, cooldown: Cooldown) {
        let (backend, health, now) = (self.config.backend(b), &self.health[b.0], Instant::now());
        match cooldown {
            Cooldown::None => {}
            Cooldown::Failure => {
                if health.failed(now) {
                    tracing::warn!(backend = %backend.name, "backend cooling down");
                    self.cooled(b);
                }
            }
            Cooldown::RateLimited(wait) => {
                // Jittered, so a herd of clients does not return at once.
                let wait = wait.map(|w| w.mul_f64(1.0 + 0.2 * self.jitter()));
                health.rate_limited(now, wait);
                self.cooled(b);
            }
            Cooldown::Credential => {
                tracing::error!(
                    backend = %backend.name,
                    api_key_env = backend.api_key_env.as_deref().unwrap_or("-"),
                    cooldown_s = health::CREDENTIAL_COOLDOWN.as_secs(),
                    "the backend refused its own credential (HTTP 401/403); check the key in this variable"
                );
                health.credential_refused(now);
                self.cooled(b);
            }
        }
    }

    /// Records a failed attempt to open a stream's continuation (no retry there).
    fn continuation_failed(&self, b: BackendId, outcome: &Outcome) {
        let backend = self.config.backend(b);
        if let Verdict::FallOver(cooldown) = judge(outcome, u32::MAX, backend, self.jitter()) {
            self.cool_down(b, cooldown);
        }
    }
}

/// Folds a relay's pieces into one completion, or the failure that ended it.
async fn collect(
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<(Value, BackendId), DispatchError> {
    let mut assembler = assemble::Assembler::default();
    while let Some(piece) = pieces.recv().await {
        match piece {
            Piece::Chunk(chunk) => assembler.add(&chunk),
            Piece::Done { backend } => return Ok((assembler.finish(), backend)),
            Piece::Failed(failure) => {
                return Err(DispatchError::Exhausted {
                    attempts: vec![failure],
                });
            }
        }
    }
    Err(DispatchError::Exhausted {
        attempts: vec!["the answer ended without finishing".into()],
    })
}
