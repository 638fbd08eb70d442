//! The answer cache with `store: redis`: an answer one replica made is a hit on the other,
//! and still never crosses client keys.

use crate::common;
use crate::harness::{Redis, Replica};
use crate::upstream::{Behaviour, Upstream};
use serde_json::json;
use std::time::Duration;

const KEY_A: &str = "sk-cache-replica-a-0123456789";
const KEY_B: &str = "sk-cache-replica-b-0123456789";

async fn ask(replica: &Replica, key: &str) -> (String, String) {
    let body = json!({"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": "hello there"}]});
    let answer = common::http_client()
        .post(replica.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let cache = answer.headers()["x-semroute-cache"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, _, bytes) = common::openapi::read("POST", answer).await;
    assert_eq!(status, 200);
    (cache, String::from_utf8(bytes).unwrap())
}

#[tokio::test]
async fn an_answer_made_on_one_replica_is_a_hit_on_the_other_for_the_same_key_only() {
    let redis = Redis::start();
    let upstream = Upstream::start("a", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let yaml = format!(
        "encoder:\n  path: {}\nstate:\n  redis: {}\ncache:\n  exact: {{ttl_s: 60}}\n  store: redis\n\
         auth:\n  required: true\n  keys:\n    - {{name: a, key_env: CACHE_REPLICA_KEY_A}}\n    - {{name: b, key_env: CACHE_REPLICA_KEY_B}}\n\
         backends:\n  - {{name: a, url: '{}', model: m}}\n\
         routes:\n  - name: chat\n    utterances: [hello there]\n    targets: [a]\n",
        common::model_dir().display(),
        redis.url(),
        upstream.url,
    );
    std::fs::write(&path, yaml).unwrap();
    let env = [
        ("CACHE_REPLICA_KEY_A", KEY_A),
        ("CACHE_REPLICA_KEY_B", KEY_B),
    ];
    let (one, two) = tokio::join!(Replica::start(&path, &env), Replica::start(&path, &env));
    let (first, made) = ask(&one, KEY_A).await;
    assert_eq!(first, "miss");
    // Written to Redis just after the answer: the other replica finds it within moments.
    let mut found = None;
    for _ in 0..50 {
        let (cache, body) = ask(&two, KEY_A).await;
        if cache == "hit" {
            found = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        found.as_deref(),
        Some(made.as_str()),
        "no hit on the other replica"
    );
    let calls = upstream.count();
    assert_eq!(ask(&two, KEY_B).await.0, "miss", "another key never shares");
    assert_eq!(upstream.count(), calls + 1);
    assert!(
        !redis.keys("semroute:cache:*").is_empty(),
        "the entries are in Redis"
    );
}
