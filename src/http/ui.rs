//! The debugging page (`GET /` and `/ui`): plain HTML, CSS and JavaScript compiled into the
//! binary, with no other asset and no request to any other site. The page reads everything
//! it shows from `/classify` and `/admin/*`, whose guards apply as to any client; the page
//! itself holds nothing. Served with a content security policy that allows this server's own
//! scripts and nothing else, so a prompt shown on the page can never run as code.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only this server's own script, style and requests; no frames, no plugins, no inline code.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The debugging page.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    responses((status = 200, description = "The debugging page (HTML)", body = String, content_type = "text/html"))
)]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The debugging page, at its other address.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "page",
    responses((status = 200, description = "The debugging page (HTML)", body = String, content_type = "text/html"))
)]
pub async fn page_at_ui() -> Response {
    page().await
}

/// The page's script.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    tag = "page",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The page's style sheet.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    tag = "page",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
