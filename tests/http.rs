//! The HTTP sidecar: every endpoint through the router with `oneshot` (no socket), each bad
//! input with its status and JSON error, and the same app once over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use semroute::Router;
use semroute::embed::{EmbedWorker, Encoder, files};
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, app};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

/// A ready app over the shipped routes, with its own worker (and so its own model copy).
fn ready_state() -> AppState {
    static STATE: OnceLock<(Arc<Router>, EmbedWorker)> = OnceLock::new();
    let (router, worker) = STATE.get_or_init(|| {
        common::model_dir();
        let config = common::shipped_config();
        let found = files::resolve(&config.encoder, &[common::repo().to_path_buf()]).unwrap();
        let encoder = Encoder::load_files(found, &config.encoder).unwrap();
        let router = Router::build(config, &encoder).unwrap();
        (Arc::new(router), EmbedWorker::spawn(encoder, 64).unwrap())
    });
    AppState::ready(router.clone(), worker.clone(), DEFAULT_BODY_LIMIT)
}

async fn send(state: AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(state).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("body is not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn classify(body: Value) -> (StatusCode, Value) {
    send(ready_state(), post_json("/classify", body.to_string())).await
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error says what is wrong: {body}"
    );
}

#[tokio::test]
async fn classify_text_answers_route_score_and_candidates() {
    let (status, body) = classify(json!({"text": "Write a Python function to parse JSON"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["route"], "code");
    assert_eq!(body["matched_by"], "keyword");
    assert!(body["score"].as_f64().unwrap() > 0.4);
    assert!(body["threshold"].is_number());
    assert!(body["margin"].is_number());
    assert!(body["ambiguous"].is_boolean());
    let candidates = body["candidates"].as_array().unwrap();
    assert!(candidates.len() >= 2);
    assert_eq!(candidates[0]["route"], "code");
    assert!(candidates[0]["neighbors"][0]["utterance"].is_string());
    assert!(candidates[0]["neighbors"][0]["similarity"].is_number());
    for key in ["embed", "search", "total"] {
        assert!(body["timing_us"][key].is_u64(), "timing_us.{key}");
    }
}

#[tokio::test]
async fn classify_messages_uses_the_last_user_message() {
    let (status, body) = classify(json!({"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "I was charged twice this month"},
        {"role": "assistant", "content": "Sorry to hear that."},
        {"role": "user", "content": [{"type": "text", "text": "compose a haiku about autumn leaves"}]}
    ]}))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["route"], "creative_writing");
}

#[tokio::test]
async fn top_k_limits_the_neighbours_searched() {
    let (status, body) = classify(json!({"text": "hello there, how are you?", "top_k": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["candidates"].as_array().unwrap().len(), 1);
    let (status, body) = classify(json!({"text": "hi", "top_k": 0})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (status, body) = send(ready_state(), post_json("/classify", "{\"text\": ")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test]
async fn missing_or_empty_text_is_422() {
    for request in [
        json!({}),
        json!({"text": ""}),
        json!({"text": "   \n"}),
        json!({"text": 42}),
        json!({"messages": []}),
        json!({"messages": [{"role": "system", "content": "only a system prompt"}]}),
        json!({"text": "a", "messages": [{"role": "user", "content": "b"}]}),
    ] {
        let (status, body) = classify(request.clone()).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let request = Request::post("/classify")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{\"text\": \"hi\"}"))
        .unwrap();
    let (status, body) = send(ready_state(), request).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let request = Request::post("/classify")
        .body(Body::from("{\"text\": \"hi\"}"))
        .unwrap();
    let (status, _) = send(ready_state(), request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let text = "a".repeat(DEFAULT_BODY_LIMIT + 10);
    let (status, body) = classify(json!({ "text": text })).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn a_huge_prompt_under_the_limit_is_classified() {
    let text = "please route this long message ".repeat(30_000);
    assert!(text.len() < DEFAULT_BODY_LIMIT);
    let (status, body) = classify(json!({ "text": text })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"], 256);
}

#[tokio::test]
async fn health_ready_and_routes() {
    let (status, body) = send(ready_state(), get("/healthz")).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
    let (status, body) = send(ready_state(), get("/readyz")).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));
    let (status, body) = send(ready_state(), get("/routes")).await;
    assert_eq!(status, StatusCode::OK);
    let routes = body["routes"].as_array().unwrap();
    let config = common::shipped_config();
    assert_eq!(routes.len(), config.routes.len());
    let billing = routes.iter().find(|r| r["name"] == "billing").unwrap();
    assert_eq!(billing["utterances"], 8);
    assert!((billing["threshold"].as_f64().unwrap() - 0.35).abs() < 1e-6);
    assert!(
        billing["keywords"]
            .as_array()
            .unwrap()
            .contains(&json!("invoice"))
    );
    assert_eq!(body["default_route"], "general");
}

#[tokio::test]
async fn before_the_model_is_loaded_readyz_and_classify_are_503() {
    let state = AppState::new(Arc::new(common::shipped_config()), DEFAULT_BODY_LIMIT);
    let (status, body) = send(state.clone(), get("/readyz")).await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    let (status, _) = send(state.clone(), get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    let response = app(state)
        .oneshot(post_json("/classify", json!({"text": "hi"}).to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let (status, body) = send(ready_state(), get("/nope")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = send(ready_state(), get("/classify")).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn the_same_app_over_a_real_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(ready_state())).into_future());
    let client = common::http_client();
    let response = client
        .post(format!("http://{addr}/classify"))
        .json(&json!({"text": "my order hasn't arrived, where is it?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["route"], "support");
    // Concurrent requests share the worker and all get answers.
    let texts = [
        "hi there",
        "refund my last payment",
        "plot the sales trend",
        "write a limerick",
    ];
    let answers = futures_join(&client, addr, &texts).await;
    assert_eq!(
        answers,
        ["small_talk", "billing", "data_analysis", "creative_writing"]
    );
    let bad = client
        .post(format!("http://{addr}/classify"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.abort();
}

async fn futures_join(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    texts: &[&str],
) -> Vec<String> {
    let tasks: Vec<_> = texts
        .iter()
        .map(|text| {
            let client = client.clone();
            let text = text.to_string();
            tokio::spawn(async move {
                let response = client
                    .post(format!("http://{addr}/classify"))
                    .json(&json!({ "text": text }))
                    .send()
                    .await
                    .unwrap();
                let body: Value = response.json().await.unwrap();
                body["route"].as_str().unwrap_or("").to_string()
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_answered_429_with_retry_after_and_the_rest_succeed() {
    let config = common::shipped_config();
    let found = files::resolve(&config.encoder, &[common::repo().to_path_buf()]).unwrap();
    let encoder = Encoder::load_files(found, &config.encoder).unwrap();
    let router = Arc::new(Router::build(config, &encoder).unwrap());
    // Room for one waiting prompt: a burst of 40 must overflow it.
    let state = AppState::ready(
        router,
        EmbedWorker::spawn(encoder, 1).unwrap(),
        DEFAULT_BODY_LIMIT,
    );
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let state = state.clone();
            tokio::spawn(async move {
                let body = json!({ "text": format!("please refund order number {i}") }).to_string();
                let response = app(state)
                    .oneshot(post_json("/classify", body))
                    .await
                    .unwrap();
                let retry_after = response.headers().get(header::RETRY_AFTER).is_some();
                (response.status(), retry_after)
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::TOO_MANY_REQUESTS, true) => overloaded += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(ok >= 1, "some requests are served");
    assert!(overloaded >= 1, "the burst overflowed the queue");
    assert_eq!(ok + overloaded, 40);
}
