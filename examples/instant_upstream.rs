//! An OpenAI-compatible upstream that answers every chat completion at once, for measuring
//! the proxy's own overhead (`bench/proxy.sh`). Usage: `instant_upstream [ADDR]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

async fn complete(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    }))
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
        );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("instant upstream on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
