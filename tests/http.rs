//! The HTTP sidecar: every endpoint through the router with `oneshot` (no socket), each bad
//! input with its status and JSON error, and the same app once over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::Router;
use semroute::embed::{EmbedWorker, Encoder, files};
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, app};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

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

/// Sends `request` through the app; the answer is checked against the OpenAPI description.
async fn send(state: AppState, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, bytes) = common::openapi::oneshot(app(state), request).await;
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
    let (status, headers, _) = common::openapi::oneshot(
        app(state),
        post_json("/classify", json!({"text": "hi"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
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
    let body = common::openapi::read_json("POST", response).await;
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
    common::openapi::read("POST", bad).await;
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
                let body = common::openapi::read_json("POST", response).await;
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
                let (status, headers, _) =
                    common::openapi::oneshot(app(state), post_json("/classify", body)).await;
                (status, headers.get(header::RETRY_AFTER).is_some())
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

/// Every `$ref` in `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => out.push((at.clone(), target)),
                    _ => refs(inner, format!("{at}/{key}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                refs(inner, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The `(method, path)` pairs `app()` routes, read from its source as `src/architecture.rs`
/// reads imports: `{*id}` (axum's wildcard) is OpenAPI's `{id}`.
fn served_routes() -> std::collections::BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(common::repo().join("src/http/mod.rs")).unwrap();
    let route =
        regex::Regex::new(r#"\.route\(\s*"([^"]+)",\s*(get|post|put|patch|delete)\("#).unwrap();
    route
        .captures_iter(&source)
        .map(|c| (c[2].to_string(), c[1].replace("{*", "{")))
        .collect()
}

#[tokio::test]
async fn openapi_json_is_an_openapi_3_1_description_of_every_route_the_app_serves() {
    let (status, doc) = send(ready_state(), get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        &doc,
        common::openapi::document(),
        "it serves the generated description"
    );
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["title"].is_string());

    let mut documented = std::collections::BTreeSet::new();
    let mut operation_ids = std::collections::BTreeSet::new();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "{path}");
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            let what = format!("{method} {path}");
            let responses = operation["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{what} documents no response");
            for (status, response) in responses {
                assert!(
                    response["description"].is_string(),
                    "{what} {status}: a response needs a description"
                );
            }
            let id = operation["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id.to_string()),
                "{what}: operationId {id} twice"
            );
            // Each `{param}` of the path is a required path parameter.
            for name in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            {
                let declared = operation["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true)
                });
                assert!(
                    declared,
                    "{what}: `{name}` is not a required path parameter"
                );
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(
                        schemes.contains_key(scheme),
                        "{what}: no security scheme {scheme}"
                    );
                }
            }
        }
    }
    assert_eq!(
        documented,
        served_routes(),
        "the description and `app()` list different endpoints"
    );

    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(!found.is_empty());
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external ref {target}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: `{target}` does not resolve"
        );
    }
    // Every schema is a valid JSON Schema (2020-12, OpenAPI 3.1's dialect) and compiles.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::meta::is_valid(schema),
            "schema {name} is not valid JSON Schema"
        );
        common::openapi::compile(&json!({"$ref": format!("#/components/schemas/{name}")}));
    }
}
