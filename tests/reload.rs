//! Hot reload through `POST /admin/reload` and `GET /admin/config`, in process: an edited
//! route is in service after the answer and only its new utterances were embedded; an
//! invalid file, an unloadable model or a missing file keep the old config serving and say
//! why; the same file is `unchanged`; requests racing reloads all succeed; `/admin/*`
//! answers only on loopback (to a client no proxy forwarded) or to the admin key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use semroute::config::Config;
use semroute::http::{AppState, app};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;

const ROUTES: &str = "\
routes:
  - name: weather
    utterances:
      - what is the weather like today
      - will it rain tomorrow
  - name: billing
    utterances:
      - why was I charged twice
      - how do I update my credit card
";

/// `request` as a real server hands it on from `peer`.
fn from(peer: [u8; 4], mut request: Request<Body>) -> Request<Body> {
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40_000))));
    request
}

fn local(request: Request<Body>) -> Request<Body> {
    from([127, 0, 0, 1], request)
}

/// Sends `request` through the app; the answer is checked against the OpenAPI description.
async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, bytes) = common::openapi::oneshot(app(state.clone()), request).await;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&bytes)}));
    (status, body)
}

fn reload_request() -> Request<Body> {
    local(Request::post("/admin/reload").body(Body::empty()).unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn route_of(state: &AppState, text: &str) -> Value {
    let request = Request::post("/classify")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"text": text}).to_string()))
        .unwrap();
    let (status, body) = send(state, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["route"].clone()
}

async fn metric(state: &AppState, series: &str) -> f64 {
    let (_, _, bytes) = common::openapi::oneshot(app(state.clone()), get("/metrics")).await;
    String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_reload_puts_an_edited_route_in_service_embedding_only_its_new_utterance() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    let prompt = "book me a table for two at an italian place";
    assert_ne!(route_of(&state, prompt).await, "dining");
    let (_, before) = send(&state, local(get("/admin/config"))).await;
    assert_eq!(before["generation"], 1);

    let edited = format!(
        "{ROUTES}  - name: dining\n    utterances:\n      - reserve a table at a restaurant\n    threshold: 0.4\n"
    );
    std::fs::write(dir.path().join("routes.yaml"), &edited).unwrap();
    let (status, done) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"], "ok");
    assert_eq!(done["embedded"], 1, "only the new utterance: {done}");
    assert_eq!(done["reused"], 4);
    assert_eq!(done["routes"], 3);
    assert_eq!(done["model_reloaded"], false);
    assert_eq!(done["config"]["generation"], 2);

    assert_eq!(route_of(&state, prompt).await, "dining");
    let (_, after) = send(&state, local(get("/admin/config"))).await;
    assert_ne!(after["hash"], before["hash"]);
    assert_eq!(after["generation"], 2);
    assert_eq!(after["routes"], 3);
    assert_eq!(after["last_reload"]["result"], "ok");
    let (_, routes) = send(&state, get("/routes")).await;
    assert_eq!(routes["routes"].as_array().unwrap().len(), 3);
    assert_eq!(
        metric(&state, "semroute_config_reloads_total{result=\"ok\"}").await,
        1.0
    );
}

#[tokio::test]
async fn the_same_file_again_is_unchanged_and_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    let (status, done) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"], "unchanged");
    assert_eq!(done["config"]["generation"], 1);
    assert_eq!(
        metric(
            &state,
            "semroute_config_reloads_total{result=\"unchanged\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_config_serving_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    let broken = ROUTES.replace(
        "  - name: billing\n",
        "  - name: billing\n    threshold: 7\n",
    );
    std::fs::write(dir.path().join("routes.yaml"), broken).unwrap();
    let (status, body) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("threshold"), "{message}");
    assert!(
        message.contains("routes.yaml:7:"),
        "names the line: {message}"
    );
    assert!(
        message.contains("previous config keeps serving"),
        "{message}"
    );

    // Still the old config: ready, answering, same generation, the failure recorded.
    let (ready, _) = send(&state, get("/readyz")).await;
    assert_eq!(ready, StatusCode::OK);
    assert_eq!(
        route_of(&state, "will it snow this weekend").await,
        "weather"
    );
    let (_, config) = send(&state, local(get("/admin/config"))).await;
    assert_eq!(config["generation"], 1);
    assert_eq!(config["last_reload"]["result"], "error");
    assert!(
        config["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("threshold")
    );
    assert_eq!(
        metric(&state, "semroute_config_reloads_total{result=\"error\"}").await,
        1.0
    );

    // Not YAML at all, not UTF-8, and gone: the same.
    for bad in [&b"routes: [\n  - {name"[..], &[0xff, 0xfe, 0x00][..]] {
        std::fs::write(dir.path().join("routes.yaml"), bad).unwrap();
        let (status, body) = send(&state, reload_request()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
    let (status, body) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routes.yaml")
    );
    assert_eq!(
        route_of(&state, "will it snow this weekend").await,
        "weather"
    );
}

#[tokio::test]
async fn a_model_that_cannot_load_keeps_the_old_config_serving() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    let missing = format!(
        "encoder:\n  path: {}\n{ROUTES}",
        dir.path().join("nowhere").display()
    );
    std::fs::write(dir.path().join("routes.yaml"), missing).unwrap();
    let (status, body) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "reload_failed");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("model"),
        "{body}"
    );
    assert_eq!(route_of(&state, "will it rain on friday").await, "weather");
}

#[tokio::test]
async fn a_changed_encoder_loads_the_model_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!("encoder:\n  max_tokens: 64\n{ROUTES}"),
    )
    .unwrap();
    let (status, done) = send(&state, reload_request()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["model_reloaded"], true);
    assert_eq!(route_of(&state, "is it going to be sunny").await, "weather");
}

#[tokio::test]
async fn requests_racing_reloads_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), ROUTES);
    let path = dir.path().join("routes.yaml");
    let mut clients = Vec::new();
    for i in 0..64 {
        let state = state.clone();
        clients.push(tokio::spawn(async move {
            route_of(&state, &format!("will it rain on day {i}")).await
        }));
    }
    for round in 0..5 {
        let edited = ROUTES.replace(
            "will it rain tomorrow",
            &format!("will it rain in {round} days"),
        );
        std::fs::write(&path, edited).unwrap();
        let (status, done) = send(&state, reload_request()).await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["result"], "ok");
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), "weather");
    }
    let (_, config) = send(&state, local(get("/admin/config"))).await;
    assert_eq!(config["generation"], 6);
}

#[tokio::test]
async fn admin_answers_loopback_and_the_admin_key_only() {
    // SAFETY: set before any thread of this test reads the environment; unique names.
    unsafe {
        std::env::set_var("RELOAD_TEST_ADMIN_KEY", "admin-key-0123456789abcdef");
        std::env::set_var("RELOAD_TEST_CLIENT_KEY", "client-key-0123456789abcdef");
    }
    let yaml = format!(
        "auth:\n  required: true\n  admin_key_env: RELOAD_TEST_ADMIN_KEY\n  keys:\n    - name: app\n      key_env: RELOAD_TEST_CLIENT_KEY\n{ROUTES}"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = common::reloadable(dir.path(), &yaml);
    let with_key = |key: &str, request: Request<Body>| {
        let mut request = request;
        request.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        request
    };
    // From elsewhere: no key, a client key, a wrong key.
    let remote = [10, 0, 0, 7];
    let (status, body) = send(&state, from(remote, get("/admin/config"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let client = with_key(
        "client-key-0123456789abcdef",
        from(remote, get("/admin/config")),
    );
    let (status, body) = send(&state, client).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let wrong = with_key(
        "admin-key-0123456789abcdeX",
        from(remote, get("/admin/config")),
    );
    assert_eq!(send(&state, wrong).await.0, StatusCode::UNAUTHORIZED);
    // A loopback client that a proxy forwarded is not local; a header cannot make it so.
    let mut forwarded = local(get("/admin/config"));
    forwarded
        .headers_mut()
        .insert("x-forwarded-for", "127.0.0.1".parse().unwrap());
    assert_eq!(send(&state, forwarded).await.0, StatusCode::UNAUTHORIZED);
    let reload = from(
        remote,
        Request::post("/admin/reload").body(Body::empty()).unwrap(),
    );
    assert_eq!(send(&state, reload).await.0, StatusCode::UNAUTHORIZED);
    // The admin key from anywhere, and loopback without one.
    let admin = with_key(
        "admin-key-0123456789abcdef",
        from(remote, get("/admin/config")),
    );
    let (status, body) = send(&state, admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["generation"], 1);
    assert_eq!(
        send(&state, local(get("/admin/config"))).await.0,
        StatusCode::OK
    );
    // Nothing in the answer gives a key away.
    assert!(!body.to_string().contains("0123456789abcdef"));
}

#[test]
fn an_admin_key_that_is_missing_short_or_a_client_key_is_a_config_error() {
    // SAFETY: unique names, set before reading.
    unsafe {
        std::env::set_var("RELOAD_TEST_SHORT_KEY", "short");
        std::env::set_var("RELOAD_TEST_SHARED_KEY", "shared-key-0123456789abcdef");
    }
    let cases = [
        ("auth:\n  admin_key_env: RELOAD_TEST_UNSET_KEY\n", "not set"),
        ("auth:\n  admin_key_env: RELOAD_TEST_SHORT_KEY\n", "shorter"),
        (
            "auth:\n  admin_key_env: RELOAD_TEST_SHARED_KEY\n  keys:\n    - name: app\n      key_env: RELOAD_TEST_SHARED_KEY\n",
            "also a client",
        ),
    ];
    for (auth, expected) in cases {
        let err = Config::parse(&format!("{auth}{ROUTES}"), "test.yaml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.admin_key_env"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}
