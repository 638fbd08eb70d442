//! Huge requests against a running semroute: sends CONCURRENCY chat requests of MIB
//! mebibytes of mostly non-ASCII text at once (`model` as given: `auto` classifies and
//! scans the whole text), while probing `GET /healthz` every 5 ms on its own connection;
//! prints as JSON each request's status and latency, the health probes' p50/p99/max, and
//! semroute's resident memory before, at its peak during the run (VmHWM, reset first
//! through /proc/PID/clear_refs) and after (from /proc/PID).
//! Usage: `huge_request BASE_URL PID MIB CONCURRENCY MODEL [adversarial]`; `adversarial`
//! fills the text with digit runs glued to letters (`é1234567890123456`), which the card
//! pattern's word-boundary-free prefilter matches but the pattern itself does not, so the
//! exact pattern must scan the whole text.
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

/// The command line: `BASE_URL PID MIB CONCURRENCY MODEL [adversarial]`.
struct Args {
    base: String,
    pid: String,
    mib: usize,
    concurrency: usize,
    model: String,
    adversarial: bool,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        Args {
            base: args[1].clone(),
            pid: args[2].clone(),
            mib: args[3].parse().expect("MIB"),
            concurrency: args[4].parse().expect("CONCURRENCY"),
            model: args[5].clone(),
            adversarial: args.get(6).is_some_and(|a| a == "adversarial"),
        }
    }
}

/// The chat request: a system message and MIB mebibytes of mostly non-ASCII text as the
/// user's.
fn huge_body(args: &Args) -> String {
    let unit = if args.adversarial {
        "Привет, это длинное сообщение é1234567890123456 без ключевых слов. 你好世界 "
    } else {
        "Привет, это длинное сообщение без ключевых слов. 你好世界，这是一个很长的消息。 hello world "
    };
    let text = unit.repeat(args.mib * 1024 * 1024 / unit.len());
    json!({"model": args.model, "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": text}
    ]})
    .to_string()
}

/// Resets the peak (VmHWM) of `pid` to its current size, so the peak read after is this
/// run's.
fn reset_peak_rss(pid: &str) {
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    assert!(
        reset,
        "cannot reset the peak RSS of {pid} (/proc/PID/clear_refs)"
    );
}

/// `GET /healthz` every 5 ms until stopped, timing each successful probe (in ms).
struct Probes {
    running: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl Probes {
    /// The probes run on their own thread and runtime, so the load's client work (writing
    /// the huge bodies) cannot delay them.
    fn start(base: &str) -> Probes {
        let running = Arc::new(AtomicBool::new(true));
        let (base, still) = (base.to_string(), running.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = reqwest::Client::new();
                let mut samples = Vec::new();
                while still.load(Ordering::Relaxed) {
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
        });
        Probes { running, thread }
    }

    /// Stops the probes; their times, sorted.
    fn stop(self) -> Vec<f64> {
        self.running.store(false, Ordering::Relaxed);
        let mut samples = self.thread.join().unwrap();
        samples.sort_by(f64::total_cmp);
        samples
    }
}

/// One huge request's status, route (`x-semroute-route`) and seconds to its whole answer.
type Answered = (u16, String, f64);

/// Sends `concurrency` copies of `body` at once, each on its own client; what each got, and
/// the seconds until the last was done.
async fn send_all(base: &str, body: &str, concurrency: usize) -> (Vec<Answered>, f64) {
    let started = Instant::now();
    let requests: Vec<_> = (0..concurrency)
        .map(|_| {
            let (base, body) = (base.to_string(), body.to_string());
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
    (results, started.elapsed().as_secs_f64())
}

/// What one run measured.
struct Run {
    body_mib: f64,
    results: Vec<Answered>,
    all_done: f64,
    /// The health probes' times in ms, sorted.
    samples: Vec<f64>,
    /// semroute's resident memory in KiB: before, at its peak, after.
    rss_before: u64,
    hwm: u64,
    rss_after: u64,
}

/// The JSON line printed for the run.
fn report(args: &Args, run: &Run) -> serde_json::Value {
    let (samples, body_mib) = (&run.samples, run.body_mib);
    let (rss_before, hwm) = (run.rss_before, run.hwm);
    json!({
        "body_mib": (body_mib * 10.0).round() / 10.0,
        "concurrency": args.concurrency,
        "model": args.model,
        "adversarial": args.adversarial,
        "requests": run.results.iter().map(|(s, r, t)| json!({"status": s, "route": r, "seconds": (t * 1000.0).round() / 1000.0})).collect::<Vec<_>>(),
        "all_done_s": (run.all_done * 1000.0).round() / 1000.0,
        "healthz_probes": samples.len(),
        "healthz_p50_ms": (percentile(samples, 0.5) * 100.0).round() / 100.0,
        "healthz_p99_ms": (percentile(samples, 0.99) * 100.0).round() / 100.0,
        "healthz_max_ms": (samples.last().copied().unwrap_or(0.0) * 100.0).round() / 100.0,
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": hwm / 1024,
        "rss_after_mib": run.rss_after / 1024,
        "peak_growth_over_body": ((hwm.saturating_sub(rss_before)) as f64 / 1024.0 / (body_mib * args.concurrency as f64) * 100.0).round() / 100.0,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = huge_body(&args);
    let body_mib = body.len() as f64 / (1024.0 * 1024.0);
    let rss_before = status_kib(&args.pid, "VmRSS:");
    reset_peak_rss(&args.pid);

    let probes = Probes::start(&args.base);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (results, all_done) = send_all(&args.base, &body, args.concurrency).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = probes.stop();
    let rss_after = status_kib(&args.pid, "VmRSS:");
    let hwm = status_kib(&args.pid, "VmHWM:");
    let run = Run {
        body_mib,
        results,
        all_done,
        samples,
        rss_before,
        hwm,
        rss_after,
    };
    println!("{}", report(&args, &run));
}
