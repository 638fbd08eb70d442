//! What reaches the upstream and what a request may name: the client's body passed through
//! with the target's model and the response headers set, `auto` classifying the last user
//! message, a backend named as the model, unknown models refused, the model list and each
//! model by id, prompts with nothing visible to route by, and a conversation longer than
//! the classify body limit.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_first_target_answers_with_the_body_passed_through_and_the_headers_set() {
    let (a, b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-route"), "chat");
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(reply.header("x-semroute-attempts"), "1");
    let body = reply.json();
    assert_eq!(body["model"], "a-model", "the model that answered");
    assert_eq!(body["usage"]["total_tokens"], 15);
    // The upstream got the client's body, unknown fields included, with its own model.
    let sent = &a.received()[0].body;
    assert_eq!(sent["model"], "a-model");
    assert_eq!(sent["x_custom"], json!({"keep": true}));
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn auto_classifies_the_last_user_message() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let mut body = request("auto");
    body["messages"] = json!([
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi"},
        // A message that claims another route confidently moves the conversation.
        {"role": "user", "content": [{"type": "text", "text": "write a python function"}]}
    ]);
    let reply = chat(&s, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-route"), "code");
    let score: f32 = reply.header("x-semroute-score").parse().unwrap();
    assert!(score > 0.3, "{score}");
}

#[tokio::test]
async fn a_backend_named_as_model_is_used_directly_and_unknown_models_are_refused() {
    let (_a, _b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    let reply = chat(&s, request("b")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.header("x-semroute-route"), "-");
    let reply = chat(&s, request("gpt-9")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let message = reply.error_message();
    assert!(
        message.contains("chat, code") && message.contains("a, b"),
        "{message}"
    );
}

#[tokio::test]
async fn models_lists_auto_routes_and_backends() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let body = get(&s, "/v1/models").await.json();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "chat", "code", "a"]);
}

#[tokio::test]
async fn a_model_is_retrieved_by_its_id_for_auto_a_route_and_a_backend() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    for id in ["auto", "chat", "code", "a"] {
        let reply = get(&s, &format!("/v1/models/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.body);
        let model = reply.json();
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
        assert!(model["owned_by"].is_string(), "{model}");
        assert!(model["created"].is_number(), "{model}");
    }
    let reply = get(&s, "/v1/models/gpt-9").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error_message().contains("gpt-9"), "{}", reply.body);
}

#[tokio::test]
async fn a_prompt_of_only_invisible_characters_is_refused_with_422() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    for text in [
        "\u{0}\u{0}\u{0}",
        "\u{200B}\u{200B}\u{200C}",
        " \u{FEFF}\u{200D}\n\u{0}",
    ] {
        for content in [json!(text), json!([{"type": "text", "text": text}])] {
            let body = json!({"model": "auto", "messages": [{"role": "user", "content": content}]});
            let reply = chat(&s, body).await;
            assert_eq!(
                reply.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{text:?}: {}",
                reply.body
            );
            assert!(reply.error_message().contains("visible"), "{}", reply.body);
        }
    }
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn a_long_conversation_is_proxied_past_the_classify_body_limit() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let mut body = request("chat");
    body["messages"][0]["content"] = json!("x".repeat(3 * 1024 * 1024));
    let reply = chat(&s, body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        a.received()[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        3 * 1024 * 1024
    );
}
