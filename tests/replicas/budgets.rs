//! Budgets across two replicas: concurrent requests cannot overspend, and every
//! reservation is settled (or released) to the nano-dollar.

use crate::common;
use crate::harness::{Redis, Replica};
use crate::limits::{KEY, config, request, two_replicas};
use crate::upstream::{Behaviour, Upstream};
use serde_json::json;
use std::time::{Duration, Instant};

/// The settled spend a replica's `/metrics` reports for key `team`, in nano-USD.
async fn metric_spend(replica: &Replica) -> i64 {
    let text = replica.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("semroute_spend_usd_total{key=\"team\"} "))
        .map_or(0, |v| (v.parse::<f64>().unwrap() * 1e9).round() as i64)
}

fn day_key(redis: &Redis) -> String {
    let keys = redis.keys("semroute:usd:key:team:d:*");
    keys.into_iter()
        .find(|k| !k.ends_with(":a") && !k.ends_with(":r"))
        .unwrap_or_default()
}

/// Waits until no reservation is held on `key` (settlements run after the answers).
async fn settled(redis: &Redis, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.hash_int(key, "reserved") != 0 {
        assert!(
            Instant::now() < deadline,
            "reservations left: {}",
            redis.hash_int(key, "reserved")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_on_two_replicas_overspend_by_at_most_one_reservation() {
    let redis = Redis::start();
    // Every answer is 15 tokens at $1000 per million: $0.015; a request is reserved at its
    // maximum (a ~10-token prompt and max_tokens 35: about $0.045).
    let upstream = Upstream::start("a", Behaviour::Slow(Duration::from_millis(30))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        &dir,
        &redis,
        "fail_closed",
        "{usd_per_day: 1}",
        &upstream.url,
    );
    let (a, b) = two_replicas(&path).await;
    let mut clients = Vec::new();
    for i in 0..64 {
        let replica_url = if i % 2 == 0 { a.url("") } else { b.url("") };
        clients.push(tokio::spawn(async move {
            let client = common::http_client();
            let mut answered = 0u32;
            loop {
                let reply = client
                    .post(format!("{replica_url}/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&request())
                    .send()
                    .await
                    .unwrap();
                let reply = common::openapi::checked("POST", reply).await;
                match reply.status().as_u16() {
                    200 => answered += 1,
                    429 => return answered,
                    other => panic!("unexpected {other}: {}", reply.text().await.unwrap()),
                }
            }
        }));
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    let key = day_key(&redis);
    settled(&redis, &key).await;
    let spent = redis.hash_int(&key, "spent");
    // Every answer settled at its usage, exactly.
    assert_eq!(spent, answered as i64 * 15_000_000, "{answered} answers");
    let one_reservation = 45_000_000 + 5_000_000;
    assert!(
        spent <= 1_000_000_000 + one_reservation,
        "overspent: {spent}"
    );
    // And the budget was used, not refused early.
    assert!(
        spent >= 1_000_000_000 - 3 * one_reservation,
        "underspent: {spent}"
    );
    assert_eq!(metric_spend(&a).await + metric_spend(&b).await, spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_and_failed_requests_leave_no_reservation_and_no_phantom_spend() {
    let redis = Redis::start();
    let fast = Upstream::start("a", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        &dir,
        &redis,
        "fail_closed",
        "{usd_per_day: 1000, usd_per_month: 5000}",
        &fast.url,
    );
    // A backend for the streams that clients abandon, and one that always fails.
    let flaky = Upstream::start("flaky", Behaviour::status(500)).await;
    let slow = Upstream::start(
        "slow",
        Behaviour::Paced {
            text: "one two three four five six seven eight nine ten eleven twelve",
            every: Duration::from_millis(40),
        },
    )
    .await;
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "routes:\n",
            &format!(
                "  - name: slow\n    url: {}\n    model: slow-model\n    cost: {{input_per_mtok: 1000, output_per_mtok: 1000}}\n\
                 \x20 - name: flaky\n    url: {}\n    model: flaky-model\n    retries: 0\n    cost: {{input_per_mtok: 1000, output_per_mtok: 1000}}\n\
                 routes:\n  - name: story\n    utterances: [tell me a story]\n    targets: [slow]\n\
                 \x20 - name: broken\n    utterances: [this always fails]\n    targets: [flaky]\n",
                slow.url, flaky.url
            ),
        );
    std::fs::write(&path, yaml).unwrap();
    let (a, b) = two_replicas(&path).await;
    let urls = [a.url(""), b.url("")];
    let mut tasks = Vec::new();
    for worker in 0..25 {
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            let client = common::http_client();
            let mut outcomes = (0u32, 0u32, 0u32);
            for i in 0..40 {
                let url = &urls[(worker + i) % 2];
                if i % 2 == 0 {
                    // Streamed, and abandoned after the first bytes.
                    let reply = client
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(KEY)
                        .json(&json!({"model": "story", "stream": true, "max_tokens": 50,
                                      "messages": [{"role": "user", "content": "tell me a story"}]}))
                        .send()
                        .await
                        .unwrap();
                    let mut reply = common::openapi::checked("POST", reply).await;
                    assert_eq!(reply.status(), 200);
                    let _ = reply.chunk().await;
                    drop(reply);
                    outcomes.2 += 1;
                } else {
                    // Four in forty go to a backend that always fails.
                    let mut body = request();
                    if i % 10 == 9 {
                        body["model"] = json!("broken");
                    }
                    let reply = client
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(KEY)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let reply = common::openapi::checked("POST", reply).await;
                    match reply.status().as_u16() {
                        200 => outcomes.0 += 1,
                        // Failed, or refused while the failing backend cools down.
                        502 | 503 => outcomes.1 += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            outcomes
        }));
    }
    let (mut answered, mut failed, mut cancelled) = (0, 0, 0);
    for task in tasks {
        let (ok, bad, gone) = task.await.unwrap();
        answered += ok;
        failed += bad;
        cancelled += gone;
    }
    assert_eq!((answered, failed, cancelled), (400, 100, 500));
    let key = day_key(&redis);
    settled(&redis, &key).await;
    let month = redis
        .keys("semroute:usd:key:team:m:*")
        .into_iter()
        .find(|k| !k.ends_with(":a") && !k.ends_with(":r"))
        .unwrap();
    settled(&redis, &month).await;
    let spent = redis.hash_int(&key, "spent");
    // The spend counter is the sum of what each replica settled, to the nano-dollar, the
    // same in both budgets; the failed requests cost nothing, the answered $0.015 each, and
    // each abandoned stream at least its prompt.
    let settle_metrics = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let sum = metric_spend(&a).await + metric_spend(&b).await;
            if sum == spent || Instant::now() > deadline {
                return sum;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(settle_metrics.await, spent);
    assert_eq!(redis.hash_int(&month, "spent"), spent);
    assert!(spent > 400 * 15_000_000 + 500 * 10_000, "{spent}");
    assert!(spent < 400 * 15_000_000 + 500 * 60_000_000, "{spent}");
}
