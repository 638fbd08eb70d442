//! Failed attempts: which are retried on the same backend, which fall over to the next
//! target and which go back to the client; one combined error when every target fails;
//! and answers that are failures though they come with a 200 (an error event before any
//! content, an HTML page, a redirect, an answer that never ends).

use crate::proxy::*;
use crate::upstream::{Behaviour, StreamEnd, Upstream};
use axum::http::StatusCode;
use std::time::{Duration, Instant};

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
async fn an_error_event_before_any_content_is_a_failed_attempt_that_falls_over() {
    let failing = Behaviour::Stream {
        pieces: vec![],
        end: StreamEnd::Error,
    };
    let (a, b, s) = pair(failing, Behaviour::Answer).await;
    let reply = chat(&s, stream_request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    let seen = events(&reply.body);
    assert_eq!(content(&seen), "Hello from b");
    assert!(stream_error(&seen).is_none(), "{}", reply.body);
    assert!(
        !reply.body.contains("server had an error"),
        "{}",
        reply.body
    );
    // Retried once on a, like a 5xx, then b.
    assert_eq!((a.count(), b.count()), (2, 1));

    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.content(), "Hello from b");
}

#[tokio::test]
async fn an_html_page_with_status_200_is_a_failed_attempt_not_an_answer() {
    for (extra, stream) in [
        ("", false),
        ("", true),
        ("    upstream_stream: false\n", false),
    ] {
        let case = format!("{extra:?} stream: {stream}");
        let (a, b, s) = pair_with(Behaviour::Html, Behaviour::Answer, extra).await;
        let body = if stream {
            stream_request("chat")
        } else {
            request("chat")
        };
        let reply = chat(&s, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{case}: {}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b", "{case}");
        let text = if stream {
            content(&events(&reply.body))
        } else {
            reply.content()
        };
        assert_eq!(text, "Hello from b", "{case}");
        assert!(!reply.body.contains("<html"), "{case}: {}", reply.body);
        assert_eq!((a.count(), b.count()), (1, 1), "{case}");
    }
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_and_never_followed_to_a_host_the_config_does_not_name() {
    let elsewhere = Upstream::start("elsewhere", Behaviour::Answer).await;
    let (a, b, s) = pair(
        Behaviour::Redirect(format!("{}/chat/completions", elsewhere.url)),
        Behaviour::Answer,
    )
    .await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(
        elsewhere.count(),
        0,
        "the conversation never left the configured backends"
    );
    assert!(a.count() >= 1 && b.count() == 1);
}

#[tokio::test]
async fn an_answer_that_never_ends_is_cut_off_at_16_mib_instead_of_filling_memory() {
    let a = Upstream::start("a", Behaviour::Endless).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.error_message().contains("grew past 16 MiB"),
        "{}",
        reply.error_message()
    );
    let streamed = chat(&s, stream_request("chat")).await;
    let seen = events(&streamed.body);
    let error = stream_error(&seen).expect("an error event");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grew past")
    );
}
