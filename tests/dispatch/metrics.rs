//! `GET /metrics` after traffic: requests, attempts, fallbacks, tokens and cost, with every
//! stream's usage counted whether or not the client asked for it.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn metrics_count_requests_attempts_fallbacks_tokens_and_cost() {
    let a = Upstream::start("a", Behaviour::status(503)).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "")
            + &backend(
                "b",
                &b.url,
                "    cost: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n",
            )),
        "a, b",
        "",
    );
    assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    let streamed = chat(&s, stream_request("code")).await;
    assert_eq!(streamed.status, StatusCode::OK);
    let text = metrics_text(&s).await;
    for line in [
        "semroute_requests_total{route=\"chat\",backend=\"b\",status=\"200\"} 1",
        "semroute_requests_total{route=\"code\",backend=\"b\",status=\"200\"} 1",
        // Failed attempts are attempts, never completions.
        "semroute_upstream_attempts_total{backend=\"a\",outcome=\"http_503\"} 4",
        "semroute_upstream_attempts_total{backend=\"b\",outcome=\"ok\"} 2",
        "semroute_fallbacks_total{route=\"chat\",backend=\"a\"} 1",
        // Usage of a non-streaming request (sent upstream as a stream, 10 + 5) and of a
        // streamed one (10 + 5).
        "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"prompt\"} 10",
        "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"completion\"} 5",
        "semroute_tokens_total{route=\"code\",backend=\"b\",kind=\"completion\"} 5",
        "semroute_cost_usd_total{route=\"chat\",backend=\"b\"} 0.00002",
        "semroute_upstream_ttfb_seconds_count{backend=\"a\"} 4",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "missing {line}:\n{text}"
        );
    }
    assert!(!text.contains("backend=\"a\",status=\"200\""));
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

#[tokio::test]
async fn absurd_token_counts_from_an_upstream_are_not_counted() {
    let chunk = |usage: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
               "usage": usage})
    };
    // A count past any answer's size (it would saturate the counter) and a negative one.
    let a = Upstream::start(
        "a",
        Behaviour::Events(vec![chunk(
            json!({"prompt_tokens": 1e300, "completion_tokens": -4, "total_tokens": 1e300}),
        )]),
    )
    .await;
    let b = Upstream::start(
        "b",
        Behaviour::Events(vec![chunk(
            json!({"prompt_tokens": 3, "completion_tokens": 18446744073709551615u64, "total_tokens": 3}),
        )]),
    )
    .await;
    let cost = "    cost: {input_per_mtok: 1.0, output_per_mtok: 1.0}\n";
    let s = state(
        &(backend("a", &a.url, cost) + &backend("b", &b.url, cost)),
        "a",
        "",
    );
    assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    let mut direct = request("chat");
    direct["model"] = json!("b");
    assert_eq!(chat(&s, direct).await.status, StatusCode::OK);
    // Twice, so a saturated counter would have wrapped.
    let mut direct = request("chat");
    direct["model"] = json!("b");
    assert_eq!(chat(&s, direct).await.status, StatusCode::OK);
    let text = metrics_text(&s).await;
    for line in [
        "semroute_tokens_total{route=\"chat\",backend=\"a\",kind=\"prompt\"} 0",
        "semroute_tokens_total{route=\"chat\",backend=\"a\",kind=\"completion\"} 0",
        "semroute_tokens_total{route=\"-\",backend=\"b\",kind=\"prompt\"} 6",
        "semroute_tokens_total{route=\"-\",backend=\"b\",kind=\"completion\"} 0",
        "semroute_cost_usd_total{route=\"-\",backend=\"b\"} 0.000006",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "missing {line}:\n{text}"
        );
    }
    assert!(!text.contains("inf"), "{text}");
}
