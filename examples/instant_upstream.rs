//! An OpenAI-compatible upstream that answers every chat completion at once (as a stream
//! when asked, as semroute asks by default), for measuring the proxy's own overhead
//! (`bench/proxy.sh`, `bench/huge.sh`). Usage: `instant_upstream [ADDR]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

async fn complete(Json(body): Json<Value>) -> Response {
    let model = body["model"].clone();
    if body["stream"] == json!(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let usage = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": model, "choices": [],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}});
        let events = format!(
            "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: {usage}\n\ndata: [DONE]\n\n",
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "ok"}), Value::Null),
            chunk(json!({}), json!("stop")),
        );
        return ([("content-type", "text/event-stream")], events).into_response();
    }
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    }))
    .into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9101".into());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(complete))
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .layer(DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("instant upstream on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
