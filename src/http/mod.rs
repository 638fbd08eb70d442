//! The HTTP sidecar: `app(state)` builds the axum router, so tests drive it with `oneshot`
//! and no socket. The state becomes ready once the model and the index are loaded.

mod chat;
pub mod classify;
mod conversation;
pub mod decisions;
mod health;
mod json;
pub mod request_id;
pub mod server;
mod tenant;
mod usage;

pub use classify::{ClassifyRequest, Message};

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::embed::EmbedWorker;
use crate::error::{ApiError, ErrorKind};
use crate::route::Router as RouteIndex;
use crate::telemetry::Metrics;
use crate::telemetry::decisions::{DEFAULT_QUEUE, DEFAULT_RECENT, DecisionLog};
use axum::Router;
use axum::routing::{get, post};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tower_http::trace::TraceLayer;

/// Request bodies larger than this are refused with 413 unless configured otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// `/v1/chat/completions` carries whole conversations (and images): its limit is at least
/// this, whatever `--max-body-bytes` says for the rest.
pub const CHAT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What a handler needs once the service is ready.
pub struct Engine {
    pub router: Arc<RouteIndex>,
    pub worker: EmbedWorker,
}

/// How long a request body may take to arrive, unless configured otherwise.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    engine: Arc<OnceLock<Engine>>,
    /// Present when the config defines backends.
    dispatcher: Option<Arc<Dispatcher>>,
    /// Present when the config sets client or user limits.
    quota: Option<Arc<crate::quota::Quota>>,
    metrics: Arc<Metrics>,
    /// The decision log (`--decision-log`) and the recent decisions (`log_prompts`).
    decisions: Arc<DecisionLog>,
    body_limit: usize,
    body_timeout: Duration,
}

impl AppState {
    /// A state that answers `/healthz` and `/routes` at once and the rest after `set_ready`.
    pub fn new(config: Arc<Config>, body_limit: usize) -> AppState {
        let metrics = Arc::new(Metrics::default());
        let quota = if crate::quota::Quota::needed(&config) {
            match crate::quota::Quota::new(config.clone(), metrics.clone()) {
                Ok(quota) => Some(Arc::new(quota)),
                Err(err) => {
                    tracing::error!(error = %err, "cannot set up the shared limits; limits are counted in this process");
                    let mut local = (*config).clone();
                    local.state.redis = None;
                    crate::quota::Quota::new(Arc::new(local), metrics.clone())
                        .ok()
                        .map(Arc::new)
                }
            }
        } else {
            None
        };
        if let (Some(shared), Ok(runtime)) = (
            quota.as_ref().filter(|q| q.shared().is_some()),
            tokio::runtime::Handle::try_current(),
        ) {
            // Connect now, so the first request does not pay for it.
            let quota = shared.clone();
            runtime.spawn(async move { quota.warm_up().await });
        }
        let dispatcher = if config.backends.is_empty() {
            None
        } else {
            match Dispatcher::new(config.clone(), metrics.clone(), quota.clone()) {
                Ok(d) => {
                    let d = Arc::new(d);
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => {
                            d.start_health_checks(&runtime);
                            d.start_listening(&runtime);
                        }
                        Err(_) => tracing::warn!("no async runtime: active health checks are off"),
                    }
                    Some(d)
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the HTTP client for the backends");
                    None
                }
            }
        };
        let decisions = DecisionLog::new(metrics.clone(), config.log_prompts, DEFAULT_RECENT);
        AppState {
            quota,
            config,
            engine: Arc::new(OnceLock::new()),
            dispatcher,
            metrics,
            decisions: Arc::new(decisions),
            body_limit,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// A request body must arrive whole within `timeout` (else 408).
    pub fn with_body_timeout(mut self, timeout: Duration) -> AppState {
        self.body_timeout = timeout;
        self
    }

    /// Decision log lines go to `out` (a file, or standard output), written off the
    /// requests' path.
    pub fn with_decision_log(
        mut self,
        out: Box<dyn std::io::Write + Send>,
    ) -> std::io::Result<AppState> {
        let log = DecisionLog::new(
            self.metrics.clone(),
            self.config.log_prompts,
            DEFAULT_RECENT,
        );
        self.decisions = Arc::new(log.writing_to(out, DEFAULT_QUEUE)?);
        Ok(self)
    }

    /// The decision log (to flush it at shutdown).
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// The dispatcher, when the config defines backends (for shutdown).
    pub fn dispatcher(&self) -> Option<&Arc<Dispatcher>> {
        self.dispatcher.as_ref()
    }

    /// A state that is ready from the start.
    pub fn ready(router: Arc<RouteIndex>, worker: EmbedWorker, body_limit: usize) -> AppState {
        let state = AppState::new(router.config().clone(), body_limit);
        state.set_ready(Engine { router, worker });
        state
    }

    /// Marks the service ready; a second call is ignored.
    pub fn set_ready(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    pub fn is_ready(&self) -> bool {
        self.engine.get().is_some()
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(not_ready)
    }
}

fn not_ready() -> ApiError {
    ApiError::new(
        ErrorKind::NotReady,
        "the model and route index are still loading; retry shortly",
    )
}

/// The endpoints. Bodies are read by `json.rs` within `--max-body-bytes` (at least
/// `CHAT_BODY_LIMIT` for chat completions) and the body timeout.
pub fn app(state: AppState) -> Router {
    // What lists routes and backends needs a key when keys are required.
    let listings = Router::new()
        .route("/v1/models", get(chat::models))
        .route("/v1/models/{*id}", get(chat::model))
        .route("/routes", get(health::routes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenant::require_key,
        ));
    Router::new()
        .merge(listings)
        .route("/classify", post(classify::classify))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/usage", get(usage::usage))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/admin/decisions", get(decisions::recent))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(request_id::RequestIdLayer)
        .layer(TraceLayer::new_for_http())
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "no such endpoint; see POST /classify, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /v1/usage, GET /admin/decisions, /metrics, /routes, /healthz, /readyz",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}
