//! Client keys, what each may reach, and limits and budgets on one process: 401 without a
//! known key, 403 naming the rule, 429 with OpenAI's rate-limit headers, and a key never
//! shown anywhere.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::http::AppState;
use serde_json::{Value, json};

const SEARCH_KEY: &str = "sk-search-0123456789abcdef";
const OPS_KEY: &str = "sk-ops-fedcba9876543210";

fn digest(key: &str) -> String {
    hex::encode(semroute::config::key_digest(key.as_bytes()))
}

/// Backends `a` (cheap) and `b`; routes `chat` and `code`; two keys.
fn tenants(a: &str, b: &str, search_limits: &str, per_user: &str) -> AppState {
    state_from(&format!(
        "auth:\n  required: true\n  keys:\n\
         \x20   - name: team-search\n      key_sha256: {}\n      routes: [auto, chat]\n      backends: [a]\n      max_data_class: internal\n      limits: {search_limits}\n\
         \x20   - name: ops\n      key_sha256: {}\n      admin: true\n\
         limits:\n  per_user: {per_user}\n\
         backends:\n{}{}\
         routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [a, b]\n\
         \x20 - name: code\n    utterances: [write a python function, fix this rust compile error]\n    targets: [a, b]\n\
         default_route: chat\n",
        digest(SEARCH_KEY),
        digest(OPS_KEY),
        backend(
            "a",
            a,
            "    cost: {input_per_mtok: 1000, output_per_mtok: 1000}\n"
        ),
        backend("b", b, ""),
    ))
}

async fn chat_as(state: &AppState, key: Option<&str>, body: Value) -> Reply {
    let mut request =
        Request::post("/v1/chat/completions").header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    send(state, request.body(Body::from(body.to_string())).unwrap()).await
}

fn code(reply: &Reply) -> String {
    reply.json()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_key_is_required_and_checked_and_never_shown() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = tenants(&a.url, &b.url, "{rpm: 100}", "{rpm: 100}");
    let none = chat_as(&s, None, request("chat")).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.body);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = chat_as(&s, Some("sk-search-0123456789abcdeX"), request("chat")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    let ok = chat_as(&s, Some(SEARCH_KEY), request("chat")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(get(&s, "/healthz").await.status, StatusCode::OK);
    // Listings of routes and backends need a key too.
    for path in ["/v1/models", "/v1/models/chat", "/routes"] {
        assert_eq!(
            get(&s, path).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let with_key = send(
            &s,
            Request::get(path)
                .header(header::AUTHORIZATION, format!("Bearer {OPS_KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(with_key.status, StatusCode::OK, "{path}");
    }
    let metrics = metrics_text(&s).await;
    for text in [&none.body, &wrong.body, &ok.body, &metrics] {
        for key in [SEARCH_KEY, OPS_KEY] {
            assert!(!text.contains(key) && !text.contains(&digest(key)));
        }
    }
    // The upstream got the backend's credentials, never the client's key.
    let sent = a.received();
    assert!(sent.iter().all(|r| {
        !r.authorization
            .as_deref()
            .unwrap_or("")
            .contains(SEARCH_KEY)
    }));
}

#[tokio::test]
async fn a_key_reaches_only_its_routes_backends_and_data_classes() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = tenants(&a.url, &b.url, "{rpm: 100}", "{rpm: 100}");
    let route = chat_as(&s, Some(SEARCH_KEY), request("code")).await;
    assert_eq!(route.status, StatusCode::FORBIDDEN, "{}", route.body);
    assert!(
        route.body.contains("may not use route `code`"),
        "{}",
        route.body
    );
    let backend = chat_as(&s, Some(SEARCH_KEY), request("b")).await;
    assert_eq!(backend.status, StatusCode::FORBIDDEN, "{}", backend.body);
    assert!(backend.body.contains("backend `b`"), "{}", backend.body);
    // A prompt classified as `code` is refused too, though `auto` is allowed.
    let mut classified = request("auto");
    classified["messages"][0]["content"] = json!("fix this rust compile error please");
    let auto = chat_as(&s, Some(SEARCH_KEY), classified).await;
    assert_eq!(auto.status, StatusCode::FORBIDDEN, "{}", auto.body);
    // A class above the key's maximum, whoever raised it.
    let mut pii = request("chat");
    pii["messages"][0]["content"] = json!("hello there");
    let reply = send(
        &s,
        Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {SEARCH_KEY}"))
            .header("x-semroute-data-class", "pii")
            .body(Body::from(pii.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        reply.body.contains("up to class `internal`"),
        "{}",
        reply.body
    );
    // The other key has no restrictions.
    assert_eq!(
        chat_as(&s, Some(OPS_KEY), request("b")).await.status,
        StatusCode::OK
    );
    assert!(a.received().iter().all(|r| r.body["model"] == "a-model"));
}

#[tokio::test]
async fn over_a_rate_limit_the_answer_is_429_with_openai_headers() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = tenants(&a.url, &b.url, "{rpm: 2}", "{rpm: 100}");
    let first = chat_as(&s, Some(SEARCH_KEY), request("chat")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers["x-ratelimit-reset-requests"], "30s");
    assert_eq!(
        chat_as(&s, Some(SEARCH_KEY), request("chat")).await.status,
        StatusCode::OK
    );
    let third = chat_as(&s, Some(SEARCH_KEY), request("chat")).await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        third.body
    );
    assert_eq!(code(&third), "rate_limit_exceeded");
    assert!(
        third.body.contains("key `team-search` rpm"),
        "{}",
        third.body
    );
    assert_eq!(third.headers["retry-after"], "30");
    assert_eq!(third.headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(
        a.received().len(),
        2,
        "the refused request never went upstream"
    );
    // Another key is not held back by this one's limit.
    assert_eq!(
        chat_as(&s, Some(OPS_KEY), request("chat")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn each_user_has_a_limit_of_their_own() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = tenants(&a.url, &b.url, "{rpm: 100}", "{rpm: 1}");
    let as_user = |user: &str| {
        let mut body = request("chat");
        body["user"] = json!(user);
        body
    };
    assert_eq!(
        chat_as(&s, Some(OPS_KEY), as_user("alice")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        chat_as(&s, Some(OPS_KEY), as_user("bob")).await.status,
        StatusCode::OK
    );
    let again = chat_as(&s, Some(OPS_KEY), as_user("alice")).await;
    assert_eq!(
        again.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        again.body
    );
    assert!(again.body.contains("user `alice`"), "{}", again.body);
}

#[tokio::test]
async fn a_budget_refuses_before_the_call_and_is_charged_what_was_used() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    // `a` costs $1000 per million tokens: the answer's 15 tokens cost $0.015, but a request
    // is reserved at its maximum (its prompt of about 10 tokens and 70 output tokens: about
    // $0.08).
    let s = tenants(&a.url, &b.url, "{usd_per_day: 0.1}", "{rpm: 100}");
    let mut body = request("chat");
    body["max_tokens"] = json!(70);
    for _ in 0..2 {
        let ok = chat_as(&s, Some(SEARCH_KEY), body.clone()).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    }
    // $0.03 spent, $0.07 left: less than one request's maximum.
    let refused = chat_as(&s, Some(SEARCH_KEY), body.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(code(&refused), "budget_exceeded");
    assert!(
        refused
            .body
            .contains("key `team-search` usd_per_day is $0.10, $0.030000 is spent"),
        "{}",
        refused.body
    );
    assert_eq!(a.received().len(), 2);
    // A smaller request still fits.
    body["max_tokens"] = json!(5);
    assert_eq!(
        chat_as(&s, Some(SEARCH_KEY), body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn classify_needs_a_key_when_keys_are_required() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = tenants(&a.url, &b.url, "{rpm: 100}", "{rpm: 100}");
    let classify = |key: Option<&str>| {
        let mut request =
            Request::post("/classify").header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        request
            .body(Body::from(json!({"text": "hello there"}).to_string()))
            .unwrap()
    };
    assert_eq!(
        send(&s, classify(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let ok = send(&s, classify(Some(OPS_KEY))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json()["route"], "chat");
}
