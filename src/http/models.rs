//! `GET /v1/models` and `GET /v1/models/{id}`: every model id a client of the proxy may name
//! (`auto`, the routes, the backends), in OpenAI's shapes so the SDKs' `models.list` and
//! `models.retrieve` work.

use super::AppState;
use crate::config::Config;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

/// OpenAI's list shape: `{"object": "list", "data": [...]}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `list`.
    #[schema(pattern = "^list$")]
    object: &'static str,
    data: Vec<ModelEntry>,
}

/// One model id a request's `model` may name.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    id: String,
    /// Always `model`.
    #[schema(pattern = "^model$")]
    object: &'static str,
    /// Always 0: a route or a backend has no creation date.
    created: u64,
    /// Always `semroute`.
    #[schema(pattern = "^semroute$")]
    owned_by: &'static str,
    semroute_kind: ModelKind,
}

/// What the id names: `auto` (classify, then route), a route, or a backend (no routing).
#[derive(Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Auto,
    Route,
    Backend,
}

fn entry(id: &str, kind: ModelKind) -> ModelEntry {
    ModelEntry {
        id: id.to_string(),
        object: "model",
        created: 0,
        owned_by: "semroute",
        semroute_kind: kind,
    }
}

/// Every model id a client may name: `auto`, the routes, the backends.
fn model_entries(config: &Config) -> Vec<ModelEntry> {
    let mut data = vec![entry("auto", ModelKind::Auto)];
    data.extend(
        config
            .routes
            .iter()
            .map(|r| entry(r.name.as_str(), ModelKind::Route)),
    );
    data.extend(
        config
            .backends
            .iter()
            .map(|b| entry(&b.name, ModelKind::Backend)),
    );
    data
}

/// `auto`, every route and every backend, in OpenAI's list shape.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "proxy",
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "Every model id a request may name", body = ModelList),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
    )
)]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: model_entries(&state.live().config),
    })
}

/// One model id (the SDKs' `models.retrieve`); the id may contain `/`.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "proxy",
    params(("id" = String, Path, description = "`auto`, a route's or a backend's name")),
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "The model", body = ModelEntry),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`model_not_found`: no such model id", body = ErrorBody),
    )
)]
pub async fn model(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<ModelEntry>, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::new(
            ErrorKind::ModelNotFound,
            "there is no such model (the id is not valid UTF-8); GET /v1/models lists them",
        ));
    };
    model_entries(&state.live().config)
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::ModelNotFound,
                format!("there is no model `{id}`; GET /v1/models lists them"),
            )
        })
}
