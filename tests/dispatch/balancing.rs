//! Spreading requests over a route's targets: round robin by weight, least busy, lowest
//! latency, and `max_concurrent` sending the overflow on (an open stream counting as in
//! flight until it ends).

use crate::proxy::*;
use crate::upstream::{Behaviour, StreamEnd, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use semroute::http::{AppState, app};
use std::time::{Duration, Instant};
use tower::ServiceExt;

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
async fn a_stream_holds_its_backends_in_flight_count_until_it_ends() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    a.script([Behaviour::Stream {
        pieces: vec!["Hello"],
        end: StreamEnd::Stall,
    }]);
    let s = state(
        &(backend(
            "a",
            &a.url,
            "    max_concurrent: 1\n    stream_idle_timeout_ms: 10000\n",
        ) + &backend("b", &b.url, "")),
        "a, b",
        "",
    );
    let streaming = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(stream_request("chat").to_string()))
        .unwrap();
    let response = app(s.clone()).oneshot(streaming).await.unwrap();
    crate::common::openapi::check_head("POST", "/v1/chat/completions", &response);
    assert_eq!(response.headers()["x-semroute-backend"], "a");
    let mut stream = response.into_body();
    let first = stream.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("Hello"));

    // The stream is open (its first event came long ago): a is full.
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.header("x-semroute-attempts"), "1");
    assert_eq!((a.count(), b.count()), (1, 1));

    // Once the stream ends, a takes requests again.
    drop(stream);
    let started = Instant::now();
    while a.closed() == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.closed(), 1, "the upstream stream was not closed");
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(a.count(), 2);
}
