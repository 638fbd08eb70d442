//! Trying route changes before making them: shadow routes (a candidate config classifying
//! every prompt beside the live one, `GET /admin/shadow`) and what-if (`POST
//! /admin/whatif`: edits tried on prompts without touching the file).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use semroute::Router;
use semroute::embed::EmbedWorker;
use semroute::http::shadow::Shadow;
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, Engine, app};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const LIVE: &str = "\
routes:
  - name: weather
    utterances: [what is the weather like today, will it rain tomorrow]
  - name: billing
    utterances: [why was I charged twice, how do I update my credit card]
";

fn worker() -> EmbedWorker {
    common::worker()
}

fn ready(yaml: &str) -> (AppState, Engine) {
    let config = common::config_from(yaml);
    let worker = worker();
    let router = Router::build(config.clone(), worker.encoder()).unwrap();
    let engine = Engine {
        router: Arc::new(router),
        worker,
    };
    let state = AppState::new(Arc::new(config), DEFAULT_BODY_LIMIT);
    state.set_ready(engine.clone());
    (state, engine)
}

async fn send(state: &AppState, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(if body.is_null() {
            String::new()
        } else {
            body.to_string()
        }))
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn shadow_routes_compare_every_prompt_with_the_candidate() {
    let (state, engine) = ready(&format!("log_prompts: true\n{LIVE}"));
    // The candidate adds a route that takes the restaurant prompts.
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        format!(
            "{LIVE}  - name: dining\n    utterances: [book a table at a restaurant for dinner]\n"
        ),
    )
    .unwrap();
    state.set_shadow(Shadow::start(&candidate, &engine, true).unwrap());
    let prompts = [
        "is it going to rain this afternoon",
        "I was billed twice this month",
        "reserve a table for four at an italian restaurant",
        "book dinner at a steakhouse tonight",
    ];
    for text in prompts {
        let (status, _) = send(&state, "POST", "/classify", json!({"text": text})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let chat = json!({"messages": [{"role": "user", "content": "table for two at a sushi restaurant please"}]});
    assert_eq!(
        send(&state, "POST", "/classify", chat).await.0,
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let (status, report) = send(&state, "GET", "/admin/shadow", Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        if report["compared"] == 5 {
            break report;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        report["candidate"]
            .as_str()
            .unwrap()
            .ends_with("candidate.yaml")
    );
    assert_eq!(report["agreed"], 2, "{report}");
    assert!((report["agreement"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    let cells = report["confusion"].as_array().unwrap();
    let to_dining: u64 = cells
        .iter()
        .filter(|c| c["candidate"] == "dining")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(to_dining, 3, "{report}");
    let examples: Vec<&str> = cells
        .iter()
        .flat_map(|c| c["examples"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        examples.contains(&"book dinner at a steakhouse tonight"),
        "{report}"
    );
    let counted: u64 = report["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 5);
}

#[tokio::test]
async fn without_log_prompts_the_shadow_report_holds_no_prompt() {
    let (state, engine) = ready(LIVE);
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        LIVE.replace("will it rain tomorrow", "is it snowing"),
    )
    .unwrap();
    state.set_shadow(Shadow::start(&candidate, &engine, false).unwrap());
    let secret = "my card number is 4111 1111 1111 1111 why was I charged";
    send(&state, "POST", "/classify", json!({"text": secret})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, report) = send(&state, "GET", "/admin/shadow", Value::Null).await;
        if report["compared"] == 1 {
            assert!(!report.to_string().contains("4111"), "{report}");
            assert_eq!(report["agreed"], 1);
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_shadow_config_is_a_404_and_a_bad_one_is_refused_at_start() {
    let (state, engine) = ready(LIVE);
    let (status, body) = send(&state, "GET", "/admin/shadow", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--shadow")
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "routes: []\n").unwrap();
    assert!(Shadow::start(&bad, &engine, false).is_err());
    let other_model = dir.path().join("other.yaml");
    std::fs::write(&other_model, format!("encoder:\n  max_tokens: 32\n{LIVE}")).unwrap();
    let err = Shadow::start(&other_model, &engine, false).err().unwrap();
    assert!(err.contains("encoder"), "{err}");
}

#[tokio::test]
async fn what_if_lists_the_prompts_an_edit_would_move() {
    let (state, _) = ready(LIVE);
    let prompts = [
        "will it be sunny on saturday",
        "I was charged twice for one order",
        "refund my last payment",
    ];
    // Billing learns about refunds; weather's threshold goes up out of reach.
    let edits = json!([
        {"route": "billing", "utterances": ["why was I charged twice", "I want a refund for my payment"]},
        {"route": "weather", "threshold": 0.99}
    ]);
    let (status, answer) = send(
        &state,
        "POST",
        "/admin/whatif",
        json!({"edits": edits, "prompts": prompts}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["prompts"], 3);
    assert_eq!(answer["embedded"], 1, "only the new utterance: {answer}");
    let moved = answer["moved"].as_array().unwrap();
    let sunny = moved
        .iter()
        .find(|m| m["text"] == "will it be sunny on saturday")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(sunny["from"]["route"], "weather");
    assert_eq!(sunny["to"]["route"], Value::Null);
    assert!(
        moved
            .iter()
            .all(|m| m["text"] != "I was charged twice for one order")
    );
    assert_eq!(
        answer["unchanged"].as_u64().unwrap() + moved.len() as u64,
        3
    );
    // The live config did not change.
    let (_, routes) = send(&state, "GET", "/routes", Value::Null).await;
    assert!((routes["routes"][0]["threshold"].as_f64().unwrap() - 0.99).abs() > 0.1);
}

#[tokio::test]
async fn what_if_refuses_bad_edits_and_too_many_prompts() {
    let (state, _) = ready(LIVE);
    let cases = [
        json!({"edits": [{"route": "nope", "threshold": 0.5}], "prompts": ["x"]}),
        json!({"edits": [{"route": "weather", "threshold": 3}], "prompts": ["x"]}),
        json!({"edits": [{"route": "weather", "utterances": [""]}], "prompts": ["x"]}),
        json!({"edits": [{"route": "weather", "colour": "red"}], "prompts": ["x"]}),
        json!({"edits": [], "prompts": vec!["x"; 1001]}),
    ];
    for case in cases {
        let (status, body) = send(&state, "POST", "/admin/whatif", case.clone()).await;
        assert!(status.is_client_error(), "{case}: {status} {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn what_if_without_prompts_tries_the_recent_ones_kept_with_log_prompts() {
    let (state, _) = ready(&format!("log_prompts: true\n{LIVE}"));
    for text in [
        "will it be sunny on saturday",
        "I was charged twice for one order",
    ] {
        send(&state, "POST", "/classify", json!({"text": text})).await;
    }
    let edits = json!([{"route": "weather", "threshold": 0.99}]);
    let (status, answer) = send(&state, "POST", "/admin/whatif", json!({"edits": edits})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["prompts"], 2, "{answer}");
    assert_eq!(answer["moved"][0]["text"], "will it be sunny on saturday");
    // Without log_prompts nothing is kept, so there is nothing to try.
    let (off, _) = ready(LIVE);
    send(
        &off,
        "POST",
        "/classify",
        json!({"text": "will it be sunny"}),
    )
    .await;
    let (_, answer) = send(&off, "POST", "/admin/whatif", json!({"edits": edits})).await;
    assert_eq!(answer["prompts"], 0, "{answer}");
}
