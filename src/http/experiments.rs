//! Experiments on the proxy: a request whose route runs an `experiment:` is assigned its
//! variant (tried first; `x-semroute-variant` on the answer) and counted to it when it is
//! over, whichever target answered; `POST /v1/feedback` scores a request afterwards, and
//! `GET /admin/experiments` reports per variant and whether the variants differ.

use super::json::read_json_body;
use super::tenant;
use super::{AppState, Live};
use crate::config::{BackendId, Config, RouteId};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::experiment::report::{self, ExperimentsReport};
use crate::experiment::store::{Assigned, FeedbackError, Observation, slot};
use crate::experiment::{self, Client};
use crate::telemetry::decisions::{Decision, PendingDecision};
use axum::Json;
use axum::extract::{Request, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The answer's header naming the variant a request was assigned.
pub const VARIANT_HEADER: &str = "x-semroute-variant";
/// The largest feedback body read.
const FEEDBACK_BODY_LIMIT: usize = 16 * 1024;
/// The largest score taken, either way: room for thumbs, stars and 0-100 ratings, while
/// one score cannot swamp a variant's mean.
const MAX_SCORE: f64 = 100.0;

/// Who sent `request`: its `user` (body, else header) and the connection's peer.
pub fn client_of(user: Option<String>, request: &Request) -> Client {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    Client {
        user: user.filter(|u| !u.is_empty()),
        ip,
    }
}

/// The request's variant when `route` runs an experiment: remembered for its feedback
/// (under the client `key` that sent it) and counted to it when the request is over
/// (through `decision`, which the state makes for every request while a config has
/// experiments). The store not answering loses the feedback, never the request.
pub async fn assign(
    live: &Live,
    route: Option<RouteId>,
    client: &Client,
    key: Option<&str>,
    decision: Option<&Arc<PendingDecision>>,
) -> Option<BackendId> {
    let config = &live.config;
    let experiment = config.route(route?).dispatch.experiment.as_ref()?;
    let variant = experiment::assign(experiment, client, random)?;
    let variant_name = config.backend(variant).name.clone();
    let decision = decision?;
    decision.assigned(&experiment.name, &variant_name);
    if let Some(id) = decision.request_id() {
        let assigned = Assigned {
            experiment: experiment.name.clone(),
            variant: variant_name.clone(),
        };
        if let Err(err) = live.experiments.assigned(&slot(key, &id), assigned).await {
            tracing::warn!(experiment = %experiment.name, error = %err, "cannot remember a request for its feedback");
        }
    }
    let store = live.experiments.clone();
    let name = experiment.name.clone();
    decision.on_done(move |d| store.observe(name, variant_name, observation(d)));
    Some(variant)
}

/// What a finished request came to, for its variant's counters.
fn observation(decision: &Decision) -> Observation {
    let Some(p) = &decision.proxied else {
        return Observation {
            failed: true,
            ..Observation::default()
        };
    };
    let answered = (200..300).contains(&p.status);
    Observation {
        failed: !answered,
        latency_ms: answered.then_some(p.latency_ms),
        ttfb_ms: p.ttfb_ms.filter(|_| answered),
        tokens: p
            .tokens
            .filter(|_| answered)
            .map(|t| t.prompt.saturating_add(t.completion) as f64),
        cost_usd: p.cost_usd.filter(|_| answered),
    }
}

/// Whether requests of `config` need a pending decision for an experiment's counters.
pub fn any(config: &Config) -> bool {
    config
        .routes
        .iter()
        .any(|r| r.dispatch.experiment.is_some())
}

/// `POST /v1/feedback`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `x-request-id` of the answer being scored.
    pub request_id: String,
    /// A number (thumbs as 1 or 0; `true` and `false` are taken as those).
    #[schema(value_type = f64)]
    pub score: serde_json::Value,
}

/// What `POST /v1/feedback` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedbackCounted {
    pub request_id: String,
    pub experiment: String,
    pub variant: String,
    pub score: f64,
}

/// Scores an earlier answer; counted to the experiment variant its request was assigned.
#[utoipa::path(
    post,
    path = "/v1/feedback",
    tag = "proxy",
    request_body = Feedback,
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "Counted to the request's variant", body = FeedbackCounted),
        (status = 400, description = "`invalid_json`: the body is not JSON", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `--body-timeout`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `content-type: application/json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: no request with this id was in an experiment in the last 24 hours, or another key sent it", body = ErrorBody),
        (status = 409, description = "`feedback_repeated`: the request already has feedback", body = ErrorBody),
        (status = 422, description = "`invalid_request`: no `request_id`, or `score` not a number", body = ErrorBody),
        (status = 503, description = "`state_unavailable`: the counters are in Redis and it does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn feedback(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<FeedbackCounted>, ApiError> {
    let live = state.live();
    let config = &live.config;
    let key = tenant::identify(config, request.headers())?;
    let key_name = key
        .and_then(|k| config.auth.keys.get(k))
        .map(|k| k.name.clone());
    let bytes = read_json_body(request, FEEDBACK_BODY_LIMIT, state.body_timeout).await?;
    let body: Feedback = super::json::parse(&bytes)?;
    let score = match &body.score {
        serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        _ => f64::NAN,
    };
    if !(score.is_finite() && score.abs() <= MAX_SCORE) {
        return Err(ApiError::invalid(format!(
            "`score` must be a number from -{MAX_SCORE} to {MAX_SCORE} (thumbs as 1 or 0)"
        )));
    }
    if body.request_id.is_empty() || body.request_id.len() > 256 {
        return Err(ApiError::invalid(
            "`request_id` must be the answer's x-request-id",
        ));
    }
    let assigned = live
        .experiments
        .feedback(&slot(key_name.as_deref(), &body.request_id), score)
        .await
        .map_err(unavailable)?
        .map_err(|err| match err {
            FeedbackError::Unknown => ApiError::new(ErrorKind::NotFound, err.to_string()),
            FeedbackError::Repeated => ApiError::new(ErrorKind::FeedbackRepeated, err.to_string()),
        })?;
    Ok(Json(FeedbackCounted {
        request_id: body.request_id,
        experiment: assigned.experiment.clone(),
        variant: assigned.variant.clone(),
        score,
    }))
}

/// `GET /admin/experiments`: per variant of each experiment its counts and means with 95%
/// intervals, and per metric whether the variants differ.
#[utoipa::path(
    get,
    path = "/admin/experiments",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "Every experiment of the config in service", body = ExperimentsReport),
        (status = 503, description = "`state_unavailable`: the counters are in Redis and it does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
    )
)]
pub async fn report(State(state): State<AppState>) -> Result<Json<ExperimentsReport>, ApiError> {
    let live = state.live();
    let report = report::report(&live.config, &live.experiments)
        .await
        .map_err(unavailable)?;
    Ok(Json(report))
}

fn unavailable(err: crate::quota::shared::StoreError) -> ApiError {
    ApiError::new(
        ErrorKind::StateUnavailable,
        format!("the experiments' counters cannot be reached: {err}"),
    )
    .with_retry_after(1)
}

/// A random number for `sticky: none` (std's per-thread random keys over a counter).
fn random() -> u64 {
    use std::hash::BuildHasher;
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let draw = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one(draw)
}
