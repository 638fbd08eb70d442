//! Conversation routing through `POST /classify` with `messages`, on the four routes of
//! `tests/data/conversation-routes.yaml` with the real model: a follow-up stays on the
//! conversation's route, a message that names another domain switches, `mode: last`
//! decides alone, a conversation with nothing to route by is refused, a long one is read
//! only as far as `history_turns`, and the same conversation always gets the same answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::Router;
use semroute::embed::EmbedWorker;
use semroute::http::{AppState, DEFAULT_BODY_LIMIT, app};
use serde_json::{Value, json};
use std::sync::Arc;

const ROUTES: &str = "tests/data/conversation-routes.yaml";

/// A first turn that clearly books a restaurant, the assistant's question, and a reply
/// that means nothing alone.
const BOOK: &str = "I'd like to book a table for four at an Italian restaurant downtown tonight.";
const ASK_TIME: &str = "Sure. What time would you like the reservation?";
const FOLLOW_UP: &str = "Yes, 7 pm works for me.";
const CONFIRMED: &str = "Done: a table for four at Trattoria Roma at 7 pm.";
/// A message that clearly names another domain.
const RAIN: &str = "Will it rain in Chicago tonight?";

fn worker() -> EmbedWorker {
    common::worker()
}

/// A ready app over the conversation routes with `extra` YAML appended (a `conversation:`
/// section); each has its own router, and so its own score cache.
fn state_with(extra: &str) -> AppState {
    let routes = std::fs::read_to_string(common::repo().join(ROUTES)).unwrap();
    let config = common::config_from(&format!("{routes}\n{extra}"));
    let router = Router::build(config, common::encoder()).unwrap();
    AppState::ready(Arc::new(router), worker(), DEFAULT_BODY_LIMIT)
}

fn state() -> AppState {
    state_with("")
}

/// The messages of a chat whose turns alternate user, assistant, user...
fn chat(turns: &[&str]) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": text})
        })
        .collect();
    Value::Array(messages)
}

async fn classify_on(state: &AppState, body: Value) -> (StatusCode, Value) {
    let request = Request::post("/classify")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, bytes) = common::openapi::oneshot(app(state.clone()), request).await;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("body is not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

/// `POST /classify` with `messages`, which must answer 200.
async fn classify_chat(state: &AppState, messages: Value) -> Value {
    let (status, body) = classify_on(state, json!({ "messages": messages })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["conversation"].is_object(), "{body}");
    body
}

#[tokio::test]
async fn a_follow_up_stays_on_the_route_of_the_first_turn() {
    let s = state();
    let body = classify_chat(&s, chat(&[BOOK, ASK_TIME, FOLLOW_UP])).await;
    let c = &body["conversation"];
    assert_eq!(body["route"], "restaurants", "{body}");
    assert_eq!(body["matched_by"], "conversation", "{body}");
    assert_eq!(c["outcome"], "stuck", "{body}");
    assert_eq!(c["previous_route"], "restaurants", "{body}");
    // Alone, the reply is not a restaurant booking: the conversation made the decision.
    let alone = &c["without_context"];
    assert_ne!(
        (&alone["route"], &alone["matched_by"]),
        (&json!("restaurants"), &json!("semantic")),
        "{body}"
    );
    assert_ne!(alone["matched_by"], "conversation", "{body}");
    let (status, lone) = classify_on(&s, json!({ "text": FOLLOW_UP })).await;
    assert_eq!(status, StatusCode::OK, "{lone}");
    assert_eq!(
        (&lone["route"], &lone["matched_by"]),
        (&alone["route"], &alone["matched_by"]),
        "without_context is what the message gets alone"
    );
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(2), Some(3))
    );
    // The belief is a probability distribution over the routes, best first, led by the
    // decision.
    let context = c["context"].as_array().unwrap();
    assert_eq!(context[0]["route"], "restaurants", "{body}");
    let p: Vec<f64> = context
        .iter()
        .map(|r| r["probability"].as_f64().unwrap())
        .collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]), "{p:?}");
    assert!(
        p[0] > 0.5 && (p.iter().sum::<f64>() - 1.0).abs() < 1e-3,
        "{p:?}"
    );
    // The score reported is the chosen route's, with its threshold.
    assert!(body["score"].is_number() && body["threshold"].is_number());
}

#[tokio::test]
async fn a_message_that_names_another_domain_switches() {
    let s = state();
    let body = classify_chat(&s, chat(&[BOOK, ASK_TIME, FOLLOW_UP, CONFIRMED, RAIN])).await;
    let c = &body["conversation"];
    assert_eq!(body["route"], "weather", "{body}");
    assert_eq!(c["outcome"], "switched", "{body}");
    assert_eq!(c["previous_route"], "restaurants", "{body}");
    assert_eq!(c["without_context"]["route"], "weather", "{body}");
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(3), Some(5))
    );
    // And the conversation then follows the new subject.
    let body = classify_chat(
        &s,
        chat(&[
            BOOK,
            ASK_TIME,
            FOLLOW_UP,
            CONFIRMED,
            RAIN,
            "Light showers are expected after 8 pm.",
            "What about tomorrow morning?",
        ]),
    )
    .await;
    assert_eq!(body["route"], "weather", "{body}");
    assert_eq!(body["conversation"]["outcome"], "stuck", "{body}");
    assert_eq!(body["conversation"]["previous_route"], "weather", "{body}");
}

#[tokio::test]
async fn a_first_turn_starts_the_conversation_and_decides_as_text_does() {
    let s = state();
    // System messages are not turns.
    let messages = json!([
        {"role": "system", "content": "You are a concierge."},
        {"role": "user", "content": BOOK},
    ]);
    let body = classify_chat(&s, messages).await;
    let c = &body["conversation"];
    assert_eq!(c["outcome"], "started", "{body}");
    assert_eq!(c["previous_route"], Value::Null, "{body}");
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["route"], "restaurants", "{body}");
    assert_eq!(body["matched_by"], "semantic", "{body}");
    let (status, text) = classify_on(&s, json!({ "text": BOOK })).await;
    assert_eq!(status, StatusCode::OK);
    for key in ["route", "score", "matched_by", "margin", "candidates"] {
        assert_eq!(body[key], text[key], "{key}");
    }
    assert_eq!(c["without_context"]["route"], text["route"]);
    assert_eq!(c["without_context"]["score"], text["score"]);
    assert!(text.get("conversation").is_none(), "{text}");
}

#[tokio::test]
async fn with_mode_last_the_follow_up_is_decided_alone() {
    let s = state_with("conversation:\n  mode: last\n");
    let body = classify_chat(&s, chat(&[BOOK, ASK_TIME, FOLLOW_UP])).await;
    let c = &body["conversation"];
    assert_ne!(body["matched_by"], "conversation", "{body}");
    assert_ne!(body["route"], "restaurants", "{body}");
    assert_eq!(c["outcome"], "started", "{body}");
    assert_eq!(c["previous_route"], Value::Null, "{body}");
    assert_eq!(c["without_context"]["route"], body["route"], "{body}");
    assert_eq!(c["without_context"]["matched_by"], body["matched_by"]);
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, text) = classify_on(&s, json!({ "text": FOLLOW_UP })).await;
    assert_eq!(
        (&body["route"], &body["score"]),
        (&text["route"], &text["score"])
    );
}

#[tokio::test]
async fn a_conversation_with_no_user_message_to_route_by_is_refused() {
    let s = state();
    let cases = [
        (json!({"messages": []}), "an empty list"),
        (
            json!({"messages": [{"role": "assistant", "content": ASK_TIME}]}),
            "no user message",
        ),
        (
            json!({"messages": [{"role": "system", "content": BOOK}, {"role": "tool", "content": BOOK}]}),
            "only system and tool messages",
        ),
        (
            json!({"messages": chat(&[BOOK, ASK_TIME, ""])}),
            "an empty last user message",
        ),
        (
            json!({"messages": chat(&[BOOK, ASK_TIME, " \n\t "])}),
            "a blank last user message",
        ),
        (
            json!({"messages": chat(&[BOOK, ASK_TIME, "\u{200b}\u{feff}"])}),
            "an invisible one",
        ),
        (
            json!({"text": BOOK, "messages": chat(&[BOOK])}),
            "both text and messages",
        ),
    ];
    for (request, what) in cases {
        let (status, body) = classify_on(&s, request).await;
        // As in tests/http.rs: a request with nothing to route by is 422, not 400.
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`messages`") || message.contains("`text`"),
            "{what}: the error names the field: {message}"
        );
    }
    // Bodies that do not parse as a request say so (without naming the field).
    for (request, what) in [
        (json!({"messages": BOOK}), "messages that is a string"),
        (
            json!({"messages": {"role": "user", "content": BOOK}}),
            "messages that is an object",
        ),
        (
            json!({"messages": [BOOK]}),
            "a message that is not an object",
        ),
        (
            json!({"messages": [{"content": BOOK}]}),
            "a message without a role",
        ),
    ] {
        let (status, body) = classify_on(&s, request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("expected shape"), "{what}: {message}");
    }
    // The service is still answering.
    classify_chat(&s, chat(&[BOOK])).await;
}

#[tokio::test]
async fn a_long_conversation_is_read_only_as_far_as_history_turns() {
    // 300 user turns, each answered: distinct texts, so nothing comes from the cache.
    let mut turns: Vec<String> = Vec::new();
    for i in 0..299 {
        turns.push(format!(
            "Book table number {i} at the Italian restaurant, please."
        ));
        turns.push(format!("Table {i} is booked."));
    }
    turns.push(FOLLOW_UP.to_string());
    let turns: Vec<&str> = turns.iter().map(String::as_str).collect();
    assert_eq!(turns.iter().step_by(2).count(), 300);

    let body = classify_chat(&state(), chat(&turns)).await;
    let c = &body["conversation"];
    // The default history_turns is 10: ten earlier user turns with their answers, and the
    // last.
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(11), Some(21))
    );
    assert_eq!(body["route"], "restaurants", "{body}");
    assert_eq!(c["outcome"], "stuck", "{body}");

    let body = classify_chat(
        &state_with("conversation:\n  history_turns: 2\n"),
        chat(&turns),
    )
    .await;
    let c = &body["conversation"];
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(body["route"], "restaurants", "{body}");

    let body = classify_chat(
        &state_with("conversation:\n  history_turns: 0\n"),
        chat(&turns),
    )
    .await;
    let c = &body["conversation"];
    assert_eq!(
        (c["user_turns"].as_u64(), c["messages"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(c["outcome"], "started", "{body}");
}

/// A response without its timings, which differ from one request to the next.
fn untimed(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("timing_us");
    body
}

#[tokio::test]
async fn the_same_conversation_gets_the_same_answer_whatever_the_cache_holds() {
    let s = state();
    let conversation = chat(&[
        BOOK,
        ASK_TIME,
        FOLLOW_UP,
        CONFIRMED,
        "Do they have outdoor seating?",
    ]);
    // Cold: every earlier message is embedded with the others, in one batch.
    let cold = untimed(classify_chat(&s, conversation.clone()).await);
    // Warm: the earlier messages' scores come from the cache.
    let warm = untimed(classify_chat(&s, conversation.clone()).await);
    assert_eq!(cold, warm);
    // Each earlier message classified alone (embedded alone, and cached again as such),
    // then the conversation again.
    for text in [BOOK, FOLLOW_UP] {
        classify_chat(&s, chat(&[text])).await;
    }
    let again = untimed(classify_chat(&s, conversation.clone()).await);
    assert_eq!(cold, again);
    // A fresh router, the messages first seen in another order, agrees too.
    let other = state();
    classify_chat(&other, chat(&[FOLLOW_UP, CONFIRMED, BOOK])).await;
    let fresh = untimed(classify_chat(&other, conversation).await);
    assert_eq!(cold, fresh);
    assert_eq!(cold["route"], "restaurants", "{cold}");
}

/// A route with a pattern and no utterances (as routes that mark personal data often are),
/// and a message it pins.
const PERSONAL: &str = "  - name: personal\n    patterns: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']\n";
const SSN: &str = "Put the deposit on my account, my SSN is 123-45-6789.";

#[tokio::test]
async fn a_pattern_in_the_last_message_decides_whatever_the_conversation() {
    let s = state_with(PERSONAL);
    let body = classify_chat(&s, chat(&[RAIN, "Light showers after 8 pm.", SSN])).await;
    let c = &body["conversation"];
    assert_eq!(body["route"], "personal", "{body}");
    assert_eq!(body["matched_by"], "pattern", "{body}");
    assert_eq!(c["without_context"]["matched_by"], "pattern", "{body}");
    assert_eq!(c["previous_route"], "weather", "{body}");
    assert_eq!(c["outcome"], "switched", "{body}");
}

/// A route with patterns only (no utterances) still holds a conversation a pattern pinned
/// to it (it was once not tracked: the follow-up went to a route no turn was about).
#[tokio::test]
async fn a_follow_up_after_a_turn_pinned_to_a_route_without_utterances_stays_there() {
    let s = state_with(PERSONAL);
    let body = classify_chat(&s, chat(&[SSN, "Noted.", FOLLOW_UP])).await;
    let c = &body["conversation"];
    assert_eq!(c["previous_route"], "personal", "{body}");
    assert_eq!(body["route"], "personal", "{body}");
    assert_eq!(c["outcome"], "stuck", "{body}");
    let rain_first = chat(&[RAIN, "Light showers after 8 pm.", SSN, "Noted.", FOLLOW_UP]);
    let body = classify_chat(&s, rain_first).await;
    assert_eq!(body["conversation"]["previous_route"], "personal", "{body}");
    assert_eq!(body["route"], "personal", "{body}");
}

/// Routes with keywords only: no message can be scored, yet a keyword turn holds the
/// conversation and nothing panics (it once indexed an empty list of routes).
#[tokio::test]
async fn a_config_of_keyword_routes_only_routes_follow_ups_by_the_keyword_turn() {
    let config = common::config_from(
        "routes:\n  - name: code\n    keywords: [python]\n  - name: legal\n    keywords: [lawsuit]\n",
    );
    let router = Router::build(config, common::encoder()).unwrap();
    let s = AppState::ready(Arc::new(router), worker(), DEFAULT_BODY_LIMIT);
    let body = classify_chat(&s, chat(&["fix my python script", "sure", "ok"])).await;
    assert_eq!(body["route"], "code", "{body}");
    assert_eq!(body["matched_by"], "conversation", "{body}");
    assert_eq!(body["conversation"]["previous_route"], "code", "{body}");
    let body = classify_chat(&s, chat(&["hello", "hi", "ok"])).await;
    assert_eq!(body["route"], Value::Null, "{body}");
    assert_eq!(body["conversation"]["outcome"], "started", "{body}");
}

/// However many answers follow a user turn, a conversation reads at most three messages
/// per turn of history (each would otherwise be embedded).
#[tokio::test]
async fn a_flood_of_assistant_messages_does_not_widen_what_is_read() {
    let s = state();
    let mut messages = vec![json!({"role": "user", "content": BOOK})];
    for i in 0..500 {
        messages.push(json!({"role": "assistant", "content": format!("answer number {i}")}));
    }
    messages.push(json!({"role": "user", "content": FOLLOW_UP}));
    let body = classify_chat(&s, Value::Array(messages)).await;
    assert_eq!(body["conversation"]["messages"], 31, "{body}");
}
