//! Clients trying to get past their key's rules: reaching a backend outside their routes,
//! making a request look cheaper than it is to its budget, leaving before the answer so it
//! costs nothing, and sharing counters with callers they are not.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::http::AppState;
use serde_json::{Value, json};
use std::time::Duration;

const NARROW_KEY: &str = "sk-narrow-0123456789abcdef";
const OPS_KEY: &str = "sk-ops-fedcba9876543210";

fn digest(key: &str) -> String {
    hex::encode(semroute::config::key_digest(key.as_bytes()))
}

/// Routes `chat` (to `a`) and `code` (to `b`); key `narrow` may use `chat` only and has
/// `limits`; `ops` is an admin. `a` costs $1000 per million tokens and gets `a_extra`.
fn narrow(a: &str, b: &str, limits: &str, a_extra: &str) -> AppState {
    state_from(&format!(
        "auth:\n  required: true\n  keys:\n\
         \x20   - name: narrow\n      key_sha256: {}\n      routes: [chat]\n      limits: {limits}\n\
         \x20   - name: ops\n      key_sha256: {}\n      admin: true\n\
         backends:\n{}{}\
         routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [a]\n\
         \x20 - name: code\n    utterances: [write a python function, fix this rust compile error]\n    targets: [b]\n\
         default_route: chat\n",
        digest(NARROW_KEY),
        digest(OPS_KEY),
        backend(
            "a",
            a,
            &format!("    cost: {{input_per_mtok: 1000, output_per_mtok: 1000}}\n{a_extra}")
        ),
        backend("b", b, ""),
    ))
}

async fn chat_as(state: &AppState, key: &str, body: Value) -> Reply {
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    send(state, request.body(Body::from(body.to_string())).unwrap()).await
}

/// What key `name` has spent today, as `GET /v1/usage` shows it to the admin key.
async fn spent_today(state: &AppState, name: &str) -> f64 {
    let request = Request::get("/v1/usage")
        .header(header::AUTHORIZATION, format!("Bearer {OPS_KEY}"))
        .body(Body::empty())
        .unwrap();
    let usage = send(state, request).await.json();
    let key = usage["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap()
        .clone();
    key["budgets"][0]["spent"].as_f64().unwrap()
}

#[tokio::test]
async fn a_key_limited_to_routes_cannot_name_a_backend_outside_them() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = narrow(&a.url, &b.url, "{rpm: 100}", "");
    // `code` is refused by name ...
    let route = chat_as(&s, NARROW_KEY, request("code")).await;
    assert_eq!(route.status, StatusCode::FORBIDDEN, "{}", route.body);
    // ... and so is `code`'s backend, named directly.
    let backend = chat_as(&s, NARROW_KEY, request("b")).await;
    assert_eq!(backend.status, StatusCode::FORBIDDEN, "{}", backend.body);
    assert_eq!(b.received().len(), 0, "b was reached past the key's routes");
    // The backend of a route it may use stays reachable by name.
    let own = chat_as(&s, NARROW_KEY, request("a")).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
}

#[tokio::test]
async fn choices_and_caps_written_loosely_are_reserved_in_full() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    // About 10 prompt tokens and 40 output tokens at $0.001 each: $0.05 of $0.1 fits.
    let s = narrow(&a.url, &b.url, "{usd_per_day: 0.1}", "");
    let mut fits = request("chat");
    fits["max_tokens"] = json!(40);
    let ok = chat_as(&s, NARROW_KEY, fits.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    // Three choices of 40 ($0.13) do not, however `n` and the caps are written: an
    // OpenAI-compatible server (pydantic) takes `3.0` and `"3"` as 3, and a server that
    // knows only `max_tokens` ignores `max_completion_tokens`.
    let loose = [
        json!({"n": 3.0}),
        json!({"n": "3"}),
        json!({"n": 3, "max_tokens": 40.0}),
        json!({"max_tokens": 120, "max_completion_tokens": 1}),
    ];
    for fields in loose {
        let mut body = fits.clone();
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = chat_as(&s, NARROW_KEY, body).await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{fields}: {}",
            reply.body
        );
    }
    assert_eq!(a.received().len(), 1);
}

#[tokio::test]
async fn leaving_before_the_answer_still_pays_for_the_prompt() {
    let a = Upstream::start("a", Behaviour::Slow(Duration::from_millis(1_500))).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    // A provider that answers whole at the end: the client leaves while it writes.
    let s = narrow(
        &a.url,
        &b.url,
        "{usd_per_day: 10}",
        "    upstream_stream: false\n    timeout_ms: 5000\n",
    );
    let left = tokio::time::timeout(
        Duration::from_millis(500),
        chat_as(&s, NARROW_KEY, request("chat")),
    )
    .await;
    assert!(left.is_err(), "the answer came before the client left");
    assert_eq!(a.received().len(), 1, "the provider got the request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spent = spent_today(&s, "narrow").await;
    assert!(spent >= 0.005, "the prompt sent went uncharged: ${spent}");
}

#[test]
fn no_key_is_named_as_the_callers_without_one() {
    // Callers without a key count their users under `-`; a key of that name would share
    // their counters.
    let yaml = format!(
        "auth:\n  keys:\n    - name: \"-\"\n      key_sha256: {}\n\
         limits:\n  per_user: {{rpm: 1}}\n\
         routes:\n  - name: chat\n    utterances: [hello there]\n",
        digest(NARROW_KEY)
    );
    let parsed = semroute::config::Config::parse(&yaml, "test.yaml", crate::common::repo());
    assert!(parsed.is_err(), "a key named `-` was accepted");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_and_its_reservation_settled() {
    let a = Upstream::start("a", Behaviour::Endless).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = narrow(&a.url, &b.url, "{usd_per_day: 1000}", "");
    s.dispatcher()
        .unwrap()
        .set_client_stall(Duration::from_millis(300));
    let mut body = request("chat");
    body["stream"] = json!(true);
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {NARROW_KEY}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    use tower::ServiceExt;
    // The answer is held, never read: the relay fills its buffer and waits on the client.
    let response = semroute::http::app(s.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    crate::common::openapi::check_head("POST", "/v1/chat/completions", &response);
    let usage = || async {
        let request = Request::get("/v1/usage")
            .header(header::AUTHORIZATION, format!("Bearer {OPS_KEY}"))
            .body(Body::empty())
            .unwrap();
        send(&s, request).await.json()["keys"][0]["budgets"][0].clone()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let budget = usage().await;
        if budget["reserved"] == 0.0 {
            // Let go and charged for what was relayed, while the client still holds on.
            assert!(budget["spent"].as_f64().unwrap() > 0.0, "{budget}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still reserved: {budget}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(response);
}
