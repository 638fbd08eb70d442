//! When things die: a replica killed mid-request leaves a reservation that lapses by
//! itself; Redis killed mid-run follows `on_error` and is used again once it is back; and a
//! client key appears in no response, log line or metric throughout.

use crate::harness::{Redis, Replica};
use crate::limits::{KEY, chat, config, request, two_replicas};
use crate::upstream::{Behaviour, Upstream};
use std::time::{Duration, Instant};

fn budget_key(redis: &Redis) -> String {
    redis
        .keys("semroute:usd:key:team:d:*")
        .into_iter()
        .find(|k| !k.ends_with(":a") && !k.ends_with(":r"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_of_a_killed_replica_lapses_and_costs_nothing() {
    let redis = Redis::start();
    let upstream = Upstream::start(
        "a",
        Behaviour::Paced {
            text: "a long answer that takes its time to arrive word by word",
            every: Duration::from_millis(200),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Reservations lapse after 5 s.
    let path = config(
        &dir,
        &redis,
        "fail_closed",
        "{usd_per_day: 10}",
        &upstream.url,
    );
    let (a, b) = two_replicas(&path).await;
    let mut body = request();
    body["stream"] = serde_json::json!(true);
    let mut reply = chat(&a, &body).await;
    assert_eq!(reply.status(), 200);
    let _ = reply.chunk().await;
    let key = budget_key(&redis);
    assert!(redis.hash_int(&key, "reserved") > 0);
    drop(a);
    drop(reply);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    // The next admission (on the other replica) finds it lapsed.
    upstream.set(Behaviour::Answer);
    assert_eq!(chat(&b, &request()).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.hash_int(&key, "reserved") != 0 {
        assert!(
            Instant::now() < deadline,
            "the dead replica's reservation is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the answered request is spent: the killed one left no phantom spend.
    assert_eq!(redis.hash_int(&key, "spent"), 15_000_000);
}

async fn status_until(replica: &Replica, want: u16, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let status = chat(replica, &request()).await.status().as_u16();
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_gone_fail_open_serves_on_local_limits_and_comes_back() {
    let mut redis = Redis::start();
    let upstream = Upstream::start("a", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &redis, "fail_open", "{rpm: 1000}", &upstream.url);
    let (a, _b) = two_replicas(&path).await;
    assert_eq!(chat(&a, &request()).await.status(), 200);
    redis.kill();
    // No hang and no error: each call waits at most the timeout, then counts locally.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(chat(&a, &request()).await.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    redis.restart();
    // Back on Redis: new requests are counted there again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(chat(&a, &request()).await.status(), 200);
        if !redis.keys("semroute:rpm:key:team").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never counted in Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("semroute_state_errors_total{op=\"admit\"}"),
        "{metrics}"
    );
    assert!(a.log().iter().any(|l| l.contains("fail_open")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_gone_fail_closed_refuses_with_503_and_recovers() {
    let mut redis = Redis::start();
    let upstream = Upstream::start("a", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &redis, "fail_closed", "{rpm: 1000}", &upstream.url);
    let (a, b) = two_replicas(&path).await;
    assert_eq!(chat(&a, &request()).await.status(), 200);
    redis.kill();
    let refused = chat(&b, &request()).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "state_unavailable");
    let before = upstream.received().len();
    assert_eq!(chat(&a, &request()).await.status(), 503);
    assert_eq!(upstream.received().len(), before, "nothing went upstream");
    redis.restart();
    assert_eq!(status_until(&a, 200, Duration::from_secs(15)).await, 200);
    assert_eq!(status_until(&b, 200, Duration::from_secs(15)).await, 200);
    // The key was never written anywhere a person or a scraper reads.
    for replica in [&a, &b] {
        let metrics = replica.metrics().await;
        assert!(!metrics.contains(KEY));
        assert!(
            !metrics.contains("redis://"),
            "the Redis URL is not exported"
        );
        for line in replica.log() {
            assert!(!line.contains(KEY), "{line}");
        }
    }
}
