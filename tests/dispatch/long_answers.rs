//! Long answers: a non-streaming request goes upstream as a stream and is reassembled, so
//! a slow answer outlasts the first-byte timeout; `timeout_ms` bounds only plain upstream
//! answers; streams are bounded by silence and by `max_stream_ms`.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Twelve words, one every 125 ms: an answer that takes 1.5 s to write.
const SLOW_TEXT: &str = "This answer takes a while to write, one word at a time.";

/// Fourteen words, one every 100 ms: a stream that outlasts a 500 ms `timeout_ms`.
const LONG_TEXT: &str =
    "A healthy stream keeps sending words at a steady pace for longer than timeout_ms.";

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
