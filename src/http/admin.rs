//! The operator's endpoints under `/admin/`: the config in service (`GET /admin/config`), a
//! reload (`POST /admin/reload`) and the shadow config's report (`GET /admin/shadow`). They answer on loopback to a client no proxy forwarded,
//! or to the admin key (`auth.admin_key_env`) from anywhere; never to a client key.

use super::AppState;
use super::reload::{LastReload, ReloadError, Reloaded};
use super::shadow::ShadowReport;
use super::tenant::local_and_direct;
use crate::config::key_digest;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A layer for `/admin/*`: loopback and direct (and not a page of another site), or the
/// admin key.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let local = local_and_direct(&request);
    if local && same_site(request.headers()) {
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
        _ if local => ApiError::new(
            ErrorKind::Forbidden,
            "a page of another site (or a Host that is not this machine's) cannot use the loopback pass to /admin; open the page this server serves, or send the admin key",
        )
        .into_response(),
        _ => ApiError::new(
            ErrorKind::Unauthorized,
            "/admin answers on loopback, or to the admin key (auth.admin_key_env) as a Bearer token",
        )
        .into_response(),
    }
}

/// What `GET /admin/config` answers: the config in service (`Origin`'s fields), what it
/// holds, and the last reload.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigAnswer {
    /// The file, when the config was read from one.
    file: Option<String>,
    /// SHA-256 of the file's bytes (hex).
    hash: String,
    /// When this config went into service (RFC 3339, UTC).
    loaded_at: String,
    /// 1 for the config the service started with, one more at each reload that changed it.
    generation: u64,
    routes: usize,
    backends: usize,
    /// Whether the model and index are loaded.
    ready: bool,
    /// The last reload since start (`null`: none yet).
    last_reload: Option<LastReload>,
}

/// Which config is in service, since when, and the last reload.
#[utoipa::path(
    get,
    path = "/admin/config",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "The config in service", body = ConfigAnswer),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key does not open /admin", body = ErrorBody),
    )
)]
pub async fn config(State(state): State<AppState>) -> Json<ConfigAnswer> {
    let live = state.live();
    let origin = &live.origin;
    Json(ConfigAnswer {
        file: origin.file.clone(),
        hash: origin.hash.clone(),
        loaded_at: origin.loaded_at.clone(),
        generation: origin.generation,
        routes: live.config.routes.len(),
        backends: live.config.backends.len(),
        ready: live.engine.is_some(),
        last_reload: state.reloader.last(),
    })
}

/// Reads the config file again; the new config is in service when this answers 200, and the
/// old one still is when it answers an error.
#[utoipa::path(
    post,
    path = "/admin/reload",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "`result: ok`: the new config is in service; `unchanged`: the file is the one in service", body = Reloaded),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key does not open /admin", body = ErrorBody),
        (status = 422, description = "`invalid_config`: the file is unreadable or invalid; the old config serves", body = ErrorBody),
        (status = 500, description = "`reload_failed`: no config file, a model that cannot load, limits that cannot be set up; the old config serves", body = ErrorBody),
        (status = 503, description = "`not_ready`: the model is still loading at startup", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
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
#[utoipa::path(
    get,
    path = "/admin/shadow",
    tag = "admin",
    security((), ("admin_key" = [])),
    responses(
        (status = 200, description = "Agreement, confusion live -> candidate and the candidate's scores", body = ShadowReport),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
        (status = 404, description = "`not_found`: the service runs without `--shadow`", body = ErrorBody),
    )
)]
pub async fn shadow(State(state): State<AppState>) -> Result<Json<ShadowReport>, ApiError> {
    state.shadow.get().map(|s| Json(s.report())).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no shadow config: start `semroute serve --shadow candidate.yaml` to compare one with live traffic",
        )
    })
}

/// Whether a loopback request may be the operator's own: not sent by a browser page of
/// another site (`Origin` naming another host, `Sec-Fetch-Site: cross-site`), and addressed
/// to a loopback name (a DNS-rebound name would make another site's page look same-origin).
/// Clients that send neither header (curl, scripts) pass.
fn same_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST);
    if host.is_some_and(|h| !is_loopback_name(h)) {
        return false;
    }
    if text(HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return false;
    }
    match text(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority.is_some_and(|a| Some(a) == host || (host.is_none() && is_loopback_name(a)))
        }
    }
}

/// `localhost`, or a loopback address, with or without a port.
fn is_loopback_name(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn scripts_and_the_servers_own_page_pass() {
        assert!(same_site(&headers(&[])));
        assert!(same_site(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_site(&headers(&[("host", "[::1]:8080")])));
        assert!(same_site(&headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
    }

    #[test]
    fn other_sites_and_rebound_names_do_not() {
        let evil = "http://evil.example";
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", evil)
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
        assert!(!same_site(&headers(&[(
            "host",
            "rebound.evil.example:8080"
        )])));
        assert!(!same_site(&headers(&[("host", "127.0.0.1.evil.example")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
    }
}
