//! The server on a real socket: slow or idle clients are disconnected by the header, body
//! and idle timeouts, and a shutdown drains for at most its timeout, ending open streams with
//! an error event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod upstream;

use common::serving::start;
use semroute::http::server::Limits;
use semroute::http::{AppState, DEFAULT_BODY_LIMIT};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upstream::{Behaviour, StreamEnd, Upstream};

fn no_backends() -> AppState {
    let config = common::config_from("routes:\n  - name: a\n    utterances: [hello]\n");
    AppState::new(Arc::new(config), DEFAULT_BODY_LIMIT)
}

fn limits(header: u64, idle: u64, shutdown: u64) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        shutdown_timeout: Duration::from_millis(shutdown),
        ..Limits::default()
    }
}

/// Reads until the server closes the connection (or `limit` passes): what was read, and
/// whether it closed.
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_disconnected_after_the_header_timeout() {
    let server = start(no_backends(), limits(500, 60_000, 1_000)).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for byte in b"x-slow: 1234567890123456789012345678901234567890".iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        closed = read_until_closed(&mut slow, Duration::from_secs(3)).await.1;
    }
    assert!(closed, "the trickling connection is still open");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile.
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut other, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    common::openapi::check_raw("GET", "/healthz", &reply);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_not_before() {
    let server = start(no_backends(), limits(10_000, 600, 1_000)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    for _ in 0..2 {
        client.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(3), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Kept alive: the second request on the same connection is answered too.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut client, Duration::from_secs(4)).await;
    assert!(closed, "the idle connection is still open");
    assert!(
        idle_from.elapsed() >= Duration::from_millis(400),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let state = no_backends().with_body_timeout(Duration::from_millis(500));
    let server = start(state, limits(10_000, 60_000, 1_000)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"text\":")
        .await
        .unwrap();
    let started = Instant::now();
    let (reply, _) = read_until_closed(&mut client, Duration::from_secs(4)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    common::openapi::check_raw("POST", "/classify", &reply);
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_stuck_in_a_partial_request() {
    let mut server = start(no_backends(), limits(30_000, 60_000, 500)).await;
    let mut stuck = TcpStream::connect(server.addr).await.unwrap();
    stuck
        .write_all(b"POST /classify HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the server stopped")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Nothing is accepted any more.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_short_requests_finish_and_ends_a_stream_still_open_with_an_error_event() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    a.script([Behaviour::Stream {
        pieces: vec!["Hello"],
        end: StreamEnd::Stall,
    }]);
    let yaml = format!(
        "backends:\n  - name: a\n    url: {}\n    model: m\n    stream_idle_timeout_ms: 60000\nroutes:\n  - name: chat\n    utterances: [hello]\n    targets: [a]\n",
        a.url
    );
    let state = AppState::new(Arc::new(common::config_from(&yaml)), DEFAULT_BODY_LIMIT);
    let mut server = start(state, limits(10_000, 60_000, 800)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let body = r#"{"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    client
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The first event arrives, then the upstream stalls.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    let (rest, closed) = read_until_closed(&mut client, Duration::from_secs(6)).await;
    assert!(closed);
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(rest.contains("\"error\""), "{rest}");
    assert!(!rest.contains("[DONE]"), "never a clean end: {rest}");
    common::openapi::check_raw(
        "POST",
        "/v1/chat/completions",
        &String::from_utf8_lossy(&seen),
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "it waited for the drain time: {:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the server stopped")
        .unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_rest_still_served() {
    let server = start(
        no_backends(),
        Limits {
            max_connections: 3,
            ..limits(10_000, 60_000, 1_000)
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut extra, Duration::from_secs(3)).await;
    assert!(closed, "the connection past the limit was kept");
    // One held connection goes; a new one is served.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut client, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    common::openapi::check_raw("GET", "/healthz", &reply);
}
