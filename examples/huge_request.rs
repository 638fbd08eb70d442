//! Huge requests against a running semroute: sends CONCURRENCY chat requests of MIB
//! mebibytes of mostly non-ASCII text at once (`model` as given: `auto` classifies and
//! scans the whole text), while probing `GET /healthz` every 5 ms on its own connection;
//! prints as JSON each request's status and latency, the health probes' p50/p99/max, and
//! semroute's resident memory before, at its peak (VmHWM) and after (from /proc/PID).
//! Usage: `huge_request BASE_URL PID MIB CONCURRENCY MODEL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn status_kib(pid: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args[1].clone();
    let pid = args[2].clone();
    let mib: usize = args[3].parse().expect("MIB");
    let concurrency: usize = args[4].parse().expect("CONCURRENCY");
    let model = args[5].clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let unit = "Привет, это длинное сообщение без ключевых слов. 你好世界，这是一个很长的消息。 hello world ";
    let text = unit.repeat(mib * 1024 * 1024 / unit.len());
    let body = json!({"model": model, "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": text}
    ]})
    .to_string();
    let body_mib = body.len() as f64 / (1024.0 * 1024.0);
    let rss_before = status_kib(&pid, "VmRSS:");
    let hwm_before = status_kib(&pid, "VmHWM:");

    let running = Arc::new(AtomicBool::new(true));
    let probe = {
        let (base, running) = (base.clone(), running.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = client
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    samples.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..concurrency)
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let route = response
                    .headers()
                    .get("x-semroute-route")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                let _ = response.bytes().await;
                (status, route, sent.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut results = Vec::new();
    for r in requests {
        results.push(r.await.unwrap());
    }
    let all_done = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::Relaxed);
    let mut samples = probe.await.unwrap();
    samples.sort_by(f64::total_cmp);
    let rss_after = status_kib(&pid, "VmRSS:");
    let hwm = status_kib(&pid, "VmHWM:");
    let report = json!({
        "body_mib": (body_mib * 10.0).round() / 10.0,
        "concurrency": concurrency,
        "model": model,
        "requests": results.iter().map(|(s, r, t)| json!({"status": s, "route": r, "seconds": (t * 1000.0).round() / 1000.0})).collect::<Vec<_>>(),
        "all_done_s": (all_done * 1000.0).round() / 1000.0,
        "healthz_probes": samples.len(),
        "healthz_p50_ms": (percentile(&samples, 0.5) * 100.0).round() / 100.0,
        "healthz_p99_ms": (percentile(&samples, 0.99) * 100.0).round() / 100.0,
        "healthz_max_ms": (samples.last().copied().unwrap_or(0.0) * 100.0).round() / 100.0,
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": hwm.max(hwm_before) / 1024,
        "rss_after_mib": rss_after / 1024,
        "peak_growth_over_body": ((hwm.saturating_sub(rss_before)) as f64 / 1024.0 / (body_mib * concurrency as f64) * 100.0).round() / 100.0,
    });
    println!("{report}");
}
