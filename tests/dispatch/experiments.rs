//! Experiments and the sticky strategy through the proxy: each user keeps its variant, the
//! report counts exactly the requests sent to each, a failing variant falls back but the
//! request stays counted to it, feedback is taken once and only from the sender's key, and
//! rendezvous hashing moves only the clients of a target that goes down.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::http::AppState;
use serde_json::{Value, json};
use std::collections::HashMap;

const EXPERIMENT: &str =
    "    experiment:\n      name: chat-small-vs-big\n      variants: {small: 0.7, big: 0.3}\n";

async fn two(extra: &str) -> (Upstream, Upstream, AppState) {
    let small = Upstream::start("small", Behaviour::Answer).await;
    let big = Upstream::start("big", Behaviour::Answer).await;
    let backends = backend("small", &small.url, "") + &backend("big", &big.url, "");
    let s = state(&backends, "small, big", &format!("{EXPERIMENT}{extra}"));
    (small, big, s)
}

fn as_user(user: &str) -> Value {
    let mut body = request("chat");
    body["user"] = json!(user);
    body
}

/// The report of experiment `chat-small-vs-big`, and its variant `name`.
async fn variant(s: &AppState, name: &str) -> Value {
    let report = get_local(s, "/admin/experiments").await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    let experiment = report.json()["experiments"][0].clone();
    assert_eq!(experiment["name"], "chat-small-vs-big");
    experiment["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["backend"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no variant {name}: {experiment}"))
}

#[tokio::test]
async fn each_user_keeps_its_variant_and_every_request_is_counted_to_it() {
    let (small, big, s) = two("").await;
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for i in 0..300 {
            let user = format!("user-{i}");
            let reply = chat(&s, as_user(&user)).await;
            assert_eq!(reply.status, StatusCode::OK);
            let variant = reply.header("x-semroute-variant").to_string();
            assert_eq!(reply.header("x-semroute-backend"), variant);
            if round == 0 {
                seen.insert(user, variant);
            } else {
                assert_eq!(seen[&user], variant, "{user} changed variant");
            }
        }
    }
    let on_big = seen.values().filter(|v| *v == "big").count() as f64 / 300.0;
    assert!((on_big - 0.3).abs() < 0.08, "{on_big}");
    let (small_report, big_report) = (variant(&s, "small").await, variant(&s, "big").await);
    assert_eq!(small_report["requests"], small.count() as u64);
    assert_eq!(big_report["requests"], big.count() as u64);
    assert_eq!(small.count() + big.count(), 600);
    assert_eq!(small_report["errors"], 0);
    assert_eq!(small_report["latency_ms"]["n"], small.count() as u64);
    assert!(small_report["latency_ms"]["ci95"].is_array());
}

#[tokio::test]
async fn a_failing_variant_falls_back_and_its_requests_stay_counted_to_it() {
    let (small, big, s) = two("").await;
    big.set(Behaviour::status(500));
    let mut on_big = 0;
    for i in 0..60 {
        let reply = chat(&s, as_user(&format!("u{i}"))).await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.header("x-semroute-variant") == "big" {
            on_big += 1;
            assert_eq!(reply.header("x-semroute-backend"), "small");
        }
    }
    assert!(on_big > 0, "no user drew big");
    let report = variant(&s, "big").await;
    assert_eq!(report["requests"], on_big);
    // Answered (by the fallback): not an error of the variant's requests.
    assert_eq!(report["errors"], 0);
    assert_eq!(variant(&s, "small").await["requests"], 60 - on_big);
    assert_eq!(small.count(), 60);
}

async fn feedback(s: &AppState, body: Value, key: Option<&str>) -> Reply {
    let mut request =
        Request::post("/v1/feedback").header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    send(s, request.body(Body::from(body.to_string())).unwrap()).await
}

#[tokio::test]
async fn feedback_is_counted_once_to_the_variant_of_its_request() {
    let (_small, _big, s) = two("").await;
    let reply = chat(&s, as_user("fan")).await;
    let id = reply.header("x-request-id").to_string();
    let variant_name = reply.header("x-semroute-variant").to_string();
    let counted = feedback(&s, json!({"request_id": id, "score": 1}), None).await;
    assert_eq!(counted.status, StatusCode::OK, "{}", counted.body);
    assert_eq!(counted.json()["variant"], variant_name.as_str());
    let again = feedback(&s, json!({"request_id": id, "score": 0}), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let unknown = feedback(&s, json!({"request_id": "nope", "score": true}), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    for bad in [
        json!({"request_id": id, "score": "good"}),
        json!({"score": 1}),
    ] {
        assert_eq!(
            feedback(&s, bad, None).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    let report = variant(&s, &variant_name).await;
    assert_eq!(report["feedback"]["n"], 1);
    assert_eq!(report["feedback"]["mean"], 1.0);
}

#[tokio::test]
async fn feedback_from_another_key_is_refused_as_unknown() {
    // SAFETY: set before the config that names them is read; no other test reads them.
    unsafe {
        std::env::set_var("SEMROUTE_TEST_EXP_KEY_A", "sk-exp-a-0123456789abcdef");
        std::env::set_var("SEMROUTE_TEST_EXP_KEY_B", "sk-exp-b-0123456789abcdef");
    }
    let small = Upstream::start("small", Behaviour::Answer).await;
    let big = Upstream::start("big", Behaviour::Answer).await;
    let s = state_from(&format!(
        "auth:\n  required: true\n  keys:\n    - {{name: a, key_env: SEMROUTE_TEST_EXP_KEY_A}}\n    - {{name: b, key_env: SEMROUTE_TEST_EXP_KEY_B}}\nbackends:\n{}{}routes:\n  - name: chat\n    utterances: [hello]\n    targets: [small, big]\n{EXPERIMENT}",
        backend("small", &small.url, ""),
        backend("big", &big.url, "")
    ));
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer sk-exp-a-0123456789abcdef")
        .body(Body::from(as_user("x").to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let id = reply.header("x-request-id").to_string();
    let body = json!({"request_id": id, "score": 0.5});
    assert_eq!(
        feedback(&s, body.clone(), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        feedback(&s, body.clone(), Some("sk-exp-b-0123456789abcdef"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        feedback(&s, body, Some("sk-exp-a-0123456789abcdef"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sticky_moves_only_the_users_of_a_target_that_goes_down() {
    let ups = [
        Upstream::start("a", Behaviour::Answer).await,
        Upstream::start("b", Behaviour::Answer).await,
        Upstream::start("c", Behaviour::Answer).await,
    ];
    let backends: String = ["a", "b", "c"]
        .iter()
        .zip(&ups)
        .map(|(n, u)| backend(n, &u.url, "    retries: 0\n"))
        .collect();
    let s = state(&backends, "a, b, c", "    strategy: sticky\n");
    let users: Vec<String> = (0..90).map(|i| format!("sticky-{i}")).collect();
    let mut before = Vec::new();
    for user in &users {
        before.push(
            chat(&s, as_user(user))
                .await
                .header("x-semroute-backend")
                .to_string(),
        );
    }
    for name in ["a", "b", "c"] {
        assert!(before.iter().any(|b| b == name), "nobody on {name}");
    }
    ups[2].set(Behaviour::status(503));
    for (user, was) in users.iter().zip(&before) {
        let now = chat(&s, as_user(user)).await;
        assert_eq!(now.status, StatusCode::OK);
        if was != "c" {
            assert_eq!(now.header("x-semroute-backend"), was, "{user} moved");
        } else {
            assert_ne!(now.header("x-semroute-backend"), "c");
        }
    }
}
