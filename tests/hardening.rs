//! The proxy hardened (issue 9), through `POST /v1/chat/completions` against real mock
//! upstreams on 127.0.0.1: long answers that outlast the first-byte and whole-request
//! timeouts, tool calls that survive a cut stream, error events and HTML pages that are
//! failures and not answers, keys that never leak, probe slots and in-flight counts held
//! for as long as they should be, `GET /v1/models/{id}`, data classes no client can lower,
//! and prompts with nothing visible in them.
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
use upstream::{Behaviour, StreamEnd, TOOL_ARGUMENTS, Upstream};

/// Twelve words, one every 125 ms: an answer that takes 1.5 s to write.
const SLOW_TEXT: &str = "This answer takes a while to write, one word at a time.";
/// Fourteen words, one every 100 ms: a stream that outlasts a 500 ms `timeout_ms`.
const LONG_TEXT: &str =
    "A healthy stream keeps sending words at a steady pace for longer than timeout_ms.";
/// The pattern of a route that marks personal data (a US social security number).
const SSN_PATTERN: &str = r"\b\d{3}-\d{2}-\d{4}\b";

// --- Long answers: non-streaming requests go upstream as streams --------------------------

#[tokio::test]
async fn a_slow_non_streaming_answer_arrives_whole_from_one_upstream_request_sent_as_a_stream() {
    let slow = Behaviour::Paced {
        text: SLOW_TEXT,
        every: Duration::from_millis(125),
    };
    // first_byte_timeout_ms is 400: the whole answer takes 1.5 s.
    let (a, b, s) = pair_with(
        slow,
        Behaviour::Answer,
        "    stream_idle_timeout_ms: 1000\n",
    )
    .await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(reply.header("x-semroute-attempts"), "1");
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "chatcmpl-1");
    assert_eq!(body["model"], "a-model");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], SLOW_TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 22);
    // Asked once (billed once), as a stream that reports its usage.
    assert_eq!((a.count(), b.count()), (1, 0));
    let sent = &a.received()[0].body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn a_streamed_upstream_answer_is_reassembled_with_every_field_of_every_choice() {
    let chunk = |choices: Value| {
        json!({"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "a-model", "system_fingerprint": "fp_1", "choices": choices})
    };
    let a = Upstream::start(
        "a",
        Behaviour::Events(vec![
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Thinking "}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"reasoning_content": "it over."}, "finish_reason": null},
                         {"index": 1, "delta": {"role": "assistant", "refusal": "I can't "}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "Paris is "}, "finish_reason": null},
                         {"index": 1, "delta": {"refusal": "help with that."}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "the capital."}, "finish_reason": "stop"},
                         {"index": 1, "delta": {}, "finish_reason": "stop"}])),
            json!({"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}),
        ]),
    )
    .await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let mut body = request("chat");
    body["n"] = json!(2);
    let reply = chat(&s, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let completion = reply.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["id"], "chatcmpl-xyz");
    assert_eq!(completion["created"], 1_700_000_000);
    assert_eq!(completion["model"], "a-model");
    assert_eq!(completion["system_fingerprint"], "fp_1");
    let first = &completion["choices"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["message"]["role"], "assistant");
    assert_eq!(first["message"]["content"], "Paris is the capital.");
    assert_eq!(first["message"]["reasoning_content"], "Thinking it over.");
    assert_eq!(first["finish_reason"], "stop");
    let second = &completion["choices"][1];
    assert_eq!(second["index"], 1);
    assert_eq!(second["message"]["refusal"], "I can't help with that.");
    assert_eq!(second["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 7);
    assert_eq!(completion["usage"]["completion_tokens"], 9);
    assert_eq!(completion["usage"]["total_tokens"], 16);
}

#[tokio::test]
async fn with_upstream_stream_false_a_slow_plain_answer_within_timeout_ms_succeeds() {
    let slow = Behaviour::Paced {
        text: SLOW_TEXT,
        every: Duration::from_millis(125),
    };
    let (a, b, s) = pair_with(
        slow,
        Behaviour::Answer,
        "    upstream_stream: false\n    timeout_ms: 5000\n",
    )
    .await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!(reply.content(), SLOW_TEXT);
    assert_eq!((a.count(), b.count()), (1, 0));
    // The plain request, as the client sent it.
    let sent = &a.received()[0].body;
    assert!(sent.get("stream").is_none(), "{sent}");
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

#[tokio::test]
async fn with_upstream_stream_false_an_answer_slower_than_timeout_ms_falls_over() {
    let slow = Behaviour::Paced {
        text: SLOW_TEXT,
        every: Duration::from_millis(125),
    };
    let (a, b, s) = pair_with(
        slow,
        Behaviour::Answer,
        "    upstream_stream: false\n    timeout_ms: 600\n",
    )
    .await;
    let started = Instant::now();
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.content(), "Hello from b");
    assert_eq!((a.count(), b.count()), (1, 1), "a timeout is not retried");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

// --- Streams are bounded by silence, never by timeout_ms ---------------------------------

#[tokio::test]
async fn a_healthy_stream_longer_than_timeout_ms_is_relayed_whole_without_a_continuation() {
    let long = Behaviour::Paced {
        text: LONG_TEXT,
        every: Duration::from_millis(100),
    };
    // b would continue the text if a were cut: only the counts tell.
    let (a, b, s) = pair_with(
        long,
        Behaviour::Text {
            text: LONG_TEXT,
            prefill: true,
        },
        "    timeout_ms: 500\n",
    )
    .await;
    let reply = chat(&s, stream_request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-semroute-backend"), "a");
    let seen = events(&reply.body);
    assert_eq!(content(&seen), LONG_TEXT, "{}", reply.body);
    assert_eq!((a.count(), b.count()), (1, 0), "no continuation");
    assert!(stream_error(&seen).is_none(), "{}", reply.body);
    assert_eq!(finish_reasons(&seen), ["stop"]);
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));

    // A non-streaming client's request goes upstream as a stream: not bounded either.
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.content(), LONG_TEXT);
    assert_eq!((a.count(), b.count()), (2, 0), "no continuation");
}

#[tokio::test]
async fn max_stream_ms_breaks_off_a_stream_that_runs_longer_and_continues_it_on_the_next_target() {
    let long = Behaviour::Paced {
        text: LONG_TEXT,
        every: Duration::from_millis(100),
    };
    let (a, b, s) = pair_with(
        long,
        Behaviour::Text {
            text: LONG_TEXT,
            prefill: true,
        },
        "    max_stream_ms: 500\n",
    )
    .await;
    let reply = chat(&s, stream_request("chat")).await;
    let seen = events(&reply.body);
    assert_eq!(content(&seen), LONG_TEXT, "{}", reply.body);
    assert!(stream_error(&seen).is_none(), "{}", reply.body);
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
    assert_eq!((a.count(), b.count()), (1, 1));
    // b continued from what a had sent by then.
    let messages = b.received()[0].body["messages"].as_array().unwrap().clone();
    let prefill = messages.last().unwrap();
    assert_eq!(prefill["role"], "assistant");
    let prefill = prefill["content"].as_str().unwrap();
    assert!(
        !prefill.is_empty() && prefill.len() < LONG_TEXT.len() && LONG_TEXT.starts_with(prefill),
        "{prefill:?}"
    );
}

// --- Tool calls survive a cut stream ------------------------------------------------------

#[tokio::test]
async fn a_tool_call_cut_mid_arguments_reaches_a_streaming_client_once_and_whole() {
    let (a, b, s) = pair(
        Behaviour::ToolCall { cut: true },
        Behaviour::ToolCall { cut: false },
    )
    .await;
    let reply = chat(&s, stream_request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = events(&reply.body);
    assert!(stream_error(&seen).is_none(), "{}", reply.body);
    let calls = streamed_tool_calls(&seen);
    assert_eq!(calls.len(), 1, "{}", reply.body);
    let (name, arguments) = &calls[&0];
    assert_eq!(name, "get_weather", "{}", reply.body);
    let arguments: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}"));
    assert_eq!(
        arguments,
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    assert_eq!(finish_reasons(&seen), ["tool_calls"]);
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
    // The call was restarted on b, not continued with a prefill.
    assert!(a.count() >= 1);
    assert_eq!(b.count(), 1);
    assert_eq!(
        b.received()[0].body["messages"],
        stream_request("chat")["messages"]
    );
}

#[tokio::test]
async fn a_tool_call_cut_mid_arguments_reaches_a_non_streaming_client_once_and_whole() {
    let (_a, b, s) = pair(
        Behaviour::ToolCall { cut: true },
        Behaviour::ToolCall { cut: false },
    )
    .await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = reply.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments)
            .unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}")),
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    assert_eq!(b.count(), 1);
}

// --- Error events and pages that are not answers -------------------------------------------

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
async fn an_error_event_mid_stream_is_continued_on_the_next_target() {
    let (_a, b, s) = cut_after_hello_wor(
        StreamEnd::Error,
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
        "{}",
        reply.body
    );
    assert!(stream_error(&seen).is_none(), "{}", reply.body);
    assert!(
        !reply.body.contains("server had an error"),
        "{}",
        reply.body
    );
    assert_eq!(seen.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        b.received()[0].body["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!({"role": "assistant", "content": "Hello wor"})
    );

    // The same for a non-streaming client.
    let (_a, _b, s) = cut_after_hello_wor(
        StreamEnd::Error,
        Behaviour::Text {
            text: "Hello world, all is well.",
            prefill: true,
        },
    )
    .await;
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.content(), "Hello world, all is well.");
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

// --- Keys and URLs never reach the client ------------------------------------------------

#[tokio::test]
async fn a_backend_refusing_its_key_falls_over_cools_down_and_its_key_never_reaches_the_client() {
    for (status, variable, key) in [
        (
            401,
            "SEMROUTE_HARDENING_KEY_401",
            "sk-hardening-401-d3adb33f",
        ),
        (
            403,
            "SEMROUTE_HARDENING_KEY_403",
            "sk-hardening-403-f00dface",
        ),
    ] {
        // SAFETY (test): set before the app that reads it is built; the name is unique to
        // this test.
        unsafe { std::env::set_var(variable, key) };
        let (a, b, s) = pair_with(
            Behaviour::EchoKey(status),
            Behaviour::Answer,
            &format!("    api_key_env: {variable}\n"),
        )
        .await;
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{status}: {}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(reply.content(), "Hello from b");
        assert!(!reply.shows(key), "{status}: the key leaked");
        // The upstream did get the key (and quoted it back): the check above means something.
        assert_eq!(
            a.received()[0].authorization.as_deref(),
            Some(format!("Bearer {key}").as_str())
        );
        assert_eq!((a.count(), b.count()), (1, 1), "{status}: no retry");

        // Cooling down: the next requests, streaming or not, do not ask a again.
        let reply = chat(&s, stream_request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(reply.header("x-semroute-attempts"), "1");
        assert!(!reply.shows(key));
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(
            a.count(),
            1,
            "{status}: the refused backend was asked again"
        );
    }
}

#[tokio::test]
async fn a_lone_backend_refusing_its_key_gives_a_502_naming_it_without_its_url_or_key() {
    let (variable, key) = ("SEMROUTE_HARDENING_KEY_ONLY", "sk-hardening-only-c0ffee42");
    // SAFETY (test): set before the app that reads it is built; the name is unique to this test.
    unsafe { std::env::set_var(variable, key) };
    let a = Upstream::start("keyed", Behaviour::EchoKey(401)).await;
    let s = state(
        &backend("keyed", &a.url, &format!("    api_key_env: {variable}\n")),
        "keyed",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    let message = reply.error_message();
    assert!(message.contains("keyed"), "{message}");
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains(&a.url), "{message}");
    assert!(!reply.shows(key), "the key leaked: {}", reply.body);

    // A minute's cooldown: the next request is not sent and says when to come back.
    let reply = chat(&s, request("chat")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    let retry: u64 = reply.header("retry-after").parse().unwrap();
    assert!((50..=61).contains(&retry), "{retry}");
    assert!(!reply.shows(key));
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn an_error_body_quoting_the_key_is_withheld_when_the_error_goes_to_the_client() {
    let (variable, key) = ("SEMROUTE_HARDENING_KEY_400", "sk-hardening-400-8badf00d");
    // SAFETY (test): set before the app that reads it is built; the name is unique to this test.
    unsafe { std::env::set_var(variable, key) };
    let a = Upstream::start("a", Behaviour::EchoKey(400)).await;
    let s = state(
        &backend("a", &a.url, &format!("    api_key_env: {variable}\n")),
        "a",
        "",
    );
    for body in [request("chat"), stream_request("chat")] {
        let reply = chat(&s, body).await;
        // A 400 is the client's to see, but not with the key in it.
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert!(!reply.shows(key), "the key leaked: {}", reply.body);
        assert!(reply.json()["error"].is_object(), "{}", reply.body);
    }
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn error_messages_name_the_backends_that_failed_and_never_their_urls() {
    let primary = Upstream::start("primary", Behaviour::Reset).await;
    let silent = Upstream::start("quiet", Behaviour::Silent).await;
    // Nothing listens here: the connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let s = state(
        &(backend("primary", &primary.url, "")
            + &backend("quiet", &silent.url, "")
            + &backend("refusing", &closed, "")),
        "primary, quiet, refusing",
        "",
    );
    for body in [request("chat"), stream_request("chat")] {
        let reply = chat(&s, body).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
        let message = reply.error_message();
        for name in ["primary", "quiet", "refusing"] {
            assert!(message.contains(&format!("{name}: ")), "{message}");
        }
        assert!(!message.contains("127.0.0.1"), "{message}");
        assert!(!message.contains("http://"), "{message}");
    }
}

// --- Health: probe slots, cooldowns and in-flight counts ---------------------------------

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

// --- GET /v1/models/{id} -----------------------------------------------------------------

#[tokio::test]
async fn a_model_is_retrieved_by_its_id_for_auto_a_route_and_a_backend() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    for id in ["auto", "chat", "code", "a"] {
        let reply = get(&s, &format!("/v1/models/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.body);
        let model = reply.json();
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
        assert!(model["owned_by"].is_string(), "{model}");
        assert!(model["created"].is_number(), "{model}");
    }
    let reply = get(&s, "/v1/models/gpt-9").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error_message().contains("gpt-9"), "{}", reply.body);
}

// --- Data classes --------------------------------------------------------------------------

#[tokio::test]
async fn a_data_class_header_can_raise_a_routes_class_but_never_lower_it() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    data_classes: [public]\n")
            + &backend("b", &b.url, "    data_classes: [public, internal]\n")),
        "a, b",
        "    data_class: internal\n",
    );
    for header in [None, Some("public"), Some("internal")] {
        let reply = chat_with(&s, request("chat"), header).await;
        assert_eq!(reply.status, StatusCode::OK, "{header:?}: {}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b", "{header:?}");
    }
    assert_eq!(
        a.count(),
        0,
        "the public-only backend got an internal request"
    );
    // Raised to pii, which no target accepts: refused, saying it was the header.
    let reply = chat_with(&s, request("chat"), Some("pii")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    let message = reply.error_message();
    assert!(
        message.contains("`pii`") && message.contains("header"),
        "{message}"
    );
    assert_eq!((a.count(), b.count()), (0, 3));
}

/// Backends `open` (public only) and `local` (up to pii); routes `chat` (both) and
/// `personal` (a pattern for social security numbers, class pii, `local` only).
async fn personal_data_setup() -> (Upstream, Upstream, AppState) {
    let open = Upstream::start("open", Behaviour::Answer).await;
    let local = Upstream::start("local", Behaviour::Answer).await;
    let s = state_from(&format!(
        "backends:\n{}{}routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [open, local]\n  - name: personal\n    patterns: ['{SSN_PATTERN}']\n    targets: [local]\n    data_class: pii\ndefault_route: chat\n",
        backend("open", &open.url, "    data_classes: [public]\n"),
        backend(
            "local",
            &local.url,
            "    data_classes: [public, internal, pii]\n"
        ),
    ));
    (open, local, s)
}

#[tokio::test]
async fn a_pattern_anywhere_in_the_conversation_sets_its_class_whatever_model_names() {
    let (open, local, s) = personal_data_setup().await;
    for earlier in [
        json!({"role": "system", "content": "The customer's SSN is 123-45-6789."}),
        json!({"role": "assistant", "content": [{"type": "text", "text": "Noted: 123-45-6789."}]}),
    ] {
        let messages = json!([earlier, {"role": "user", "content": "hello there"}]);
        // Routed by the last user message to `chat`, named as `chat`, with a header saying
        // public: each goes to the backend that accepts pii.
        for (model, header) in [("auto", None), ("chat", None), ("chat", Some("public"))] {
            let body = json!({"model": model, "messages": messages});
            let reply = chat_with(&s, body, header).await;
            assert_eq!(reply.status, StatusCode::OK, "{model}: {}", reply.body);
            assert_eq!(reply.header("x-semroute-route"), "chat");
            assert_eq!(reply.header("x-semroute-backend"), "local", "{model}");
        }
        // Naming the public-only backend does not skip the scan: refused, naming the rule.
        let body = json!({"model": "open", "messages": messages});
        let reply = chat_with(&s, body, Some("public")).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
        let message = reply.error_message();
        assert!(
            message.contains("`pii`")
                && message.contains("pattern")
                && message.contains("personal"),
            "{message}"
        );
    }
    assert_eq!(
        open.count(),
        0,
        "personal data reached the public-only backend"
    );
    assert_eq!(local.count(), 6);
    // Without the pattern, the public-only backend is used as usual.
    let reply = chat(&s, request("open")).await;
    assert_eq!(reply.header("x-semroute-backend"), "open");
}

#[tokio::test]
async fn once_data_classes_are_used_a_backend_without_a_list_gets_only_public_requests() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    // Only b lists classes; a lists none.
    let s = state(
        &(backend("a", &a.url, "")
            + &backend("b", &b.url, "    data_classes: [public, internal]\n")),
        "a, b",
        "",
    );
    let reply = chat_with(&s, request("chat"), Some("internal")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    let reply = chat_with(&s, request("a"), Some("internal")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(
        a.count(),
        0,
        "an internal request reached a backend without a list"
    );
    let reply = chat_with(&s, request("chat"), Some("public")).await;
    assert_eq!(reply.header("x-semroute-backend"), "a");
    assert_eq!((a.count(), b.count()), (1, 1));
}

// --- Prompts with nothing to route by ----------------------------------------------------

#[tokio::test]
async fn a_prompt_of_only_invisible_characters_is_refused_with_422() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    for text in [
        "\u{0}\u{0}\u{0}",
        "\u{200B}\u{200B}\u{200C}",
        " \u{FEFF}\u{200D}\n\u{0}",
    ] {
        for content in [json!(text), json!([{"type": "text", "text": text}])] {
            let body = json!({"model": "auto", "messages": [{"role": "user", "content": content}]});
            let reply = chat(&s, body).await;
            assert_eq!(
                reply.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{text:?}: {}",
                reply.body
            );
            assert!(reply.error_message().contains("visible"), "{}", reply.body);
        }
    }
    assert_eq!(a.count(), 0);
}

// --- Found by trying to break it ------------------------------------------------------------

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
async fn a_key_quoted_in_an_error_event_or_escaped_in_an_error_body_never_reaches_the_client() {
    // SAFETY (test): set before any thread reads this variable; the name is unique to this test.
    unsafe {
        std::env::set_var(
            "SEMROUTE_TEST_KEY_ESCAPED",
            "sk-test-escaped-0123456789abcdef",
        )
    };
    let key = "sk-test-escaped-0123456789abcdef";
    let a = Upstream::start("a", Behaviour::EchoKeyEvent).await;
    let s = state(
        &backend(
            "a",
            &a.url,
            "    api_key_env: SEMROUTE_TEST_KEY_ESCAPED\n    retries: 0\n",
        ),
        "a",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert!(
        !reply.shows(key) && !reply.shows("0123456789abcdef"),
        "{}",
        reply.body
    );
    assert!(reply.error_message().contains("withheld"), "{}", reply.body);

    a.set(Behaviour::EchoKeyEscaped(400));
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let decoded = reply.json().to_string();
    assert!(!decoded.contains("0123456789abcdef"), "{decoded}");
    assert_eq!(reply.json()["error"]["code"], "bad_request");
}

#[tokio::test]
async fn every_data_class_header_counts_and_the_strictest_wins() {
    let open = Upstream::start("open", Behaviour::Answer).await;
    let local = Upstream::start("local", Behaviour::Answer).await;
    let s = state(
        &(backend("open", &open.url, "    data_classes: [public]\n")
            + &backend("local", &local.url, "    data_classes: [public, pii]\n")),
        "open, local",
        "",
    );
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-semroute-data-class", "public")
        .header("x-semroute-data-class", "pii")
        .body(Body::from(request("chat").to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "local");
    assert_eq!(open.count(), 0);
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

#[tokio::test]
async fn every_stream_is_counted_but_a_client_gets_usage_only_if_it_asked() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = state(&backend("a", &a.url, ""), "a", "");
    let plain = chat(&s, stream_request("chat")).await;
    let usage_events = |body: &str| {
        events(body)
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter(|e| e["usage"].is_object())
            .count()
    };
    assert_eq!(usage_events(&plain.body), 0, "{}", plain.body);
    assert_eq!(
        a.received()[0].body["stream_options"],
        json!({"include_usage": true}),
        "usage is asked for upstream all the same"
    );
    let mut asking = stream_request("chat");
    asking["stream_options"] = json!({"include_usage": true});
    let reply = chat(&s, asking).await;
    assert_eq!(usage_events(&reply.body), 1, "{}", reply.body);
    let metrics = get(&s, "/metrics").await.body;
    assert!(
        metrics.contains(
            "semroute_tokens_total{route=\"chat\",backend=\"a\",kind=\"completion\"} 10\n"
        ),
        "both streams counted: {metrics}"
    );
}
