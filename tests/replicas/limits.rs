//! One rate limit and one budget, held across two replicas.

use crate::common;
use crate::harness::{Redis, Replica};
use crate::upstream::{Behaviour, Upstream};
use serde_json::{Value, json};
use std::path::PathBuf;

pub const KEY: &str = "sk-replicas-0123456789abcdef";

/// A config on `redis` with one key limited by `limits` and one backend at `url`.
pub fn config(
    dir: &tempfile::TempDir,
    redis: &Redis,
    on_error: &str,
    limits: &str,
    url: &str,
) -> PathBuf {
    let path = dir.path().join("routes.yaml");
    let yaml = format!(
        "encoder:\n  path: {}\n\
         state:\n  redis: {}\n  on_error: {on_error}\n  reservation_ttl_s: 5\n\
         auth:\n  required: true\n  keys:\n    - name: team\n      key_env: REPLICA_TEST_KEY\n      limits: {limits}\n\
         backends:\n  - name: a\n    url: {url}\n    model: a-model\n    cost: {{input_per_mtok: 1000, output_per_mtok: 1000}}\n\
         routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [a]\n",
        common::model_dir().display(),
        redis.url(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

pub async fn two_replicas(config: &std::path::Path) -> (Replica, Replica) {
    let env = [("REPLICA_TEST_KEY", KEY)];
    let (a, b) = tokio::join!(Replica::start(config, &env), Replica::start(config, &env));
    (a, b)
}

/// `POST /v1/chat/completions` to a replica; the answer is checked against the OpenAPI
/// description.
pub async fn chat(replica: &Replica, body: &Value) -> reqwest::Response {
    let answer = common::http_client()
        .post(replica.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    common::openapi::checked("POST", answer).await
}

pub fn request() -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 35})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rate_limit_holds_across_two_replicas() {
    let redis = Redis::start();
    let upstream = Upstream::start("a", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &redis, "fail_open", "{rpm: 10}", &upstream.url);
    let (a, b) = two_replicas(&path).await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let replica = if i % 2 == 0 { &a } else { &b };
        statuses.push(chat(replica, &request()).await.status().as_u16());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (10, 10), "{statuses:?}");
    assert_eq!(upstream.received().len(), 10);
}
