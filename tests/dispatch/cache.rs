//! The answer cache through the proxy: an identical request is answered from the cache with
//! the same answer and no call upstream; a changed parameter, another key, a temperature
//! above 0 or `Cache-Control: no-cache` go upstream; a stream is replayed as SSE; a
//! similar prompt reuses an answer through the semantic cache.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use semroute::http::AppState;
use serde_json::{Value, json};

fn cached_state(url: &str, cache: &str, auth: &str) -> AppState {
    state_from(&format!(
        "{auth}cache:\n{cache}backends:\n{}routes:\n  - name: support\n    utterances: [how do I reset my password, I forgot my password]\n    targets: [a]\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [a]\n",
        backend(
            "a",
            url,
            "    cost: {input_per_mtok: 1000, output_per_mtok: 1000}\n"
        )
    ))
}

const EXACT: &str = "  exact: {ttl_s: 60, max_entries: 100}\n";

fn ask(text: &str) -> Value {
    json!({"model": "support", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

async fn chat_as(s: &AppState, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut request =
        Request::post("/v1/chat/completions").header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(s, request.body(Body::from(body.to_string())).unwrap()).await
}

#[tokio::test]
async fn an_identical_request_is_answered_from_the_cache_without_a_call_upstream() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = cached_state(&a.url, EXACT, "");
    let first = chat(&s, ask("reset my password")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-semroute-cache"), "miss");
    let second = chat(&s, ask("reset my password")).await;
    assert_eq!(second.header("x-semroute-cache"), "hit");
    assert_eq!(second.body, first.body, "the very same answer");
    assert_eq!(second.header("x-semroute-attempts"), "0");
    assert_eq!(second.header("x-semroute-backend"), "a");
    assert_eq!(a.count(), 1);
    // `stream` and `user` do not change the answer; `model: auto` routed to the same route
    // is the same request too.
    let mut as_user = ask("reset my password");
    as_user["user"] = json!("someone");
    assert_eq!(chat(&s, as_user).await.header("x-semroute-cache"), "hit");
    assert_eq!(a.count(), 1);
    let metrics = metrics_text(&s).await;
    assert!(
        metrics.contains("semroute_cache_lookups_total{result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("semroute_cache_lookups_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("semroute_cache_saved_usd_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_changed_parameter_a_warm_temperature_or_no_cache_goes_upstream() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = cached_state(&a.url, EXACT, "");
    chat(&s, ask("reset my password")).await;
    let mut capped = ask("reset my password");
    capped["max_tokens"] = json!(5);
    assert_eq!(chat(&s, capped).await.header("x-semroute-cache"), "miss");
    assert_eq!(a.count(), 2);
    // Not the same answer twice: not cached at all (no header), twice upstream.
    let mut warm = ask("reset my password");
    warm["temperature"] = json!(0.7);
    for _ in 0..2 {
        assert!(
            chat(&s, warm.clone())
                .await
                .headers
                .get("x-semroute-cache")
                .is_none()
        );
    }
    assert_eq!(a.count(), 4);
    // A seed makes it repeatable.
    warm["seed"] = json!(7);
    chat(&s, warm.clone()).await;
    assert_eq!(chat(&s, warm).await.header("x-semroute-cache"), "hit");
    assert_eq!(a.count(), 5);
    let fresh = chat_as(
        &s,
        &ask("reset my password"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(fresh.header("x-semroute-cache"), "miss");
    assert_eq!(a.count(), 6);
}

#[tokio::test]
async fn answers_are_never_shared_across_keys() {
    // SAFETY: set before the config that names them is read; no other test reads them.
    unsafe {
        std::env::set_var("SEMROUTE_TEST_CACHE_KEY_A", "sk-cache-a-0123456789abcdef");
        std::env::set_var("SEMROUTE_TEST_CACHE_KEY_B", "sk-cache-b-0123456789abcdef");
    }
    let a = Upstream::start("a", Behaviour::Answer).await;
    let auth = "auth:\n  required: true\n  keys:\n    - {name: a, key_env: SEMROUTE_TEST_CACHE_KEY_A}\n    - {name: b, key_env: SEMROUTE_TEST_CACHE_KEY_B}\n";
    let s = cached_state(&a.url, EXACT, auth);
    let as_a = [("authorization", "Bearer sk-cache-a-0123456789abcdef")];
    let as_b = [("authorization", "Bearer sk-cache-b-0123456789abcdef")];
    let body = ask("reset my password");
    assert_eq!(
        chat_as(&s, &body, &as_a).await.header("x-semroute-cache"),
        "miss"
    );
    assert_eq!(
        chat_as(&s, &body, &as_b).await.header("x-semroute-cache"),
        "miss"
    );
    assert_eq!(
        chat_as(&s, &body, &as_a).await.header("x-semroute-cache"),
        "hit"
    );
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn a_stream_is_kept_and_replayed_as_events_with_done() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = cached_state(&a.url, EXACT, "");
    let mut streamed = ask("reset my password");
    streamed["stream"] = json!(true);
    let first = chat(&s, streamed.clone()).await;
    assert_eq!(first.header("x-semroute-cache"), "miss");
    let first_text = content(&events(&first.body));
    let replay = chat(&s, streamed).await;
    assert_eq!(replay.header("x-semroute-cache"), "hit");
    assert!(
        replay
            .header("content-type")
            .starts_with("text/event-stream")
    );
    let replayed = events(&replay.body);
    assert_eq!(replayed.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(content(&replayed), first_text);
    // The same answer for a client that does not stream.
    let whole = chat(&s, ask("reset my password")).await;
    assert_eq!(whole.header("x-semroute-cache"), "hit");
    assert_eq!(whole.content(), first_text);
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn a_similar_prompt_reuses_an_answer_through_the_semantic_cache() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = cached_state(
        &a.url,
        &format!("{EXACT}  semantic: {{threshold: 0.9, ttl_s: 60}}\n"),
        "",
    );
    let auto = |text: &str| json!({"model": "auto", "temperature": 0, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]});
    let first = chat(&s, auto("how do I reset my password?")).await;
    assert_eq!(first.header("x-semroute-cache"), "miss");
    let similar = chat(&s, auto("how can I reset my password")).await;
    assert_eq!(similar.header("x-semroute-cache"), "semantic-hit");
    assert_eq!(similar.body, first.body);
    let other = chat(&s, auto("hello there, how are you")).await;
    assert_eq!(other.header("x-semroute-cache"), "miss");
    assert_eq!(a.count(), 2);
}
