//! Escalation on a broken contract: with `response_format: {type: json_schema}` on a route
//! that escalates, an answer that is not JSON or breaks the schema moves the request to the
//! next target (a stream too, held back until checked); a valid one does not; at most
//! `max_escalations` times.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use semroute::http::AppState;
use serde_json::{Value, json};

const VALID: &str = r#"{"city": "Paris"}"#;
const BROKEN: &str = r#"{"town": "Paris"}"#;

/// One mock provider per `(name, text)`, each answering `text`, and their `backends:` YAML.
async fn text_backends(answers: &[(&str, &'static str)]) -> (Vec<Upstream>, String) {
    let mut ups = Vec::new();
    let mut backends = String::new();
    for &(name, text) in answers {
        let up = Upstream::start(
            name,
            Behaviour::Text {
                text,
                prefill: false,
            },
        )
        .await;
        backends.push_str(&backend(name, &up.url, ""));
        ups.push(up);
    }
    (ups, backends)
}

async fn three(
    a: &'static str,
    b: &'static str,
    c: &'static str,
    extra: &str,
) -> (Vec<Upstream>, AppState) {
    let (ups, backends) = text_backends(&[("a", a), ("b", b), ("c", c)]).await;
    let s = state(
        &backends,
        "a, b, c",
        &format!("    escalate_on: [invalid_json_schema]\n{extra}"),
    );
    (ups, s)
}

fn asking_for_a_city(stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "where?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "place",
            "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}})
}

#[tokio::test]
async fn an_answer_that_breaks_the_schema_moves_on_and_a_valid_one_does_not() {
    let (ups, s) = three(BROKEN, VALID, VALID, "").await;
    let reply = chat(&s, asking_for_a_city(false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.content(), VALID);
    assert_eq!(reply.header("x-semroute-attempts"), "2");
    let metrics = metrics_text(&s).await;
    assert!(
        metrics.contains(r#"semroute_escalations_total{route="chat",from="a",to="b",reason="invalid_json_schema"} 1"#),
        "{metrics}"
    );
    let (ups2, s2) = three(VALID, VALID, VALID, "").await;
    assert_eq!(
        chat(&s2, asking_for_a_city(false))
            .await
            .header("x-semroute-backend"),
        "a"
    );
    assert_eq!((ups2[1].count(), ups[2].count()), (0, 0));
}

#[tokio::test]
async fn content_that_is_not_json_escalates_but_only_with_a_schema_asked_for() {
    let (_ups, s) = three("Paris, I think", VALID, VALID, "").await;
    assert_eq!(
        chat(&s, asking_for_a_city(false))
            .await
            .header("x-semroute-backend"),
        "b"
    );
    let plain = json!({"model": "chat", "messages": [{"role": "user", "content": "where?"}]});
    assert_eq!(chat(&s, plain).await.header("x-semroute-backend"), "a");
}

#[tokio::test]
async fn a_stream_is_held_back_and_the_client_sees_only_the_valid_answer() {
    let (_ups, s) = three(BROKEN, VALID, VALID, "").await;
    let reply = chat(&s, asking_for_a_city(true)).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    let events = events(&reply.body);
    assert_eq!(content(&events), VALID);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn escalations_stop_at_the_maximum_and_the_last_answer_is_relayed() {
    let (ups, s) = three(BROKEN, BROKEN, VALID, "").await;
    let reply = chat(&s, asking_for_a_city(false)).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    assert_eq!(reply.content(), BROKEN);
    assert_eq!(ups[2].count(), 0);
    let (ups, s) = three(BROKEN, BROKEN, VALID, "    max_escalations: 2\n").await;
    assert_eq!(
        chat(&s, asking_for_a_city(false))
            .await
            .header("x-semroute-backend"),
        "c"
    );
    assert_eq!(ups.iter().map(Upstream::count).sum::<usize>(), 3);
}

#[tokio::test]
async fn an_answer_that_still_breaks_the_contract_is_never_cached() {
    let (ups, backends) = text_backends(&[("a", BROKEN), ("b", BROKEN)]).await;
    let s = state_from(&format!(
        "cache:\n  exact: {{ttl_s: 60}}\nbackends:\n{backends}routes:\n  - name: chat\n    utterances: [hello]\n    targets: [a, b]\n    escalate_on: [invalid_json_schema]\n"
    ));
    let mut body = asking_for_a_city(false);
    body["temperature"] = json!(0);
    for _ in 0..2 {
        let reply = chat(&s, body.clone()).await;
        assert_eq!(reply.header("x-semroute-cache"), "miss");
        assert_eq!(reply.content(), BROKEN);
    }
    assert_eq!(ups.iter().map(Upstream::count).sum::<usize>(), 4);
}
