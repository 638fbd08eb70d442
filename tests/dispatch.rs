//! Dispatch through `POST /v1/chat/completions` against real mock upstreams on 127.0.0.1:
//! each provider failure and what the client sees, fallback order, cooldowns, balancing,
//! data classes, streaming relay and the response headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod proxy;
mod upstream;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use proxy::*;
use semroute::http::{AppState, app};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tower::ServiceExt;
use upstream::{Behaviour, StreamEnd, Upstream};

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
        {"role": "user", "content": [{"type": "text", "text": "write a python function that sorts a list"}]}
    ]);
    let reply = chat(&s, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-route"), "code");
    let score: f32 = reply.header("x-semroute-score").parse().unwrap();
    assert!(score > 0.3, "{score}");
}

#[tokio::test]
async fn a_500_once_is_retried_on_the_same_backend() {
    let (a, b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    a.script([Behaviour::status(500)]);
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(reply.header("x-semroute-attempts"), "2");
    assert_eq!((a.count(), b.count()), (2, 0));
}

#[tokio::test]
async fn a_persistent_503_or_a_reset_falls_over_after_one_retry() {
    for failure in [Behaviour::status(503), Behaviour::Reset] {
        let (a, b, s) = pair(failure, Behaviour::Answer).await;
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(reply.header("x-semroute-attempts"), "3");
        assert_eq!(reply.json()["model"], "b-model");
        assert_eq!((a.count(), b.count()), (2, 1));
    }
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_waited_out_on_the_same_backend() {
    let (a, b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    a.script([Behaviour::Status {
        status: 429,
        retry_after: Some("1".into()),
        code: "rate_limit_exceeded",
    }]);
    let started = Instant::now();
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After"
    );
    assert_eq!((a.count(), b.count()), (2, 0));
}

#[tokio::test]
async fn a_429_with_a_long_or_no_retry_after_cools_the_backend_down() {
    for retry_after in [Some("120".to_string()), None] {
        let (a, _b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
        a.script([Behaviour::Status {
            status: 429,
            retry_after: retry_after.clone(),
            code: "rate_limit_exceeded",
        }]);
        let started = Instant::now();
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b", "{retry_after:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no waiting, no tight loop"
        );
        // While it cools down, the rate-limited backend is not asked again.
        let again = chat(&s, request("chat")).await;
        assert_eq!(again.header("x-semroute-backend"), "b");
        assert_eq!(again.header("x-semroute-attempts"), "1");
        assert_eq!(a.count(), 1, "{retry_after:?}");
    }
}

#[tokio::test]
async fn a_silent_backend_is_left_after_the_first_byte_timeout_without_a_retry() {
    for silence in [Behaviour::Silent] {
        let (a, _b, s) = pair(silence, Behaviour::Answer).await;
        let started = Instant::now();
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(a.count(), 1);
    }
}

#[tokio::test]
async fn context_length_falls_over_and_a_content_policy_400_goes_back_to_the_client() {
    let (a, b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    a.script([Behaviour::Status {
        status: 400,
        retry_after: None,
        code: "context_length_exceeded",
    }]);
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(
        (a.count(), b.count()),
        (1, 1),
        "no retry of the same backend"
    );

    a.script([Behaviour::Status {
        status: 400,
        retry_after: None,
        code: "content_policy_violation",
    }]);
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["code"], "content_policy_violation");
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(
        (a.count(), b.count()),
        (2, 1),
        "no fallback around a safety decision"
    );
}

#[tokio::test]
async fn when_every_target_fails_the_client_gets_one_combined_error() {
    let (_a, _b, s) = pair(Behaviour::status(503), Behaviour::Reset).await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let message = reply.error_message();
    assert!(
        message.contains("a: HTTP 503") && message.contains("b: connection failed"),
        "{message}"
    );
}

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
async fn a_backend_that_keeps_failing_cools_down_and_is_probed_back_in() {
    let (a, _b, s) = pair(Behaviour::Reset, Behaviour::Answer).await;
    for _ in 0..3 {
        assert_eq!(
            chat(&s, request("chat")).await.header("x-semroute-backend"),
            "b"
        );
    }
    let tried = a.count();
    assert_eq!(
        tried, 6,
        "two attempts per request until the breaker opened"
    );
    // Open: the fallback serves without touching a.
    assert_eq!(
        chat(&s, request("chat"))
            .await
            .header("x-semroute-attempts"),
        "1"
    );
    assert_eq!(a.count(), tried);
    // a recovers; after the cooldown one probe lets it back in.
    a.set(Behaviour::Answer);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        chat(&s, request("chat")).await.header("x-semroute-backend"),
        "a"
    );
    assert_eq!(
        chat(&s, request("chat")).await.header("x-semroute-backend"),
        "a"
    );
}

#[tokio::test]
async fn round_robin_spreads_requests_by_weight() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    weight: 3\n") + &backend("b", &b.url, "")),
        "a, b",
        "    strategy: round_robin\n",
    );
    for _ in 0..8 {
        assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    }
    assert_eq!((a.count(), b.count()), (6, 2));
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
    let response = app(s)
        .oneshot(Request::get("/v1/models").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "chat", "code", "a"]);
}

#[tokio::test]
async fn the_api_key_comes_from_the_environment_and_is_sent_as_a_bearer_token() {
    // SAFETY (test): set before any thread reads this variable; the name is unique to this test.
    unsafe { std::env::set_var("SEMROUTE_TEST_KEY_A", "sk-test-secret") };
    let a = Upstream::start("a", Behaviour::status(503)).await;
    let s = state(
        &backend("a", &a.url, "    api_key_env: SEMROUTE_TEST_KEY_A\n"),
        "a",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(
        a.received()[0].authorization.as_deref(),
        Some("Bearer sk-test-secret")
    );
    assert!(
        !reply.body.contains("sk-test-secret"),
        "never echoed in errors"
    );
}

#[tokio::test]
async fn a_stream_is_relayed_event_by_event_and_ends_with_done() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let reply = chat(&s, stream_request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let events = events(&reply.body);
    assert_eq!(content(&events), "Hello from a");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_malformed_event_is_skipped_and_a_missing_done_is_supplied() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    a.script([Behaviour::Stream {
        pieces: vec!["one ", "two"],
        end: StreamEnd::Malformed,
    }]);
    let events_seen = events(&chat(&s, stream_request("chat")).await.body);
    assert_eq!(content(&events_seen), "one two");
    assert!(events_seen.iter().all(|e| !e.contains("not json")));
    a.script([Behaviour::Stream {
        pieces: vec!["partial"],
        end: StreamEnd::NoDone,
    }]);
    let events_seen = events(&chat(&s, stream_request("chat")).await.body);
    assert_eq!(content(&events_seen), "partial");
    assert_eq!(events_seen.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_stream_silent_before_its_first_event_falls_over() {
    let (_a, _b, s) = pair(Behaviour::HeadersThenStall, Behaviour::Answer).await;
    let reply = chat(&s, stream_request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(content(&events(&reply.body)), "Hello from b");
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_with_a_failing_primary_are_all_answered() {
    let (_a, b, s) = pair(Behaviour::status(503), Behaviour::Answer).await;
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { chat(&s, request("chat")).await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(b.count(), 300);
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_continued_on_the_next_target_with_a_prefill() {
    for end in [StreamEnd::Cut, StreamEnd::Stall] {
        let (_a, b, s) = cut_after_hello_wor(
            end,
            Behaviour::Text {
                text: "Hello world, all is well.",
                prefill: true,
            },
        )
        .await;
        let reply = chat(&s, stream_request("chat")).await;
        let seen = events(&reply.body);
        assert_eq!(
            content(&seen),
            "Hello world, all is well.",
            "{end:?}: {}",
            reply.body
        );
        assert!(stream_error(&seen).is_none());
        assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
        // b was asked to continue the relayed text.
        let sent = &b.received()[0].body["messages"];
        assert_eq!(
            sent.as_array().unwrap().last().unwrap(),
            &json!({"role": "assistant", "content": "Hello wor"})
        );
    }
}

#[tokio::test]
async fn a_target_that_rejects_the_prefill_restarts_and_only_the_new_part_is_relayed() {
    let (_a, b, s) = cut_after_hello_wor(
        StreamEnd::Cut,
        Behaviour::Text {
            text: "Hello world, all is well.",
            prefill: false,
        },
    )
    .await;
    let seen = events(&chat(&s, stream_request("chat")).await.body);
    assert_eq!(content(&seen), "Hello world, all is well.");
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(b.count(), 2, "once with the prefill, once without");
}

#[tokio::test]
async fn a_stream_nothing_can_continue_ends_with_the_original_failure_not_a_clean_end() {
    // b restarts with a different answer: continuing would garble the text.
    let (_a, _b, s) = cut_after_hello_wor(
        StreamEnd::Cut,
        Behaviour::Text {
            text: "Goodbye.",
            prefill: false,
        },
    )
    .await;
    let seen = events(&chat(&s, stream_request("chat")).await.body);
    assert_eq!(content(&seen), "Hello wor");
    let error = stream_error(&seen).expect("an error event");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("from a was cut"),
        "the original failure: {message}"
    );
    assert!(!message.contains("prefill"));
    assert_ne!(seen.last().map(String::as_str), Some("[DONE]"));

    // With no target left at all, the same.
    let only = Upstream::start("only", Behaviour::Answer).await;
    only.script([Behaviour::Stream {
        pieces: vec!["Hi"],
        end: StreamEnd::Stall,
    }]);
    let s = state(&backend("only", &only.url, ""), "only", "");
    let seen = events(&chat(&s, stream_request("chat")).await.body);
    assert!(
        stream_error(&seen).unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled")
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    a.script([Behaviour::Stream {
        pieces: vec!["Hello"],
        end: StreamEnd::Stall,
    }]);
    let s = state(
        &backend("a", &a.url, "    stream_idle_timeout_ms: 10000\n"),
        "a",
        "",
    );
    let streaming = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(stream_request("chat").to_string()))
        .unwrap();
    let response = app(s.clone()).oneshot(streaming).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("Hello"));
    assert_eq!(a.closed(), 0);
    drop(body);
    // The relay sees the client go and drops the upstream request: the mock's connection
    // closes long before the 10 s idle timeout could have ended it.
    let started = Instant::now();
    while a.closed() == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.closed(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

async fn metrics_text(s: &AppState) -> String {
    let response = app(s.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn metrics_count_requests_attempts_fallbacks_tokens_and_cost() {
    let a = Upstream::start("a", Behaviour::status(503)).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "")
            + &backend(
                "b",
                &b.url,
                "    cost: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n",
            )),
        "a, b",
        "",
    );
    assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    let streamed = chat(&s, stream_request("code")).await;
    assert_eq!(streamed.status, StatusCode::OK);
    let text = metrics_text(&s).await;
    for line in [
        "semroute_requests_total{route=\"chat\",backend=\"b\",status=\"200\"} 1",
        "semroute_requests_total{route=\"code\",backend=\"b\",status=\"200\"} 1",
        // Failed attempts are attempts, never completions.
        "semroute_upstream_attempts_total{backend=\"a\",outcome=\"http_503\"} 4",
        "semroute_upstream_attempts_total{backend=\"b\",outcome=\"ok\"} 2",
        "semroute_fallbacks_total{route=\"chat\",backend=\"a\"} 1",
        // Usage of a non-streaming request (sent upstream as a stream, 10 + 5) and of a
        // streamed one (10 + 5).
        "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"prompt\"} 10",
        "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"completion\"} 5",
        "semroute_tokens_total{route=\"code\",backend=\"b\",kind=\"completion\"} 5",
        "semroute_cost_usd_total{route=\"chat\",backend=\"b\"} 0.00002",
        "semroute_upstream_ttfb_seconds_count{backend=\"a\"} 4",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "missing {line}:\n{text}"
        );
    }
    assert!(!text.contains("backend=\"a\",status=\"200\""));
}

#[tokio::test]
async fn with_every_target_cooling_down_for_long_the_answer_is_503_with_retry_after() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    a.script([Behaviour::Status {
        status: 429,
        retry_after: Some("120".into()),
        code: "rate_limit_exceeded",
    }]);
    let s = state(&backend("a", &a.url, ""), "a", "");
    assert_eq!(
        chat(&s, request("chat")).await.status,
        StatusCode::BAD_GATEWAY
    );
    let started = Instant::now();
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = reply.header("retry-after").parse().unwrap();
    assert!((110..=150).contains(&retry), "{retry}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    assert_eq!(a.count(), 1, "the cooling backend was not asked again");
    let text = metrics_text(&s).await;
    assert!(
        text.contains("semroute_cooldowns_total{backend=\"a\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn active_health_checks_take_a_down_backend_out_and_bring_it_back() {
    let a = Upstream::start("a", Behaviour::Reset).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    health_check_interval_ms: 100\n") + &backend("b", &b.url, "")),
        "a, b",
        "",
    );
    // Three failed checks open the breaker before any request arrives.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.header("x-semroute-attempts"), "1");
    assert_eq!(a.count(), 0, "requests never reached the down backend");
    // It recovers: the next passing check lets it back in, well before the cooldown's end.
    a.set(Behaviour::Answer);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        chat(&s, request("chat")).await.header("x-semroute-backend"),
        "a"
    );
}

async fn concurrently(s: &AppState, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                chat(&s, request("chat"))
                    .await
                    .header("x-semroute-backend")
                    .to_string()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn least_busy_spreads_concurrent_requests() {
    let slow = Behaviour::Slow(Duration::from_millis(200));
    let a = Upstream::start("a", slow.clone()).await;
    let b = Upstream::start("b", slow).await;
    let s = state(
        &(backend("a", &a.url, "") + &backend("b", &b.url, "")),
        "a, b",
        "    strategy: least_busy\n",
    );
    concurrently(&s, 6).await;
    assert_eq!((a.count(), b.count()), (3, 3));
}

#[tokio::test]
async fn latency_prefers_the_faster_backend() {
    let a = Upstream::start("a", Behaviour::Slow(Duration::from_millis(60))).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "") + &backend("b", &b.url, "")),
        "a, b",
        "    strategy: latency\n",
    );
    // One request to each (by name) seeds the latency estimates.
    chat(&s, request("a")).await;
    chat(&s, request("b")).await;
    for _ in 0..10 {
        assert_eq!(
            chat(&s, request("chat")).await.header("x-semroute-backend"),
            "b"
        );
    }
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn max_concurrent_sends_the_overflow_to_the_next_target() {
    let a = Upstream::start("a", Behaviour::Slow(Duration::from_millis(200))).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    max_concurrent: 1\n") + &backend("b", &b.url, "")),
        "a, b",
        "",
    );
    let answered = concurrently(&s, 3).await;
    assert_eq!(
        answered.iter().filter(|b| *b == "a").count(),
        1,
        "{answered:?}"
    );
    assert_eq!((a.count(), b.count()), (1, 2));
}

#[tokio::test]
async fn a_flapping_primary_never_costs_a_request() {
    let (a, _b, s) = pair(Behaviour::Answer, Behaviour::Answer).await;
    a.script([
        Behaviour::status(503),
        Behaviour::Answer,
        Behaviour::Reset,
        Behaviour::Answer,
        Behaviour::status(502),
        Behaviour::status(502),
        Behaviour::Answer,
    ]);
    let mut served = Vec::new();
    for _ in 0..5 {
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.status, StatusCode::OK);
        served.push(reply.header("x-semroute-backend").to_string());
    }
    // 503 then ok (retry), reset then ok (retry), 502 twice (fall over to b), ok, ok.
    assert_eq!(served, ["a", "a", "b", "a", "a"]);
}

#[tokio::test]
async fn with_every_target_cooling_down_briefly_the_request_waits_for_the_first_to_recover() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    a.script([Behaviour::Status {
        status: 429,
        retry_after: Some("1".into()),
        code: "rate_limit_exceeded",
    }]);
    // max_retry_after_ms 0: even a 1 s Retry-After cools the backend down instead of being
    // waited out within the request.
    let s = state(
        &backend("a", &a.url, "    max_retry_after_ms: 0\n"),
        "a",
        "",
    );
    assert_eq!(
        chat(&s, request("chat")).await.status,
        StatusCode::BAD_GATEWAY
    );
    let started = Instant::now();
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn a_target_that_ignores_the_prefill_and_starts_over_is_not_relayed_twice() {
    let (_a, b, s) = cut_after_hello_wor(
        StreamEnd::Cut,
        Behaviour::TextIgnoringPrefill("Hello world, all is well. And more."),
    )
    .await;
    let seen = events(&chat(&s, stream_request("chat")).await.body);
    assert_eq!(content(&seen), "Hello world, all is well. And more.");
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(b.count(), 1);
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
