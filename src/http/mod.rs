//! The HTTP sidecar: `app(state)` builds the axum router, so tests drive it with `oneshot`
//! and no socket. The state becomes ready once the model and the index are loaded.

mod admin;
mod cached;
mod chat;
pub mod classify;
mod conversation;
pub mod decisions;
mod experiments;
mod health;
mod inspect;
mod json;
pub mod live;
mod models;
pub mod openapi;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod shadow;
mod tenant;
mod ui;
mod usage;
pub mod watch;
mod whatif;

pub use classify::{ClassifyRequest, Message};
pub use live::{Engine, Live, Origin};
pub use reload::{ReloadError, Reloaded, Reloader, Source};

use crate::config::Config;
use crate::dispatch::{Dispatcher, Streams};
use crate::embed::EmbedWorker;
use crate::error::{ApiError, ErrorKind};
use crate::route::Router as RouteIndex;
use crate::telemetry::Metrics;
use crate::telemetry::decisions::{DEFAULT_QUEUE, DEFAULT_RECENT, DecisionLog};
use arc_swap::ArcSwap;
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

/// How long a request body may take to arrive, unless configured otherwise.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct AppState {
    /// The config in service and what was built from it; a reload swaps it whole.
    live: Arc<ArcSwap<Live>>,
    reloader: Arc<Reloader>,
    /// The server's hold on relayed streams, across every config's dispatcher.
    streams: Streams,
    metrics: Arc<Metrics>,
    /// The decision log (`--decision-log`) and the recent decisions (`log_prompts`).
    decisions: Arc<DecisionLog>,
    /// The candidate config of `serve --shadow`, once the model is loaded.
    shadow: Arc<OnceLock<shadow::Shadow>>,
    /// One what-if at a time.
    whatif: Arc<whatif::Turn>,
    body_limit: usize,
    body_timeout: Duration,
}

impl AppState {
    /// A state that answers `/healthz` and `/routes` at once and the rest after `set_ready`.
    pub fn new(config: Arc<Config>, body_limit: usize) -> AppState {
        let metrics = Arc::new(Metrics::default());
        let streams = Streams::default();
        let origin = Origin::new(None, config.source.as_bytes(), 1);
        let decisions = DecisionLog::new(metrics.clone(), config.log_prompts, DEFAULT_RECENT);
        let live = match Live::assemble(config.clone(), origin.clone(), &metrics, &streams, None) {
            Ok(live) => live,
            Err(err) => {
                tracing::error!(error = %err, "cannot start the dispatcher; proxying is off");
                Live {
                    config,
                    engine: None,
                    dispatcher: None,
                    quota: None,
                    experiments: Arc::new(crate::experiment::store::Store::Memory(
                        Default::default(),
                    )),
                    cache: None,
                    origin,
                }
            }
        };
        AppState {
            live: Arc::new(ArcSwap::from_pointee(live)),
            reloader: Arc::default(),
            streams,
            metrics,
            decisions: Arc::new(decisions),
            shadow: Arc::default(),
            whatif: Arc::default(),
            body_limit,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// The service reloads from `source` (its config file, whose bytes `text` are the
    /// config in service now).
    pub fn with_source(mut self, source: Source, text: &[u8]) -> AppState {
        let current = self.live();
        let origin = Origin::new(Some(&source.path), text, 1);
        self.live.store(Arc::new(Live {
            origin,
            ..Live::clone(&current)
        }));
        self.reloader = Arc::new(Reloader::new(source));
        self
    }

    /// A request body must arrive whole within `timeout` (else 408).
    pub fn with_body_timeout(mut self, timeout: Duration) -> AppState {
        self.body_timeout = timeout;
        self
    }

    /// The config in service now, and what was built from it: load it once per request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The dispatcher in service, when the config defines backends.
    pub fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        self.live.load().dispatcher.clone()
    }

    /// The server's hold on relayed streams (the drain's end, the client stall time).
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Decision log lines go to `out` (a file, or standard output), written off the
    /// requests' path.
    pub fn with_decision_log(
        mut self,
        out: Box<dyn std::io::Write + Send>,
    ) -> std::io::Result<AppState> {
        let log = DecisionLog::new(
            self.metrics.clone(),
            self.live().config.log_prompts,
            DEFAULT_RECENT,
        );
        self.decisions = Arc::new(log.writing_to(out, DEFAULT_QUEUE)?);
        Ok(self)
    }

    /// The decision log (to flush it at shutdown).
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// A state that is ready from the start.
    pub fn ready(router: Arc<RouteIndex>, worker: EmbedWorker, body_limit: usize) -> AppState {
        let state = AppState::new(router.config().clone(), body_limit);
        state.set_ready(Engine { router, worker });
        state
    }

    /// Marks the service ready; a second call is ignored.
    pub fn set_ready(&self, engine: Engine) {
        self.live.rcu(|current| {
            let mut next = Live::clone(current);
            if next.engine.is_none() {
                next.engine = Some(engine.clone());
            }
            next
        });
    }

    /// Compares every prompt classified from now on with `shadow`'s candidate config.
    pub fn set_shadow(&self, shadow: shadow::Shadow) {
        let _ = self.shadow.set(shadow);
    }

    /// Hands a classified prompt to the shadow config, if there is one (off the request's
    /// path: it only queues).
    pub(super) fn shadow_observe(
        &self,
        text: &str,
        embedding: Arc<crate::embed::Embedding>,
        classification: &crate::route::Classification,
        config: &Config,
    ) {
        if let Some(shadow) = self.shadow.get() {
            let live = shadow::Side::of(classification, config);
            shadow.observe(shadow::Observed::new(text, embedding, live));
        }
    }

    pub fn is_ready(&self) -> bool {
        self.live.load().engine.is_some()
    }
}

/// The endpoints. Bodies are read by `json.rs` within `--max-body-bytes` (at least
/// `CHAT_BODY_LIMIT` for chat completions) and the body timeout.
pub fn app(state: AppState) -> Router {
    // What lists routes and backends needs a key when keys are required.
    let listings = Router::new()
        .route("/v1/models", get(models::models))
        .route("/v1/models/{*id}", get(models::model))
        .route("/routes", get(health::routes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenant::require_key,
        ));
    let admin = Router::new()
        .route("/admin/config", get(admin::config))
        .route("/admin/reload", post(admin::reload))
        .route("/admin/decisions", get(decisions::recent))
        .route("/admin/whatif", post(whatif::whatif))
        .route("/admin/shadow", get(admin::shadow))
        .route("/admin/routes", get(inspect::routes))
        .route("/admin/backends", get(inspect::backends))
        .route("/admin/experiments", get(experiments::report))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    Router::new()
        .merge(listings)
        .merge(admin)
        .route("/classify", post(classify::classify))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/feedback", post(experiments::feedback))
        .route("/v1/usage", get(usage::usage))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi))
        .route("/", get(ui::page))
        .route("/ui", get(ui::page_at_ui))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(request_id::RequestIdLayer)
        .layer(TraceLayer::new_for_http())
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "no such endpoint; see POST /classify, POST /v1/chat/completions, POST /v1/feedback, GET /v1/models, GET /v1/models/{id}, GET /v1/usage, /metrics, /routes, /healthz, /readyz, GET /admin/config, POST /admin/reload, GET /admin/decisions, POST /admin/whatif, GET /admin/shadow, GET /admin/routes, GET /admin/backends, GET /admin/experiments, GET /openapi.json, the page at GET /",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}
