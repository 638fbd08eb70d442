//! Backend health shared through Redis: a provider's 429 and an open breaker seen on one
//! replica keep the other from calling the backend, and the half-open probe after the
//! cooldown is sent by one replica only.

use crate::harness::Redis;
use crate::limits::{chat, config, request, two_replicas};
use crate::upstream::{Behaviour, Upstream};
use std::time::Duration;

/// The replicas' config with backends `a` then `b` as `chat`'s targets.
fn with_fallback(
    dir: &tempfile::TempDir,
    redis: &Redis,
    a: &Upstream,
    b: &Upstream,
) -> std::path::PathBuf {
    let path = config(dir, redis, "fail_open", "{rpm: 1000}", &a.url);
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "    model: a-model\n",
            "    model: a-model\n    retries: 0\n",
        )
        .replace(
            "routes:\n",
            &format!(
                "  - name: b\n    url: {}\n    model: b-model\nroutes:\n",
                b.url
            ),
        )
        .replace("targets: [a]", "targets: [a, b]");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_providers_429_on_one_replica_keeps_the_other_away() {
    let redis = Redis::start();
    let a = Upstream::start("a", Behaviour::Answer).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = with_fallback(&dir, &redis, &a, &b);
    let (one, two) = two_replicas(&path).await;
    a.script([Behaviour::Status {
        status: 429,
        retry_after: Some("30".into()),
        code: "rate_limit_exceeded",
    }]);
    assert_eq!(chat(&one, &request()).await.status(), 200);
    assert_eq!((a.received().len(), b.received().len()), (1, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let reply = chat(&two, &request()).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["x-semroute-backend"], "b");
    }
    assert_eq!(
        a.received().len(),
        1,
        "the other replica never called the rate-limited backend"
    );
    assert!(!redis.keys("semroute:cool:a").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_breaker_is_shared_and_one_replica_probes_at_a_time() {
    let redis = Redis::start();
    let a = Upstream::start("a", Behaviour::status(500)).await;
    let b = Upstream::start("b", Behaviour::Answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = with_fallback(&dir, &redis, &a, &b);
    let (one, two) = two_replicas(&path).await;
    // Three failures open `one`'s breaker on `a` (for a second).
    for _ in 0..3 {
        assert_eq!(chat(&one, &request()).await.status(), 200);
    }
    assert_eq!(a.received().len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        chat(&two, &request()).await.headers()["x-semroute-backend"],
        "b"
    );
    assert_eq!(
        a.received().len(),
        3,
        "the other replica saw the breaker open"
    );
    // After the cooldown both replicas may probe; one does.
    a.set(Behaviour::Slow(Duration::from_millis(400)));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let body = request();
    let (x, y) = tokio::join!(chat(&one, &body), chat(&two, &body));
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (200, 200));
    assert_eq!(
        a.received().len(),
        4,
        "exactly one probe across the replicas"
    );
    // The probe answered: both replicas use `a` again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for replica in [&one, &two] {
        assert_eq!(
            chat(replica, &request()).await.headers()["x-semroute-backend"],
            "a"
        );
    }
}
