//! The operator's endpoints under `/admin/`: the config in service (`GET /admin/config`), a
//! reload (`POST /admin/reload`) and the shadow config's report (`GET /admin/shadow`). They answer on loopback to a client no proxy forwarded,
//! or to the admin key (`auth.admin_key_env`) from anywhere; never to a client key.

use super::AppState;
use super::reload::ReloadError;
use super::shadow::ShadowReport;
use super::tenant::local_and_direct;
use crate::config::key_digest;
use crate::error::{ApiError, ErrorKind};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A layer for `/admin/*`: loopback and direct, or the admin key.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if local_and_direct(&request) {
        return next.run(request).await;
    }
    let live = state.live();
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let admin = live.config.auth.admin_key.as_ref();
    match (presented, admin) {
        (Some(key), Some(admin)) if key_digest(key.as_bytes()) == admin.digest => {
            next.run(request).await
        }
        (Some(key), _)
            if live
                .config
                .auth
                .keys
                .iter()
                .any(|k| k.digest == key_digest(key.as_bytes())) =>
        {
            ApiError::new(
                ErrorKind::Forbidden,
                "a client key does not open /admin; use the admin key (auth.admin_key_env) or call from this machine",
            )
            .into_response()
        }
        _ => ApiError::new(
            ErrorKind::Unauthorized,
            "/admin answers on loopback, or to the admin key (auth.admin_key_env) as a Bearer token",
        )
        .into_response(),
    }
}

/// `GET /admin/config`: which config is in service, since when, and the last reload.
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    let live = state.live();
    Json(json!({
        "file": live.origin.file,
        "hash": live.origin.hash,
        "loaded_at": live.origin.loaded_at,
        "generation": live.origin.generation,
        "routes": live.config.routes.len(),
        "backends": live.config.backends.len(),
        "ready": live.engine.is_some(),
        "last_reload": state.reloader.last(),
    }))
}

/// `POST /admin/reload`: reads the config file again; the new config is in service when
/// this answers 200, and the old one still is when it answers an error.
pub async fn reload(State(state): State<AppState>) -> Response {
    match state.reload().await {
        Ok(done) => Json(done).into_response(),
        Err(err) => reload_error(err).into_response(),
    }
}

fn reload_error(err: ReloadError) -> ApiError {
    let kind = match &err {
        ReloadError::Config(_) => ErrorKind::InvalidConfig,
        ReloadError::NotReady => ErrorKind::NotReady,
        _ => ErrorKind::ReloadFailed,
    };
    ApiError::new(kind, format!("{err}\nthe previous config keeps serving"))
}

/// `GET /admin/shadow`: how the candidate config of `serve --shadow` decides the live
/// prompts, compared with the config in service.
pub async fn shadow(State(state): State<AppState>) -> Result<Json<ShadowReport>, ApiError> {
    state.shadow.get().map(|s| Json(s.report())).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no shadow config: start `semroute serve --shadow candidate.yaml` to compare one with live traffic",
        )
    })
}
