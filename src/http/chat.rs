//! `POST /v1/chat/completions` (the OpenAI-compatible proxy) and `GET /v1/models`. The
//! body passes through untouched apart from `model`; `model` of `auto` (or none) routes by
//! classifying the last user message, a route's or a backend's name goes straight there.

use super::AppState;
use super::classify::{Message, last_user_text};
use super::json::ApiJson;
use crate::config::Config;
use crate::dispatch::{AnswerBody, ChatRequest, Destination, DispatchError};
use crate::error::{ApiError, ErrorKind};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The request header that sets a request's data class.
pub const DATA_CLASS_HEADER: &str = "x-semroute-data-class";

/// What the proxy decided before dispatching, for the response headers.
struct Routing {
    destination: Destination,
    route: Option<String>,
    score: Option<f32>,
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let Some(dispatcher) = state.dispatcher.clone() else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "this config defines no backends to proxy to; add `backends:` and route `targets:`",
        ));
    };
    let config = dispatcher.config();
    let routing = resolve(&state, config, &body).await?;
    let header_class = match headers.get(DATA_CLASS_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid(format!("{DATA_CLASS_HEADER} must be ASCII")))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let route_class = match routing.destination {
        Destination::Route(r) => config.route(r).dispatch.data_class.clone(),
        Destination::Backend(_) => None,
    };
    let request = ChatRequest {
        body,
        destination: routing.destination,
        data_class: header_class.or(route_class),
    };
    let route_label = routing.route.clone().unwrap_or_else(|| "-".into());
    let result = dispatcher.dispatch(&request).await;
    let (status_label, backend_label) = match &result {
        Ok(a) => (a.status.to_string(), config.backend(a.backend).name.clone()),
        Err(DispatchError::NotEligible { .. }) => ("403".into(), "-".into()),
        Err(DispatchError::AllCooling { .. }) => ("503".into(), "-".into()),
        Err(DispatchError::Exhausted { .. }) => ("502".into(), "-".into()),
    };
    state.metrics.add(
        "semroute_requests_total",
        &[
            ("route", &route_label),
            ("backend", &backend_label),
            ("status", &status_label),
        ],
        1.0,
    );
    let answer = result.map_err(|err| match err {
        DispatchError::NotEligible { .. } => {
            ApiError::new(ErrorKind::DataClassRefused, err.to_string())
        }
        DispatchError::AllCooling { retry_after } => {
            ApiError::new(ErrorKind::UpstreamUnavailable, err.to_string())
                .with_retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64)
        }
        DispatchError::Exhausted { .. } => {
            ApiError::new(ErrorKind::UpstreamFailed, err.to_string())
        }
    })?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match answer.body {
        AnswerBody::Full(bytes) => Body::from(bytes),
        AnswerBody::Stream(events) => Body::from_stream(tokio_stream_of(events)),
    };
    let mut response = Response::builder()
        .status(status)
        .body(body)
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    let h = response.headers_mut();
    if let Some(ct) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"));
    h.insert(
        "x-semroute-route",
        text(routing.route.as_deref().unwrap_or("-")),
    );
    h.insert(
        "x-semroute-backend",
        text(&config.backend(answer.backend).name),
    );
    h.insert(
        "x-semroute-score",
        text(&routing.score.map_or("-".to_string(), |s| format!("{s:.4}"))),
    );
    h.insert("x-semroute-attempts", HeaderValue::from(answer.attempts));
    Ok(response)
}

/// Turns the relay's channel into a body stream.
fn tokio_stream_of(
    mut events: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    futures_util::stream::poll_fn(move |cx| events.poll_recv(cx).map(|e| e.map(Ok)))
}

/// Where `model` sends the request.
async fn resolve(
    state: &AppState,
    config: &Config,
    body: &Map<String, Value>,
) -> Result<Routing, ApiError> {
    let model = match body.get("model") {
        None | Some(Value::Null) => "auto",
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(ApiError::invalid("`model` must be a string")),
    };
    if model != "auto" {
        if let Some(r) = config.route_id(model) {
            return Ok(Routing {
                destination: Destination::Route(r),
                route: Some(model.to_string()),
                score: None,
            });
        }
        if let Some(b) = config.backend_id(model) {
            return Ok(Routing {
                destination: Destination::Backend(b),
                route: None,
                score: None,
            });
        }
        return Err(ApiError::new(
            ErrorKind::ModelNotFound,
            format!(
                "`model` is `{model}`: use `auto`, a route ({}) or a backend ({})",
                names(config.routes.iter().map(|r| r.name.as_str())),
                names(config.backends.iter().map(|b| b.name.as_str())),
            ),
        ));
    }
    let messages: Vec<Message> = match body.get("messages") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| ApiError::invalid(format!("`messages` is not a list of messages: {e}")))?,
        None => return Err(ApiError::invalid("missing `messages`")),
    };
    let text = last_user_text(&messages)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "with `model: auto`, `messages` needs a user message with text to route by",
            )
        })?;
    let engine = state.engine()?;
    let started = std::time::Instant::now();
    let embedding = engine.worker.embed(text.clone()).await?;
    let c = engine.router.classify(&text, &embedding, None);
    state
        .metrics
        .observe("semroute_classification_seconds", &[], started.elapsed());
    let route = c
        .route
        .clone()
        .and_then(|name| config.route_id(&name).map(|r| (r, name)));
    match route {
        Some((r, name)) => Ok(Routing {
            destination: Destination::Route(r),
            route: Some(name),
            score: c.score,
        }),
        None => Err(ApiError::invalid(
            "no route matched this prompt and the config has no `default_route` to send it to",
        )),
    }
}

fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = list.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// `GET /v1/models`: `auto`, every route and every backend, in OpenAI's list shape.
pub async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let config = &state.config;
    let entry = |id: &str, kind: &str| json!({"id": id, "object": "model", "owned_by": "semroute", "semroute_kind": kind});
    let mut data = vec![entry("auto", "auto")];
    data.extend(
        config
            .routes
            .iter()
            .map(|r| entry(r.name.as_str(), "route")),
    );
    data.extend(config.backends.iter().map(|b| entry(&b.name, "backend")));
    Json(json!({"object": "list", "data": data}))
}

/// `GET /metrics`: Prometheus' text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
