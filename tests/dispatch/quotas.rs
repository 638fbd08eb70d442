//! A backend's own quota (its provider's rpm), context windows and `strategy: cheapest`:
//! targets that cannot take a request are skipped without a round trip.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_backend_at_its_providers_quota_is_skipped_not_called() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let s = state(
        &(backend("a", &a.url, "    limits: {rpm: 2}\n") + &backend("b", &b.url, "")),
        "a, b",
        "",
    );
    for _ in 0..3 {
        assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    }
    assert_eq!(a.received().len(), 2, "a was never called past its quota");
    assert_eq!(b.received().len(), 1);
    // Named alone, the paced backend asks the client to come back.
    let alone = chat(&s, request("a")).await;
    assert_eq!(
        alone.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        alone.body
    );
    let wait: u64 = alone.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(a.received().len(), 2);
}

#[tokio::test]
async fn cheapest_goes_to_the_cheapest_target_whose_window_holds_the_request() {
    let pricey = Upstream::start("pricey", Behaviour::Answer).await;
    let cheap = Upstream::start("cheap", Behaviour::Answer).await;
    let s = state_from(&format!(
        "backends:\n{}{}routes:\n  - name: chat\n    utterances: [hello there]\n    targets: [pricey, cheap]\n    strategy: cheapest\n",
        backend(
            "pricey",
            &pricey.url,
            "    cost: {input_per_mtok: 5, output_per_mtok: 15}\n    context_window: 100000\n"
        ),
        backend(
            "cheap",
            &cheap.url,
            "    cost: {input_per_mtok: 0.1, output_per_mtok: 0.4}\n    context_window: 200\n"
        ),
    ));
    assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    assert_eq!((pricey.received().len(), cheap.received().len()), (0, 1));
    // Too long for the cheap one's window: the next by cost, with no call to the cheap one.
    let mut long = request("chat");
    long["messages"][0]["content"] = json!("hello there ".repeat(200));
    assert_eq!(chat(&s, long).await.status, StatusCode::OK);
    assert_eq!((pricey.received().len(), cheap.received().len()), (1, 1));
    // Too long for every window: 400 before any call.
    let mut huge = request("chat");
    huge["max_tokens"] = json!(200_000);
    let refused = chat(&s, huge).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "context_length_exceeded");
    assert!(
        refused.body.contains("the largest is 100000"),
        "{}",
        refused.body
    );
    assert_eq!(pricey.received().len() + cheap.received().len(), 2);
}
