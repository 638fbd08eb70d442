//! Huge prompts: only what truncation keeps is tokenized (with the same embedding as the
//! whole text), and a 30 MiB request of mostly non-ASCII text is still routed by a keyword
//! and classed by a pattern that appear only at its very end. (How fast, and with how much
//! memory, is measured by `bench/huge.sh`, not here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod upstream;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::Router;
use semroute::embed::{EmbedWorker, Encoder, files};
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, app};
use serde_json::{Value, json};
use std::sync::Arc;
use upstream::{Behaviour, Upstream};

#[test]
fn a_long_prompt_is_embedded_from_the_prefix_truncation_keeps_with_the_same_result() {
    let encoder = common::encoder();
    let truncator = encoder.truncator();
    let words =
        "the quick brown fox jumps over the lazy dog while \u{200B} café 你好 ".repeat(2_000);
    let prefix = truncator.prefix(&words);
    assert!(
        prefix.len() < words.len() / 10,
        "{} of {}",
        prefix.len(),
        words.len()
    );
    let whole = encoder.embed_one(&words).unwrap();
    let cut = encoder.embed_one(prefix).unwrap();
    assert_eq!(whole.tokens, 256);
    assert_eq!(cut.tokens, 256);
    assert_eq!(whole.vector, cut.vector);
    // Whitespace-heavy text needs a longer prefix, found by widening the window.
    let sparse = format!("{}{}", " ".repeat(100_000), "word ".repeat(1_000));
    let prefix = truncator.prefix(&sparse);
    assert!(prefix.len() > 100_000);
    assert_eq!(encoder.embed_one(prefix).unwrap().tokens, 256);
    // A short text is its own prefix.
    assert_eq!(truncator.prefix("hello there"), "hello there");
}

#[tokio::test]
async fn a_30_mib_non_ascii_request_is_routed_by_a_keyword_or_a_pattern_at_its_very_end_and_classed_by_the_pattern()
 {
    let open = Upstream::start("open", Behaviour::Answer).await;
    let local = Upstream::start("local", Behaviour::Answer).await;
    let yaml = format!(
        "backends:\n  - name: open\n    url: {}\n    model: m\n    data_classes: [public, internal]\n  - name: local\n    url: {}\n    model: m\n    data_classes: [public, internal, pii]\nroutes:\n  - name: code\n    utterances: [write a python function]\n    keywords: [python]\n    targets: [open, local]\n  - name: personal\n    patterns: ['\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b']\n    targets: [local]\n    data_class: pii\n  - name: chat\n    utterances: [hello there]\n    targets: [open, local]\ndefault_route: chat\n",
        open.url, local.url
    );
    let config = common::config_from(&yaml);
    let found = files::resolve(&config.encoder, &[common::repo().to_path_buf()]).unwrap();
    let encoder = Encoder::load_files(found, &config.encoder).unwrap();
    let router = Router::build(config, &encoder).unwrap();
    let state = AppState::ready(
        Arc::new(router),
        EmbedWorker::spawn(encoder, 8).unwrap(),
        DEFAULT_BODY_LIMIT,
    );
    let unit = "Привет, это длинное сообщение. 你好世界，这是一个很长的消息。 ";
    let filler = unit.repeat(30 * 1024 * 1024 / unit.len());
    let send = |tail: &str| {
        let text = format!("{filler} {tail}");
        let body = json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
        let request = Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let state = state.clone();
        async move {
            let (status, headers, bytes) = common::openapi::oneshot(app(state), request).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(answer["object"], "chat.completion");
            let header = |name: &str| headers[name].to_str().unwrap().to_string();
            (
                header("x-semroute-route"),
                header("x-semroute-backend"),
                text.len(),
            )
        }
    };
    let (route, backend, _) = send("in python please").await;
    assert_eq!((route.as_str(), backend.as_str()), ("code", "open"));
    // A pattern beats the keyword for the route, and its class keeps the request away
    // from `open`.
    let (route, backend, length) = send("in python please, ssn 123-45-6789").await;
    assert_eq!((route.as_str(), backend.as_str()), ("personal", "local"));
    assert_eq!(open.count(), 1);
    let sent = &local.received()[0].body;
    assert_eq!(
        sent["messages"][0]["content"].as_str().map(str::len),
        Some(length),
        "the whole conversation went upstream"
    );
}
