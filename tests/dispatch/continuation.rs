//! A stream broken mid-answer (cut, stalled, or ended by an error event) continued on the
//! next target with what was relayed as a prefill; targets that refuse or ignore the
//! prefill; the original failure when nothing can continue; tool calls, which are restarted
//! and reach the client once and whole.

use crate::proxy::*;
use crate::upstream::{Behaviour, StreamEnd, TOOL_ARGUMENTS, Upstream};
use axum::http::StatusCode;
use serde_json::{Value, json};

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
