//! What the debugging page reads about the config in service, behind the admin guard:
//! every route whole (`GET /admin/routes`: utterances, overrides, threshold, targets) and
//! every backend's health as the dispatcher sees it (`GET /admin/backends`).

use super::AppState;
use super::health::{keywords, patterns};
use crate::config::Strategy;
use crate::dispatch::health::BreakerState;
use crate::error::ErrorBody;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `GET /admin/routes` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RouteDetails {
    pub routes: Vec<RouteDetail>,
    /// The route a prompt below every threshold goes to (`null`: none).
    pub default_route: Option<String>,
}

/// One route as the file gives it, with the defaults applied.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RouteDetail {
    pub name: String,
    pub description: Option<String>,
    pub utterances: Vec<String>,
    pub keywords: Vec<String>,
    pub patterns: Vec<String>,
    /// The route's own threshold, or the config's.
    pub threshold: f32,
    /// Backends by name, in the order written (empty without backends).
    pub targets: Vec<String>,
    pub strategy: Strategy,
    pub data_class: Option<String>,
}

/// What `GET /admin/backends` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BackendsHealth {
    pub backends: Vec<BackendHealth>,
}

/// One backend's breaker and load at the moment of the request.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BackendHealth {
    pub name: String,
    /// The model it is asked for.
    pub model: String,
    pub state: BreakerState,
    /// Consecutive failures.
    pub failures: u32,
    /// Milliseconds left in the cooldown (`null`: none).
    pub cooling_ms: Option<u64>,
    /// Requests in flight on it, streams included.
    pub in_flight: usize,
    /// Its `max_concurrent` (`null`: no limit).
    pub max_concurrent: Option<usize>,
    /// The peak-EWMA latency the balancers read (`null`: no answer yet).
    pub latency_ms: Option<f64>,
}

/// The config in service's routes, whole.
#[utoipa::path(
    get,
    path = "/admin/routes",
    operation_id = "admin_routes",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "Every route with its utterances, overrides, threshold and targets", body = RouteDetails),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
    )
)]
pub async fn routes(State(state): State<AppState>) -> Json<RouteDetails> {
    let live = state.live();
    let config = &live.config;
    let routes = config
        .routes
        .iter()
        .map(|route| RouteDetail {
            name: route.name.to_string(),
            description: route.description.clone(),
            utterances: route.utterances.clone(),
            keywords: keywords(route),
            patterns: patterns(route),
            threshold: route.threshold.unwrap_or(config.threshold).get(),
            targets: route
                .dispatch
                .targets
                .iter()
                .map(|&b| config.backend(b).name.clone())
                .collect(),
            strategy: route.dispatch.strategy,
            data_class: route.dispatch.data_class.clone(),
        })
        .collect();
    Json(RouteDetails {
        routes,
        default_route: config
            .default_route
            .map(|d| config.route(d).name.to_string()),
    })
}

/// Every backend's breaker (closed, open, cooling, half-open) and load, from the
/// dispatcher in service.
#[utoipa::path(
    get,
    path = "/admin/backends",
    operation_id = "admin_backends",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "Every backend's health (an empty list without backends)", body = BackendsHealth),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
    )
)]
pub async fn backends(State(state): State<AppState>) -> Json<BackendsHealth> {
    let live = state.live();
    let Some(dispatcher) = live.dispatcher.as_ref() else {
        return Json(BackendsHealth { backends: vec![] });
    };
    let config = dispatcher.config();
    let now = Instant::now();
    let backends = config
        .backends
        .iter()
        .filter_map(|backend| {
            let s = dispatcher
                .health(config.backend_id(&backend.name)?)
                .snapshot(now);
            Some(BackendHealth {
                name: backend.name.clone(),
                model: backend.model.clone(),
                state: s.state,
                failures: s.failures,
                cooling_ms: s.remaining.map(|r| r.as_millis() as u64),
                in_flight: s.in_flight,
                max_concurrent: backend.max_concurrent,
                latency_ms: s.latency.map(millis),
            })
        })
        .collect();
    Json(BackendsHealth { backends })
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}
