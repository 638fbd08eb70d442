//! The stream relay: events relayed one by one and ended with `[DONE]`, malformed events
//! skipped, a stream silent before its first event left for the next target, and a client
//! that goes away cancelling the upstream stream.

use crate::proxy::*;
use crate::upstream::{Behaviour, StreamEnd, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use semroute::http::app;
use std::time::{Duration, Instant};
use tower::ServiceExt;

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
    crate::common::openapi::check_head("POST", "/v1/chat/completions", &response);
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
