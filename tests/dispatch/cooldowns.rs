//! Backends taken out and let back in: cooldowns after a rate limit or repeated failures,
//! the probe that ends one, active health checks, the cap on a cooldown's length, and what
//! the client gets when every target is cooling down.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use std::time::{Duration, Instant};

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
async fn a_probe_answered_with_a_client_error_frees_the_slot_for_the_next_request() {
    let (a, _b, s) = pair(Behaviour::Reset, Behaviour::Answer).await;
    for _ in 0..3 {
        assert_eq!(
            chat(&s, request("chat")).await.header("x-semroute-backend"),
            "b"
        );
    }
    // Open: a is not asked.
    let tried = a.count();
    assert_eq!(
        chat(&s, request("chat"))
            .await
            .header("x-semroute-attempts"),
        "1"
    );
    assert_eq!(a.count(), tried);
    // After the cooldown, the probe gets a 404, which is the client's answer: no verdict on
    // the backend's health either way.
    a.set(Behaviour::Answer);
    a.script([Behaviour::Status {
        status: 404,
        retry_after: None,
        code: "model_not_found",
    }]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = chat(&s, request("chat")).await;
    assert_eq!(probe.status, StatusCode::NOT_FOUND, "{}", probe.body);
    assert_eq!(probe.header("x-semroute-backend"), "a");
    assert_eq!(probe.json()["error"]["code"], "model_not_found");
    // The slot was freed: the next request probes a again (and it is back in).
    for _ in 0..2 {
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-semroute-backend"), "a");
    }
    assert_eq!(a.count(), tried + 3);
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

#[tokio::test]
async fn a_backend_down_for_long_is_never_cooled_down_for_more_than_15_seconds() {
    // Health checks every 100 ms fail: each failure doubles the cooldown (1 s, 2 s, 4 s ...
    // over 100 s after a second), up to the cap.
    let a = Upstream::start("a", Behaviour::Reset).await;
    let s = state(
        &backend("a", &a.url, "    health_check_interval_ms: 100\n"),
        "a",
        "",
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    let retry: u64 = reply.header("retry-after").parse().unwrap();
    assert!((4..=15).contains(&retry), "cooling down for {retry} s");
    assert_eq!(a.count(), 0);
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
