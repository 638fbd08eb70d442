//! Data classes: a request kept away from backends that do not list its class, whether the
//! class comes from the route, a pattern anywhere in the conversation or a header; a header
//! can raise a class but never lower it, and the strictest of several wins.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::http::AppState;
use serde_json::json;

#[tokio::test]
async fn a_data_class_keeps_the_request_away_from_backends_that_do_not_list_it() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    data_classes: [public]\n")
            + &backend("b", &b.url, "    data_classes: [public, internal]\n")),
        "a, b",
        "",
    );
    // Even with b failing, a never receives an internal request.
    b.script([Behaviour::status(503), Behaviour::status(503)]);
    let reply = chat_with(&s, request("chat"), Some("internal")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(a.count(), 0, "the disallowed backend received nothing");
    let reply = chat_with(&s, request("chat"), Some("secret")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.error_message().contains("`secret`"));
    assert_eq!((a.count(), b.count()), (0, 2));
}

#[tokio::test]
async fn a_route_data_class_applies_when_the_request_has_no_header() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    data_classes: [public]\n")
            + &backend("b", &b.url, "    data_classes: [internal]\n")),
        "a, b",
        "    data_class: internal\n",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn a_data_class_header_can_raise_a_routes_class_but_never_lower_it() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    data_classes: [public]\n")
            + &backend("b", &b.url, "    data_classes: [public, internal]\n")),
        "a, b",
        "    data_class: internal\n",
    );
    for header in [None, Some("public"), Some("internal")] {
        let reply = chat_with(&s, request("chat"), header).await;
        assert_eq!(reply.status, StatusCode::OK, "{header:?}: {}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b", "{header:?}");
    }
    assert_eq!(
        a.count(),
        0,
        "the public-only backend got an internal request"
    );
    // Raised to pii, which no target accepts: refused, saying it was the header.
    let reply = chat_with(&s, request("chat"), Some("pii")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    let message = reply.error_message();
    assert!(
        message.contains("`pii`") && message.contains("header"),
        "{message}"
    );
    assert_eq!((a.count(), b.count()), (0, 3));
}

#[tokio::test]
async fn once_data_classes_are_used_a_backend_without_a_list_gets_only_public_requests() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    // Only b lists classes; a lists none.
    let s = state(
        &(backend("a", &a.url, "")
            + &backend("b", &b.url, "    data_classes: [public, internal]\n")),
        "a, b",
        "",
    );
    let reply = chat_with(&s, request("chat"), Some("internal")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    let reply = chat_with(&s, request("a"), Some("internal")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(
        a.count(),
        0,
        "an internal request reached a backend without a list"
    );
    let reply = chat_with(&s, request("chat"), Some("public")).await;
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// The pattern of a route that marks personal data (a US social security number).
const SSN_PATTERN: &str = r"\b\d{3}-\d{2}-\d{4}\b";

/// Backends `open` (public only) and `local` (up to pii); routes `chat` (both) and
/// `personal` (a pattern for social security numbers, class pii, `local` only).
async fn personal_data_setup() -> (Upstream, Upstream, AppState) {
    let open = Upstream::start("open", Behaviour::Answer).await;
    let local = Upstream::start("local", Behaviour::Answer).await;
    let s = state_from(&format!(
        "backends:\n{}{}routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [open, local]\n  - name: personal\n    patterns: ['{SSN_PATTERN}']\n    targets: [local]\n    data_class: pii\ndefault_route: chat\n",
        backend("open", &open.url, "    data_classes: [public]\n"),
        backend(
            "local",
            &local.url,
            "    data_classes: [public, internal, pii]\n"
        ),
    ));
    (open, local, s)
}

#[tokio::test]
async fn a_pattern_anywhere_in_the_conversation_sets_its_class_whatever_model_names() {
    let (open, local, s) = personal_data_setup().await;
    for earlier in [
        json!({"role": "system", "content": "The customer's SSN is 123-45-6789."}),
        json!({"role": "assistant", "content": [{"type": "text", "text": "Noted: 123-45-6789."}]}),
    ] {
        let messages = json!([earlier, {"role": "user", "content": "hello there"}]);
        // Routed by the last user message to `chat`, named as `chat`, with a header saying
        // public: each goes to the backend that accepts pii.
        for (model, header) in [("auto", None), ("chat", None), ("chat", Some("public"))] {
            let body = json!({"model": model, "messages": messages});
            let reply = chat_with(&s, body, header).await;
            assert_eq!(reply.status, StatusCode::OK, "{model}: {}", reply.body);
            assert_eq!(reply.header("x-semroute-route"), "chat");
            assert_eq!(reply.header("x-semroute-backend"), "local", "{model}");
        }
        // Naming the public-only backend does not skip the scan: refused, naming the rule.
        let body = json!({"model": "open", "messages": messages});
        let reply = chat_with(&s, body, Some("public")).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
        let message = reply.error_message();
        assert!(
            message.contains("`pii`")
                && message.contains("pattern")
                && message.contains("personal"),
            "{message}"
        );
    }
    assert_eq!(
        open.count(),
        0,
        "personal data reached the public-only backend"
    );
    assert_eq!(local.count(), 6);
    // Without the pattern, the public-only backend is used as usual.
    let reply = chat(&s, request("open")).await;
    assert_eq!(reply.header("x-semroute-backend"), "open");
}

#[tokio::test]
async fn every_data_class_header_counts_and_the_strictest_wins() {
    let open = Upstream::start("open", Behaviour::Answer).await;
    let local = Upstream::start("local", Behaviour::Answer).await;
    let s = state(
        &(backend("open", &open.url, "    data_classes: [public]\n")
            + &backend("local", &local.url, "    data_classes: [public, pii]\n")),
        "open, local",
        "",
    );
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-semroute-data-class", "public")
        .header("x-semroute-data-class", "pii")
        .body(Body::from(request("chat").to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "local");
    assert_eq!(open.count(), 0);
}
