//! Driving the proxy in tests: a ready app over backends at mock upstreams (`upstream`),
//! requests through `oneshot`, and readers for what comes back (JSON, SSE events, tool
//! calls, metrics). Shared by the dispatch tests (`tests/dispatch/`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::common;
use super::upstream::{Behaviour, StreamEnd, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::Router;
use semroute::embed::EmbedWorker;
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, app};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn worker() -> EmbedWorker {
    common::worker()
}

/// Backend `name` at `url`, with short timeouts so failures show quickly.
pub fn backend(name: &str, url: &str, extra: &str) -> String {
    let idle = if extra.contains("stream_idle_timeout_ms") {
        ""
    } else {
        "    stream_idle_timeout_ms: 400\n"
    };
    format!(
        "  - name: {name}\n    url: {url}\n    model: {name}-model\n    first_byte_timeout_ms: 400\n{idle}{extra}"
    )
}

/// A ready app over a whole config.
pub fn state_from(yaml: &str) -> AppState {
    let config = common::config_from(yaml);
    let router = Router::build(config, common::encoder()).unwrap();
    AppState::ready(Arc::new(router), worker(), DEFAULT_BODY_LIMIT)
}

/// A ready app: `backends` is the YAML list body; routes `chat` and `code` get `targets`.
pub fn state(backends: &str, targets: &str, route_extra: &str) -> AppState {
    state_from(&format!(
        "backends:\n{backends}routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [{targets}]\n{route_extra}  - name: code\n    utterances: [write a python function, fix this rust compile error]\n    targets: [{targets}]\ndefault_route: chat\n"
    ))
}

/// Two upstreams, `a` then `b`, as both routes' targets; `a` gets `a_extra` settings.
pub async fn pair_with(
    a: Behaviour,
    b: Behaviour,
    a_extra: &str,
) -> (Upstream, Upstream, AppState) {
    let a = Upstream::start("a", a).await;
    let b = Upstream::start("b", b).await;
    let s = state(
        &(backend("a", &a.url, a_extra) + &backend("b", &b.url, "")),
        "a, b",
        "",
    );
    (a, b, s)
}

pub async fn pair(a: Behaviour, b: Behaviour) -> (Upstream, Upstream, AppState) {
    pair_with(a, b, "").await
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    pub fn error_message(&self) -> String {
        let body = self.json();
        body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_string()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// The content of a non-streamed completion's first choice.
    pub fn content(&self) -> String {
        let body = self.json();
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {body}"))
            .to_string()
    }

    /// Whether `text` appears anywhere in the body or any header.
    pub fn shows(&self, text: &str) -> bool {
        self.body.contains(text)
            || self
                .headers
                .values()
                .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(text))
    }
}

pub async fn chat(state: &AppState, body: Value) -> Reply {
    chat_with(state, body, None).await
}

pub async fn chat_with(state: &AppState, body: Value, data_class: Option<&str>) -> Reply {
    let mut request =
        Request::post("/v1/chat/completions").header(header::CONTENT_TYPE, "application/json");
    if let Some(class) = data_class {
        request = request.header("x-semroute-data-class", class);
    }
    send(state, request.body(Body::from(body.to_string())).unwrap()).await
}

pub async fn get(state: &AppState, path: &str) -> Reply {
    send(state, Request::get(path).body(Body::empty()).unwrap()).await
}

/// `GET path` from a client on this machine, as the server hands it on (`/admin/*`).
pub async fn get_local(state: &AppState, path: &str) -> Reply {
    let mut request = Request::get(path).body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40_000,
        ))));
    send(state, request).await
}

/// Sends `request` through the app and reads the whole reply, checked against the OpenAPI
/// description.
pub async fn send(state: &AppState, request: Request<Body>) -> Reply {
    let (status, headers, bytes) = common::openapi::oneshot(app(state.clone()), request).await;
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The `GET /metrics` page, which must answer 200.
pub async fn metrics_text(s: &AppState) -> String {
    let reply = get(s, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

pub fn request(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.2, "x_custom": {"keep": true}})
}

pub fn stream_request(model: &str) -> Value {
    let mut body = request(model);
    body["stream"] = json!(true);
    body
}

/// The `data:` payloads of an SSE body.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

pub fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// The error event a broken stream ends with, if any.
pub fn stream_error(events: &[String]) -> Option<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|e| e.get("error").is_some())
}

/// The tool calls of a streamed answer put together from their deltas, as a client SDK
/// does: by index, names and arguments concatenated.
pub fn streamed_tool_calls(events: &[String]) -> BTreeMap<u64, (String, String)> {
    let mut calls: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for event in events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
    {
        for choice in event["choices"].as_array().into_iter().flatten() {
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let entry = calls.entry(call["index"].as_u64().unwrap()).or_default();
                entry.0 += call["function"]["name"].as_str().unwrap_or("");
                entry.1 += call["function"]["arguments"].as_str().unwrap_or("");
            }
        }
    }
    calls
}

/// The finish reasons a streamed answer's first choice reported.
pub fn finish_reasons(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| {
            e["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// `a` streams "Hello wor" and then breaks as `end` says; `b` is the next target.
pub async fn cut_after_hello_wor(end: StreamEnd, b: Behaviour) -> (Upstream, Upstream, AppState) {
    let (a, b, s) = pair(Behaviour::Answer, b).await;
    a.script([Behaviour::Stream {
        pieces: vec!["Hello", " wor"],
        end,
    }]);
    (a, b, s)
}
