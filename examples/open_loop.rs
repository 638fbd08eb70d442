//! An open-loop load generator: sends POST requests at a fixed rate (not waiting for
//! answers, so slow answers cannot lower the load) and prints latency percentiles as JSON.
//! Usage: `open_loop URL BODY_JSON RATE_PER_S SECONDS`. With `BEARER` set, every request
//! carries `Authorization: Bearer $BEARER`; with `USERS=N`, `__USER__` in the body becomes
//! `user-0` ... `user-{N-1}` in turn (N distinct users).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, body) = (args[1].clone(), args[2].clone());
    let rate: u64 = args[3].parse().expect("rate");
    let seconds: u64 = args[4].parse().expect("seconds");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * seconds;
    let bearer = std::env::var("BEARER").ok();
    let users: u64 = std::env::var("USERS")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(1)
        .max(1);
    let started = Instant::now();
    for i in 0..total {
        ticks.tick().await;
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        let body = body.replace("__USER__", &format!("user-{}", i % users));
        let bearer = bearer.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let mut request = client.post(&url).header("content-type", "application/json");
            if let Some(key) = bearer {
                request = request.bearer_auth(key);
            }
            let ok = request
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let _ = tx.send(ok.then(|| sent.elapsed()));
        });
    }
    drop(tx);
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(result) = rx.recv().await {
        match result {
            Some(d) => latencies.push(d.as_secs_f64() * 1000.0),
            None => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{{\"requests\": {}, \"failed\": {failed}, \"achieved_rps\": {:.0}, \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}}}",
        latencies.len() + failed,
        (latencies.len() + failed) as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
}
