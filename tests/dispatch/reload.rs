//! A reload while requests are proxied: a stream in flight finishes on the config it
//! started with even when the reload removes its backend; breakers, cooldowns and a
//! backend's quota carry over to the new config for every backend that keeps its name.

use crate::common;
use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use semroute::http::AppState;
use std::path::Path;
use std::time::Duration;

fn routes(targets: &str) -> String {
    format!(
        "routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [{targets}]\ndefault_route: chat\n"
    )
}

/// Rewrites the file and reloads it (as `POST /admin/reload` does).
async fn reload(state: &AppState, dir: &Path, yaml: &str) {
    std::fs::write(dir.join("routes.yaml"), yaml).unwrap();
    let done = state.reload().await.unwrap();
    assert_eq!(done.result, "ok");
}

#[tokio::test]
async fn a_stream_in_flight_finishes_on_its_config_when_a_reload_removes_its_backend() {
    let text = "one two three four five six seven eight nine ten";
    let a = Upstream::start(
        "a",
        Behaviour::Paced {
            text,
            every: Duration::from_millis(60),
        },
    )
    .await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let both =
        backend("a", &a.url, "    stream_idle_timeout_ms: 2000\n") + &backend("b", &b.url, "");
    let s = common::reloadable(dir.path(), &format!("backends:\n{both}{}", routes("a")));
    let streaming = {
        let s = s.clone();
        tokio::spawn(async move { chat(&s, stream_request("chat")).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let only_b = backend("b", &b.url, "");
    reload(
        &s,
        dir.path(),
        &format!("backends:\n{only_b}{}", routes("b")),
    )
    .await;
    // New requests go by the new config at once...
    let after = chat(&s, request("chat")).await;
    assert_eq!(after.header("x-semroute-backend"), "b");
    // ... while the stream that started on `a` ends whole, from `a`.
    let reply = streaming.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let events = events(&reply.body);
    assert!(stream_error(&events).is_none(), "{}", reply.body);
    assert_eq!(
        content(&events).split_whitespace().count(),
        10,
        "{}",
        reply.body
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn a_backend_cooling_down_is_still_cooling_after_a_reload() {
    let a = Upstream::start("a", Behaviour::Reset).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let both = backend("a", &a.url, "") + &backend("b", &b.url, "");
    let s = common::reloadable(dir.path(), &format!("backends:\n{both}{}", routes("a, b")));
    for _ in 0..3 {
        assert_eq!(
            chat(&s, request("chat")).await.header("x-semroute-backend"),
            "b"
        );
    }
    let tried = a.count();
    // The same backends, another route's utterances and a new backend listed last.
    let c = Upstream::start("c", Behaviour::Answer).await;
    let three = both.clone() + &backend("c", &c.url, "");
    let edited =
        format!("backends:\n{three}{}", routes("a, b, c")).replace("how are you", "good morning");
    reload(&s, dir.path(), &edited).await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.header("x-semroute-attempts"), "1");
    assert_eq!(a.count(), tried, "the open breaker came through the reload");
}

#[tokio::test]
async fn a_backends_quota_is_not_reset_by_a_reload() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let both = backend("a", &a.url, "    limits: {rpm: 2}\n") + &backend("b", &b.url, "");
    let yaml = format!("backends:\n{both}{}", routes("a, b"));
    let s = common::reloadable(dir.path(), &yaml);
    for _ in 0..2 {
        assert_eq!(
            chat(&s, request("chat")).await.header("x-semroute-backend"),
            "a"
        );
    }
    reload(
        &s,
        dir.path(),
        &yaml.replace("how are you", "nice to meet you"),
    )
    .await;
    assert_eq!(
        chat(&s, request("chat")).await.header("x-semroute-backend"),
        "b"
    );
    assert_eq!(
        a.received().len(),
        2,
        "a's rpm counted on across the reload"
    );
    // The admin view says which config serves.
    let config = get_local(&s, "/admin/config").await.json();
    assert_eq!(config["generation"], 2);
    assert_eq!(config["backends"], 2);
}
