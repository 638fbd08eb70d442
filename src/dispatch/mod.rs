//! Dispatch: sends a chat request to its route's backends, in the order the route's
//! strategy gives, skipping backends in cooldown and any backend not allowed the request's
//! data class, retrying and falling over by the rules in `verdict.rs`, and relaying the
//! answer. Requests go upstream as streams (a non-streaming one too, reassembled by
//! `assemble.rs`, unless the backend says `upstream_stream: false`), so first-byte and
//! stall detection and mid-answer continuation (`relay.rs`) work for every answer.
//!
//! This file is the `Dispatcher` facade and the loop that tries a request's targets in
//! order. The targets and their order are `plan.rs` (with `balance.rs`); one upstream call
//! and what came of it, and the backends' clients and keys, are `attempt.rs`; each
//! backend's breaker, cooldowns and active checks are `health.rs`.

pub mod assemble;
mod attempt;
mod balance;
mod body;
pub mod classes;
mod escalate;
pub mod health;
mod plan;
pub mod relay;
mod shared_health;
mod sse;
pub mod verdict;

use crate::config::{BackendId, Config, RouteId};
use crate::telemetry::decisions::PendingDecision;
use crate::telemetry::{Metrics, TokenKind};
use attempt::Upstreams;
use balance::Balancer;
use bytes::Bytes;
use health::{Board, Health};
use relay::Piece;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verdict::{Cooldown, Outcome, Verdict, judge};

/// Client bodies larger than this are serialized for upstream on a blocking thread, so a
/// huge conversation never stalls the async runtime.
const BLOCKING_SERIALIZE_BYTES: usize = 256 * 1024;
/// Most bytes read of an upstream error body or a non-streamed answer.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// More tokens than any answer carries: a larger `usage` count is an upstream's mistake.
const MAX_TOKENS_PER_ANSWER: f64 = 1e9;

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
    /// Its prompt's tokens and its answer's cap.
    pub demand: crate::quota::demand::Demand,
    /// Its hold on the caller's limits and budgets, told the usage of its answer.
    pub ticket: Option<Arc<crate::quota::Ticket>>,
    /// Its decision log line, told the attempts, the backend that answered and the usage;
    /// written when the last holder (a stream's relay) lets go.
    pub decision: Option<Arc<PendingDecision>>,
    /// Who sent it (for `strategy: sticky`).
    pub client: crate::experiment::Client,
    /// The experiment variant it was assigned: tried first, the rest of the targets after.
    pub variant: Option<BackendId>,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.body.get("stream").and_then(|s| s.as_bool()) == Some(true)
    }

    /// Tells the decision log line, if there is one.
    fn note(&self, tell: impl FnOnce(&PendingDecision)) {
        if let Some(decision) = &self.decision {
            tell(decision);
        }
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
    /// It breaks its request's contract (escalation ran out): relayed, never cached.
    pub broken: bool,
}

pub enum AnswerBody {
    Full(Bytes),
    /// A streamed answer, relayed as it arrives (see `relay::frame`).
    Stream(tokio::sync::mpsc::Receiver<Piece>),
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "the request is about {tokens} tokens (prompt and max_tokens), more than any target's context window holds (the largest is {largest})"
    )]
    TooLong { tokens: u64, largest: u64 },
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
    /// The backends' HTTP clients and keys.
    upstreams: Upstreams,
    /// The backends' breakers, cooldowns and load.
    health: Board,
    /// The routes' round-robin positions and the random numbers for balancing and jitter.
    balancer: Balancer,
    metrics: Arc<Metrics>,
    /// Limits, budgets and the backends' own quotas, when any is configured.
    quota: Option<Arc<crate::quota::Quota>>,
    /// The server's hold on streams, shared by the dispatchers of every config loaded.
    streams: Streams,
    /// Set when a reload replaced this dispatcher: its background tasks stop (the requests
    /// it carries finish on it).
    retired: tokio::sync::watch::Sender<bool>,
}

/// What the server holds over every stream relayed, whichever config's dispatcher relays
/// it: the end of the drain time, and how long a client may leave a piece unread.
#[derive(Clone)]
pub struct Streams {
    /// Set when the server's drain time is over: open streams end with an error event.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// How long a client may leave a relayed piece unread (ms) before it counts as gone.
    client_stall_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            client_stall_ms: Arc::new(std::sync::atomic::AtomicU64::new(
                relay::client::DEFAULT_CLIENT_STALL.as_millis() as u64,
            )),
        }
    }
}

impl Streams {
    /// A client that leaves a relayed piece unread this long is taken to have gone.
    pub fn set_client_stall(&self, stall: Duration) {
        self.client_stall_ms.store(
            stall.as_millis().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn client_stall(&self) -> Duration {
        Duration::from_millis(
            self.client_stall_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Ends every stream still open with an error event (the server's drain time is over).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// What the attempts on a request's targets came to so far.
#[derive(Default)]
struct Tally {
    /// Attempts made, on every target.
    attempts: u32,
    /// `backend: outcome` per target given up on.
    failures: Vec<String>,
    /// The soonest a target skipped at its own quota may be called.
    paced: Option<Duration>,
}

impl Dispatcher {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        quota: Option<Arc<crate::quota::Quota>>,
        streams: Streams,
    ) -> Result<Dispatcher, reqwest::Error> {
        Ok(Dispatcher {
            quota,
            upstreams: Upstreams::new(&config.backends)?,
            health: Board::new(config.backends.len()),
            balancer: Balancer::new(config.routes.len()),
            streams,
            retired: tokio::sync::watch::Sender::new(false),
            config,
            metrics,
        })
    }

    /// The dispatcher for a reloaded `config`, beside `previous`: each backend that keeps
    /// its name keeps its breaker, cooldown, load and latency (requests still on `previous`
    /// update the same figures).
    pub fn succeed(
        previous: &Dispatcher,
        config: Arc<Config>,
        quota: Option<Arc<crate::quota::Quota>>,
    ) -> Result<Dispatcher, reqwest::Error> {
        let mut next = Dispatcher::new(
            config,
            previous.metrics.clone(),
            quota,
            previous.streams.clone(),
        )?;
        next.health = previous.health.carried(&previous.config, &next.config);
        Ok(next)
    }

    /// Stops this dispatcher's background tasks (health checks, the shared health
    /// channel): a reload replaced it.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Resolves once `retire` is called.
    fn until_retired(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut retired = self.retired.subscribe();
        async move {
            let _ = retired.wait_for(|r| *r).await;
        }
    }

    /// The server's hold on streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn health(&self, backend: BackendId) -> &Arc<Health> {
        self.health.get(backend)
    }

    /// A client that leaves a relayed piece unread this long is taken to have gone.
    pub fn set_client_stall(&self, stall: Duration) {
        self.streams.set_client_stall(stall);
    }

    fn client_stall(&self) -> Duration {
        self.streams.client_stall()
    }

    /// Ends every stream still open with an error event (the server's drain time is over).
    pub fn close_streams(&self) {
        self.streams.close();
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts the active health checks (`GET {url}/models` every `health_check_interval_ms`)
    /// of the backends that ask for them. Each task stops when the dispatcher is dropped.
    pub fn start_health_checks(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        for b in self.config.backend_ids() {
            let Some(interval) = self.config.backend(b).health_check_interval else {
                continue;
            };
            let weak = Arc::downgrade(self);
            let retired = self.until_retired();
            runtime.spawn(async move {
                let checks = async move {
                    let mut ticks = tokio::time::interval(interval);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        let Some(dispatcher) = weak.upgrade() else {
                            return;
                        };
                        dispatcher.check_health(b).await;
                    }
                };
                tokio::select! {
                    () = checks => {}
                    () = retired => {}
                }
            });
        }
    }

    async fn check_health(&self, b: BackendId) {
        let backend = self.config.backend(b);
        let status = self.upstreams.models_status(b, backend).await;
        if self.health.checked(backend, b, status) {
            self.cooled(b);
        }
    }

    /// Sends `request` and returns the answer to relay: a stream for a streaming client, else
    /// one body (a streamed upstream answer reassembled into one completion).
    pub async fn dispatch(
        self: &Arc<Self>,
        request: &ChatRequest,
    ) -> Result<Answer, DispatchError> {
        let order = plan::targets(request, &self.config, &self.health, &self.balancer).await?;
        let answer = self.try_in_order(request, &order).await?;
        let answer = match escalate::Contract::for_request(request, &self.config).await {
            Some(contract) => self.escalate(request, &order, answer, &contract).await,
            None => answer,
        };
        match answer.body {
            AnswerBody::Stream(pieces) if !request.is_stream() => {
                let broken = answer.broken;
                let whole = assemble::reassembled(pieces, answer.attempts).await?;
                Ok(Answer { broken, ..whole })
            }
            _ => Ok(answer),
        }
    }

    /// Checks `answer` against `contract`; while it breaks it, moves the request on to the
    /// targets after the one that answered (at most `max_escalations` times). The last
    /// answer is relayed whatever it holds: a broken answer is better than none.
    async fn escalate(
        self: &Arc<Self>,
        request: &ChatRequest,
        order: &[BackendId],
        answer: Answer,
        contract: &escalate::Contract,
    ) -> Answer {
        let mut attempts = answer.attempts;
        let mut held = escalate::Held::hold(answer).await;
        let mut escalations = 0;
        let broken = loop {
            if held.status() != 200 {
                break false;
            }
            let reason = match held.completion.clone() {
                Some(completion) => contract.broken_off_runtime(completion).await,
                None => None,
            };
            let Some(reason) = reason else {
                break false;
            };
            if escalations == contract.max_escalations {
                break true;
            }
            escalations += 1;
            let from = held.backend();
            let rest = order
                .iter()
                .position(|&b| b == from)
                .map_or(&order[order.len().min(1)..], |i| &order[i + 1..]);
            let Some(&to) = rest.first() else {
                break true;
            };
            let route = self.route_label(request);
            let (from_name, to_name) = (
                &self.config.backend(from).name,
                &self.config.backend(to).name,
            );
            tracing::warn!(%route, from = %from_name, to = %to_name, %reason, "answer broke its contract; escalating");
            self.metrics
                .escalated(&route, from_name, to_name, "invalid_json_schema");
            match self.try_in_order(request, rest).await {
                Ok(next) => {
                    attempts += next.attempts;
                    held = escalate::Held::hold(next).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "no target after the escalation answered; relaying the broken answer");
                    break true;
                }
            }
        };
        held.release(attempts, broken)
    }

    /// Tries `order`'s targets one after the other until one answers.
    async fn try_in_order(
        self: &Arc<Self>,
        request: &ChatRequest,
        order: &[BackendId],
    ) -> Result<Answer, DispatchError> {
        let mut tally = Tally::default();
        for (i, &b) in order.iter().enumerate() {
            // A probe holds its slot until this target is done with, whatever happens.
            let Some(admission) = self.health.get(b).admit(Instant::now()) else {
                continue;
            };
            // One replica probes a backend at a time.
            if admission.is_probe() && !self.claim_probe(b).await {
                continue;
            }
            if let Err(wait) = self.pace(b, request).await {
                // At its provider's quota: skipped like a cooling target, never called.
                tally.paced = Some(tally.paced.map_or(wait, |w| w.min(wait)));
                continue;
            }
            let rest = &order[i + 1..];
            let answer = self.try_target(b, request, rest, &mut tally).await;
            if admission.is_probe() {
                self.release_probe(b);
                if answer.as_ref().is_some_and(|a| a.status < 400) {
                    self.share_recovery(b);
                }
            }
            if let Some(answer) = answer {
                return Ok(answer);
            }
        }
        if tally.attempts == 0 {
            // Every target was at its quota or taken by another request's probe: nothing
            // failed, ask the client to come back shortly.
            return Err(DispatchError::AllCooling {
                retry_after: tally.paced.unwrap_or(Duration::from_secs(1)),
            });
        }
        Err(DispatchError::Exhausted {
            attempts: tally.failures,
        })
    }

    /// Attempts on target `b`, retried as `verdict::judge` rules: the answer to relay (an
    /// upstream's error meant for the client included), or `None` to move on to `rest`.
    async fn try_target(
        self: &Arc<Self>,
        b: BackendId,
        request: &ChatRequest,
        rest: &[BackendId],
        tally: &mut Tally,
    ) -> Option<Answer> {
        let backend = self.config.backend(b);
        let mut tries_here = 0u32;
        loop {
            tries_here += 1;
            tally.attempts += 1;
            request.note(PendingDecision::attempted);
            let started = Instant::now();
            self.sending(request, b);
            let outcome = match self.attempt(b, request, rest).await {
                Ok(answer) => {
                    request.note(|d| d.answered_by(&backend.name));
                    return Some(self.answered(b, answer, started, tally.attempts));
                }
                Err(outcome) => outcome,
            };
            if let Some(ticket) = &request.ticket {
                ticket.unsent();
            }
            self.metrics.attempted(&backend.name, &outcome.label());
            let verdict = judge(&outcome, tries_here, backend, self.balancer.jitter());
            tracing::warn!(backend = %backend.name, attempt = tries_here, outcome = %outcome.describe(), ?verdict, "attempt failed");
            match verdict {
                Verdict::Retry(pause) => tokio::time::sleep(pause).await,
                Verdict::ToClient => {
                    let answer = self.for_client(b, outcome, tally.attempts);
                    if answer.is_some() {
                        request.note(|d| d.answered_by(&backend.name));
                    }
                    return answer;
                }
                Verdict::FallOver(cooldown) => {
                    self.cool_down(b, cooldown);
                    self.metrics
                        .fell_back(&self.route_label(request), &backend.name);
                    let failure = format!("{}: {}", backend.name, outcome.describe());
                    tally.failures.push(failure);
                    return None;
                }
            }
        }
    }

    /// Records a successful attempt (started at `started`) and hands its answer on.
    fn answered(
        &self,
        b: BackendId,
        mut answer: Answer,
        started: Instant,
        attempts: u32,
    ) -> Answer {
        let (backend, health) = (self.config.backend(b), self.health.get(b));
        self.metrics.attempted(&backend.name, "ok");
        self.metrics
            .upstream_latency(&backend.name, started.elapsed());
        health.succeeded();
        health.observe_latency(Instant::now(), started.elapsed());
        let streaming = matches!(answer.body, AnswerBody::Stream(_));
        tracing::info!(backend = %backend.name, attempts, status = answer.status, streaming, "answering");
        answer.attempts = attempts;
        answer
    }

    /// An upstream's error status relayed to the client as it is (its body rebuilt without
    /// any key); `None` for an outcome without a status.
    fn for_client(&self, b: BackendId, outcome: Outcome, attempts: u32) -> Option<Answer> {
        let Outcome::Status { status, body, .. } = outcome else {
            return None;
        };
        Some(Answer {
            status,
            content_type: Some("application/json".into()),
            body: AnswerBody::Full(self.upstreams.client_error_body(status, &body)),
            backend: b,
            attempts,
            broken: false,
        })
    }

    /// Takes a call to `b` from its own quota, if it has one.
    async fn pace(&self, b: BackendId, request: &ChatRequest) -> Result<(), Duration> {
        let backend = self.config.backend(b);
        match &self.quota {
            Some(quota) if !backend.limits.is_empty() => {
                quota
                    .pace(backend, request.demand.max_tokens_on(backend))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Applies a failed attempt's effect on the backend's health.
    fn cool_down(&self, b: BackendId, cooldown: Cooldown) {
        let backend = self.config.backend(b);
        if self
            .health
            .cool_down(backend, b, cooldown, || self.balancer.jitter())
        {
            self.cooled(b);
            self.share_cooldown(b, cooldown);
        }
    }

    /// Records a failed attempt to open a stream's continuation (no retry there).
    fn continuation_failed(&self, b: BackendId, outcome: &Outcome) {
        let backend = self.config.backend(b);
        if let Verdict::FallOver(cooldown) =
            judge(outcome, u32::MAX, backend, self.balancer.jitter())
        {
            self.cool_down(b, cooldown);
        }
    }

    /// Counts a backend entering a cooldown.
    fn cooled(&self, b: BackendId) {
        self.metrics.cooled_down(&self.config.backend(b).name);
    }

    /// The route a request counts under in metrics (`-` for a backend named directly).
    fn route_label(&self, request: &ChatRequest) -> String {
        match request.destination {
            Destination::Route(r) => self.config.route(r).name.to_string(),
            Destination::Backend(_) => "-".into(),
        }
    }

    /// Charges a request whose answer reported no usage for what it took: its prompt and a
    /// token per four bytes of the `relayed` text, at `b`'s price (nothing if usage came).
    fn charge_relayed(&self, request: &ChatRequest, b: BackendId, relayed: usize) {
        if let Some(ticket) = &request.ticket {
            let (usd, tokens) = self.estimate(request, b, relayed);
            ticket.unreported(usd, tokens);
        }
    }

    /// Tells the request's ticket that its prompt is going to `b`: a client that leaves
    /// before any answer (or an answer without usage) still pays for it.
    fn sending(&self, request: &ChatRequest, b: BackendId) {
        if let Some(ticket) = &request.ticket {
            let (usd, tokens) = self.estimate(request, b, 0);
            ticket.sent(usd, tokens);
        }
    }

    /// The USD and tokens of the request's prompt and `relayed` bytes of answer on `b`.
    fn estimate(&self, request: &ChatRequest, b: BackendId, relayed: usize) -> (f64, u64) {
        let backend = self.config.backend(b);
        let output = crate::embed::count::by_bytes(relayed);
        let prompt = request.demand.prompt_tokens;
        let usd = backend.cost.map_or(0.0, |c| {
            (prompt as f64 * c.input_per_mtok + output as f64 * c.output_per_mtok) / 1e6
        });
        (usd, prompt.saturating_add(output))
    }

    /// Adds an upstream `usage` object's tokens and their cost (counts past
    /// [`MAX_TOKENS_PER_ANSWER`] are taken as none).
    fn record_usage(&self, request: &ChatRequest, b: BackendId, usage: &Value) {
        let route = &self.route_label(request);
        let backend = self.config.backend(b);
        let tokens = |key: &str| {
            usage
                .get(key)
                .and_then(Value::as_f64)
                // A counter never goes down, and one absurd answer must not saturate it: a
                // count a confused upstream makes negative, non-finite or past any real
                // answer's size is none.
                .filter(|n| (0.0..=MAX_TOKENS_PER_ANSWER).contains(n))
                .unwrap_or(0.0)
        };
        let (input, output) = (tokens("prompt_tokens"), tokens("completion_tokens"));
        let name = backend.name.as_str();
        // Token counts are whole numbers (a fraction is dropped).
        self.metrics
            .tokens(route, name, TokenKind::Prompt, input as u64);
        self.metrics
            .tokens(route, name, TokenKind::Completion, output as u64);
        let usd = backend.cost.map_or(0.0, |cost| {
            (input * cost.input_per_mtok + output * cost.output_per_mtok) / 1e6
        });
        if backend.cost.is_some() {
            self.metrics.cost(route, name, usd);
        }
        request.note(|d| d.used(input as u64, output as u64, backend.cost.map(|_| usd)));
        if let Some(ticket) = &request.ticket {
            ticket.used(usd, (input + output) as u64);
        }
    }
}
