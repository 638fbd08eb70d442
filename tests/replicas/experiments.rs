//! One experiment served by two replicas sharing Redis: a user keeps its variant whichever
//! replica it reaches, each replica's report counts every request sent to either, and
//! feedback given on one replica for a request of the other counts once.

use crate::common;
use crate::harness::{Redis, Replica};
use crate::upstream::{Behaviour, Upstream};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn config(dir: &tempfile::TempDir, redis: &Redis, small: &str, big: &str) -> std::path::PathBuf {
    let path = dir.path().join("routes.yaml");
    let yaml = format!(
        "encoder:\n  path: {}\n\
         state:\n  redis: {}\n\
         backends:\n  - {{name: small, url: '{small}', model: s}}\n  - {{name: big, url: '{big}', model: b}}\n\
         routes:\n  - name: chat\n    utterances: [hello there]\n    targets: [small, big]\n    \
         experiment: {{name: shared-split, variants: {{small: 0.6, big: 0.4}}}}\n",
        common::model_dir().display(),
        redis.url(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn chat(replica: &Replica, user: &str) -> (String, String) {
    let body =
        json!({"model": "chat", "user": user, "messages": [{"role": "user", "content": "hi"}]});
    let answer = common::http_client()
        .post(replica.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let variant = answer.headers()["x-semroute-variant"]
        .to_str()
        .unwrap()
        .to_string();
    let id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, _, _) = common::openapi::read("POST", answer).await;
    assert_eq!(status, 200);
    (variant, id)
}

async fn report(replica: &Replica) -> Value {
    let answer = common::http_client()
        .get(replica.url("/admin/experiments"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = common::openapi::read("GET", answer).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Requests per variant in `report`, by backend.
fn requests(report: &Value) -> HashMap<String, u64> {
    report["experiments"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["backend"].as_str().unwrap().to_string(),
                v["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_replicas_assign_alike_and_count_every_request_once() {
    let redis = Redis::start();
    let small = Upstream::start("small", Behaviour::Answer).await;
    let big = Upstream::start("big", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &redis, &small.url, &big.url);
    let (a, b) = tokio::join!(Replica::start(&path, &[]), Replica::start(&path, &[]));
    let mut ids = Vec::new();
    for i in 0..60 {
        let user = format!("user-{i}");
        let (on_a, id) = chat(&a, &user).await;
        let (on_b, _) = chat(&b, &user).await;
        assert_eq!(
            on_a, on_b,
            "{user} got another variant on the other replica"
        );
        ids.push(id);
    }
    let expected: HashMap<String, u64> = [
        ("small".to_string(), small.count() as u64),
        ("big".to_string(), big.count() as u64),
    ]
    .into();
    assert_eq!(small.count() + big.count(), 120);
    // Counted when each request is over, off the request path: wait until they are in.
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests(&report(&a).await) != expected {
        assert!(
            Instant::now() < deadline,
            "{:?} != {expected:?}",
            requests(&report(&a).await)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(requests(&report(&b).await), expected);

    // Feedback on the other replica than the request's counts, and only once.
    let send = |replica: &Replica, id: &str| {
        common::http_client()
            .post(replica.url("/v1/feedback"))
            .json(&json!({"request_id": id, "score": 1}))
            .send()
    };
    assert_eq!(send(&b, &ids[0]).await.unwrap().status(), 200);
    assert_eq!(send(&a, &ids[0]).await.unwrap().status(), 409);
    let feedback: u64 = report(&a).await["experiments"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["feedback"]["n"].as_u64().unwrap())
        .sum();
    assert_eq!(feedback, 1);
}
