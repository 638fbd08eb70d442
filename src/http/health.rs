//! The operator's endpoints: `GET /healthz` (the process is alive), `GET /readyz` (the model
//! and index are loaded), `GET /metrics` (Prometheus) and `GET /routes` (what the router was
//! configured with).

use super::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value, json};

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.live().engine()?;
    Ok(Json(json!({"status": "ready"})))
}

#[derive(Serialize)]
pub struct RouteInfo {
    name: String,
    utterances: usize,
    threshold: f32,
    keywords: Vec<String>,
    patterns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    is_default: bool,
}

pub async fn routes(State(state): State<AppState>) -> Json<Value> {
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
            keywords: route
                .keywords
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            patterns: route
                .patterns
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            description: route.description.clone(),
            is_default: config.default_route.is_some_and(|d| d.index() == i),
        })
        .collect();
    Json(json!({
        "routes": routes,
        "default_route": config.default_route.map(|d| config.route(d).name.to_string()),
        "threshold": config.threshold.get(),
        "top_k": config.top_k,
        "aggregation": config.aggregation,
    }))
}

/// `GET /metrics`: Prometheus' text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
