//! Criterion benches of what the decision log costs a request: a `/classify` decision built
//! and handed to the writer, the same with `log_prompts` (the prompt copied and kept in the
//! ring), and a proxied request's line through its whole life (made, filled in as the
//! handler and the dispatcher do, recorded on drop). Lines go to a real file; each batch
//! of requests is timed, then the writer is let catch up (untimed), so every line measured
//! is queued and written, none dropped. Beside them, the writer's own cost per line (off
//! the request's path: it bounds the lines per second written), making a request id, and
//! a request through a bare router with and without the id middleware. No model needed.
//! `cargo bench --bench decisions`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use semroute::telemetry::Metrics;
use semroute::telemetry::decisions::{
    DEFAULT_QUEUE, DEFAULT_RECENT, Decision, DecisionLog, Prompt, Routing,
};
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tower::ServiceExt;

const PROMPT: &str = "you charged my card two times for the same order, can I get a refund?";

/// A file that counts the lines written to it.
struct Counting {
    file: std::fs::File,
    lines: Arc<AtomicU64>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.lines.fetch_add(lines, Ordering::Release);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A log writing to a real file in `dir`, and its count of lines written.
fn log_to_file(
    dir: &tempfile::TempDir,
    log_prompts: bool,
    metrics: &Arc<Metrics>,
) -> (Arc<DecisionLog>, Arc<AtomicU64>) {
    let lines = Arc::new(AtomicU64::new(0));
    let file = std::fs::File::create(dir.path().join(format!("d-{log_prompts}.jsonl"))).unwrap();
    let out = Counting {
        file,
        lines: lines.clone(),
    };
    let log = DecisionLog::new(metrics.clone(), log_prompts, DEFAULT_RECENT)
        .writing_to(Box::new(out), DEFAULT_QUEUE)
        .unwrap();
    (Arc::new(log), lines)
}

/// What `/classify` records: its route and scores, by name (and the prompt when kept).
fn classified(request_id: &str, log: &DecisionLog) -> Decision {
    let mut d = Decision::new(SystemTime::now(), request_id.to_string(), "/classify");
    d.routing = Routing {
        route: Some("billing".to_string()),
        matched_by: Some("semantic"),
        score: Some(0.472),
        margin: Some(0.104),
        ambiguous: Some(false),
    };
    if log.log_prompts() {
        d.prompt = Some(Prompt::text(PROMPT));
    }
    d
}

fn dropped(metrics: &Metrics) -> String {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("semroute_decision_log_dropped_total"))
        .unwrap_or("?")
        .to_string()
}

/// Lines recorded per timed batch: half the queue, so none is dropped.
const BATCH: u64 = DEFAULT_QUEUE as u64 / 2;

/// Times `iters` calls of `record`, in batches, letting the writer (which counts the lines
/// it wrote in `written`) catch up between batches, untimed.
fn batched(iters: u64, written: &AtomicU64, mut record: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let batch = BATCH.min(iters - done);
        let target = written.load(Ordering::Acquire) + batch;
        let started = Instant::now();
        for _ in 0..batch {
            record();
        }
        spent += started.elapsed();
        done += batch;
        while written.load(Ordering::Acquire) < target {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    spent
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let id = semroute::http::request_id::generate();

    let (log, written) = log_to_file(&dir, false, &metrics);
    c.bench_function("decision_classify", |b| {
        b.iter_custom(|iters| {
            batched(iters, &written, || {
                log.record(classified(black_box(&id), &log))
            })
        })
    });

    let (log, written) = log_to_file(&dir, true, &metrics);
    c.bench_function("decision_classify_log_prompts", |b| {
        b.iter_custom(|iters| {
            batched(iters, &written, || {
                log.record(classified(black_box(&id), &log))
            })
        })
    });

    let (log, written) = log_to_file(&dir, false, &metrics);
    let proxied = || {
        let d = Decision::new(SystemTime::now(), id.clone(), "/v1/chat/completions");
        let pending = log.pending(d, Instant::now(), false).unwrap();
        pending.routed(Routing {
            route: Some("billing".to_string()),
            matched_by: Some("semantic"),
            score: Some(0.472),
            margin: Some(0.104),
            ambiguous: Some(false),
        });
        pending.key("team-search");
        pending.attempted();
        pending.answered_by("openai-mini");
        pending.used(812, 164, Some(0.000_221));
        pending.status(200);
        drop(black_box(pending));
    };
    c.bench_function("decision_proxied_whole_life", |b| {
        b.iter_custom(|iters| batched(iters, &written, proxied))
    });
    runtime.block_on(log.sync());
    eprintln!("lines dropped in all: {}", dropped(&metrics));

    let mut line = Vec::with_capacity(1024);
    let mut full = classified(&id, &log);
    full.prompt = Some(Prompt::text(PROMPT));
    c.bench_function("decision_writer_formats_a_line", |b| {
        b.iter(|| {
            line.clear();
            serde_json::to_writer(&mut line, black_box(&full)).unwrap();
            line.push(b'\n');
        })
    });

    c.bench_function("request_id_generate", |b| {
        b.iter(semroute::http::request_id::generate)
    });

    // The id middleware's whole cost: one request through a bare router, with and without it.
    let bare = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let tagged = bare
        .clone()
        .layer(semroute::http::request_id::RequestIdLayer);
    for (name, router) in [
        ("request_bare_router", bare),
        ("request_with_id_middleware", tagged),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let request = axum::http::Request::get("/")
                    .header("x-request-id", "0af7651916cd43dd8448eb211c80319c")
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
                black_box(response)
            })
        });
    }
}

criterion_group! {
    name = decisions;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(decisions);
