//! The operator's endpoints: `GET /healthz` (the process is alive), `GET /readyz` (the model
//! and index are loaded), `GET /metrics` (Prometheus) and `GET /routes` (what the router was
//! configured with).

use super::AppState;
use crate::config::Aggregation;
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

/// The answer of `/healthz` and `/readyz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

/// `ok` (`/healthz`: the process is up) or `ready` (`/readyz`: the model and index are loaded).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Ready,
}

/// The process is up (it answers before the model is loaded).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// The model and route index are loaded: requests can be classified.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`not_ready`: the model is still loading", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.live().engine()?;
    Ok(Json(Health {
        status: HealthStatus::Ready,
    }))
}

/// What `GET /routes` answers: the routes and the settings that score them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RoutesAnswer {
    routes: Vec<RouteInfo>,
    /// The route that takes what no route clears (`null`: none).
    default_route: Option<String>,
    /// The threshold of routes that set none.
    threshold: f32,
    top_k: usize,
    aggregation: Aggregation,
}

/// One route as `GET /routes` lists it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RouteInfo {
    name: String,
    /// How many utterances it has.
    utterances: usize,
    /// Its own threshold, or the config's.
    threshold: f32,
    keywords: Vec<String>,
    patterns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    is_default: bool,
}

/// The routes the router was configured with (answers before the model is loaded).
#[utoipa::path(
    get,
    path = "/routes",
    tag = "operations",
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "The routes and the scoring settings", body = RoutesAnswer),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
    )
)]
pub async fn routes(State(state): State<AppState>) -> Json<RoutesAnswer> {
    let live = state.live();
    let config = &live.config;
    let routes: Vec<RouteInfo> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| RouteInfo {
            name: route.name.to_string(),
            utterances: route.utterances.len(),
            threshold: route.threshold.unwrap_or(config.threshold).get(),
            keywords: keywords(route),
            patterns: patterns(route),
            description: route.description.clone(),
            is_default: config.default_route.is_some_and(|d| d.index() == i),
        })
        .collect();
    Json(RoutesAnswer {
        routes,
        default_route: config
            .default_route
            .map(|d| config.route(d).name.to_string()),
        threshold: config.threshold.get(),
        top_k: config.top_k,
        aggregation: config.aggregation,
    })
}

/// Every metric in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus' text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// A route's keywords as written in the file.
pub(super) fn keywords(route: &crate::config::Route) -> Vec<String> {
    route
        .keywords
        .iter()
        .map(|k| k.as_str().to_string())
        .collect()
}

/// A route's patterns as written in the file.
pub(super) fn patterns(route: &crate::config::Route) -> Vec<String> {
    route
        .patterns
        .iter()
        .map(|p| p.as_str().to_string())
        .collect()
}
