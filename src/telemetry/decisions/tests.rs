//! The decision log's records, its writer, its queue when full, and the ring of recent
//! decisions.

use super::*;
use serde_json::Value;
use std::time::UNIX_EPOCH;

/// A writer into memory that tests can read.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Whether `line` has exactly the `expected` keys, written in that order.
fn assert_keys(line: &str, expected: &[&str]) {
    let parsed: Value = serde_json::from_str(line).unwrap();
    let mut found: Vec<&str> = parsed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut wanted = expected.to_vec();
    found.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(found, wanted, "{line}");
    let at = |key: &str| line.find(&format!(",\"{key}\":")).unwrap_or(0);
    for pair in expected.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} in {line}");
    }
}

fn classified(id: &str, route: Option<&str>, matched_by: &'static str) -> Decision {
    let mut d = Decision::new(UNIX_EPOCH, id.into(), "/classify");
    d.routing = Routing {
        route: route.map(str::to_string),
        matched_by: Some(matched_by),
        score: Some(0.5),
        margin: Some(0.25),
        ambiguous: Some(false),
    };
    d.prompt = Some(Prompt::text("a prompt"));
    d
}

fn log(log_prompts: bool, recent: usize) -> (Arc<DecisionLog>, Shared, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let out = Shared::default();
    let log = DecisionLog::new(metrics.clone(), log_prompts, recent)
        .writing_to(Box::new(out.clone()), 16)
        .unwrap();
    (Arc::new(log), out, metrics)
}

#[tokio::test]
async fn a_classification_is_one_line_with_exactly_the_classify_keys() {
    let (log, out, _) = log(false, 10);
    log.record(classified("r1", Some("billing"), "semantic"));
    log.record(classified("r2", None, "none"));
    log.sync().await;
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    let text = out.text();
    let raw: Vec<&str> = text.lines().collect();
    let expected = [
        "ts",
        "request_id",
        "endpoint",
        "route",
        "matched_by",
        "score",
        "margin",
        "ambiguous",
    ];
    assert_keys(raw[0], &expected);
    assert_eq!(lines[0]["ts"], "1970-01-01T00:00:00.000Z");
    assert_eq!(lines[0]["request_id"], "r1");
    assert_eq!(lines[0]["endpoint"], "/classify");
    assert_eq!(lines[0]["route"], "billing");
    assert_eq!(lines[0]["score"], 0.5);
    assert_eq!(lines[0]["ambiguous"], false);
    assert_keys(raw[1], &expected);
    assert!(lines[1]["route"].is_null());
    assert_eq!(lines[1]["matched_by"], "none");
}

#[tokio::test]
async fn a_proxied_request_is_one_line_when_its_last_holder_lets_go() {
    let (log, out, _) = log(true, 10);
    let pending = log
        .pending(
            Decision::new(UNIX_EPOCH, "p1".into(), "/v1/chat/completions"),
            Instant::now(),
            false,
        )
        .unwrap();
    let relay = pending.clone();
    pending.key("team-a");
    pending.prompt(Prompt::text("hello"));
    pending.attempted();
    pending.attempted();
    relay.answered_by("b");
    relay.used(10, 5, Some(0.001));
    relay.used(1, 2, None);
    pending.status(200);
    drop(pending);
    log.sync().await;
    assert!(out.lines().is_empty(), "the relay still holds the request");
    drop(relay);
    log.sync().await;
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_keys(
        out.text().trim_end(),
        &[
            "ts",
            "request_id",
            "endpoint",
            "route",
            "matched_by",
            "score",
            "margin",
            "ambiguous",
            "backend",
            "attempts",
            "status",
            "latency_ms",
            "ttfb_ms",
            "tokens",
            "cost_usd",
            "key",
            "prompt",
        ],
    );
    assert!(out.text().ends_with(",\"prompt\":\"hello\"}\n"));
    assert_eq!(line["backend"], "b");
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["status"], 200);
    assert_eq!(
        line["tokens"],
        serde_json::json!({"prompt": 11, "completion": 7})
    );
    assert_eq!(line["cost_usd"], 0.001);
    assert_eq!(line["key"], "team-a");
    assert_eq!(line["prompt"], "hello");
    assert!(line["latency_ms"].as_f64().unwrap() >= line["ttfb_ms"].as_f64().unwrap());
    assert_eq!(log.recent(&everything()).len(), 1);
}

fn everything() -> Filter<'static> {
    Filter {
        route: None,
        matched_by: None,
        limit: usize::MAX,
    }
}

#[tokio::test]
async fn without_log_prompts_no_prompt_is_written_or_kept() {
    let (log, out, _) = log(false, 10);
    log.record(classified("r1", Some("billing"), "semantic"));
    log.sync().await;
    assert!(out.lines()[0].get("prompt").is_none());
    assert!(log.recent(&everything()).is_empty());
    let pending = log
        .pending(
            Decision::new(UNIX_EPOCH, "p".into(), "/x"),
            Instant::now(),
            false,
        )
        .unwrap();
    assert!(!pending.wants_prompt());
    pending.prompt(Prompt::text("secret"));
    drop(pending);
    log.sync().await;
    assert!(!String::from_utf8_lossy(&out.0.lock().unwrap()).contains("secret"));
}

#[tokio::test]
async fn with_log_prompts_the_prompt_is_written_and_kept() {
    let (log, out, _) = log(true, 10);
    log.record(classified("r1", Some("billing"), "semantic"));
    log.sync().await;
    assert_eq!(out.lines()[0]["prompt"], "a prompt");
    let recent = log.recent(&everything());
    assert_eq!(recent[0].prompt, Some(Prompt::text("a prompt")));
    log.set_log_prompts(false);
    assert!(
        log.recent(&everything()).is_empty(),
        "turning it off forgets"
    );
}

#[test]
fn the_ring_keeps_the_last_n_newest_first() {
    let log = DecisionLog::new(Arc::new(Metrics::default()), true, 3);
    for i in 0..5 {
        log.record(classified(&format!("r{i}"), Some("chat"), "semantic"));
    }
    let ids: Vec<String> = log
        .recent(&everything())
        .iter()
        .map(|d| d.request_id.clone())
        .collect();
    assert_eq!(ids, ["r4", "r3", "r2"]);
}

#[test]
fn without_a_file_or_log_prompts_nothing_is_recorded() {
    let log = Arc::new(DecisionLog::new(Arc::new(Metrics::default()), false, 3));
    assert!(!log.is_on());
    log.record(classified("r", None, "none"));
    assert!(log.recent(&everything()).is_empty());
    let pending = log.pending(
        Decision::new(UNIX_EPOCH, "p".into(), "/x"),
        Instant::now(),
        false,
    );
    assert!(pending.is_none());
}

#[test]
fn the_filter_picks_by_route_and_match_and_limits() {
    let log = DecisionLog::new(Arc::new(Metrics::default()), true, 10);
    log.record(classified("a", Some("chat"), "semantic"));
    log.record(classified("b", Some("code"), "keyword"));
    log.record(classified("c", None, "none"));
    log.record(classified("d", Some("chat"), "keyword"));
    let ids = |filter: Filter| -> Vec<String> {
        log.recent(&filter)
            .iter()
            .map(|d| d.request_id.clone())
            .collect()
    };
    let chat = Filter {
        route: Some(Some("chat")),
        ..everything()
    };
    assert_eq!(ids(chat), ["d", "a"]);
    let keyword = Filter {
        matched_by: Some("keyword"),
        ..everything()
    };
    assert_eq!(ids(keyword), ["d", "b"]);
    let unrouted = Filter {
        route: Some(None),
        ..everything()
    };
    assert_eq!(ids(unrouted), ["c"]);
    let both = Filter {
        route: Some(Some("chat")),
        matched_by: Some("semantic"),
        limit: 5,
    };
    assert_eq!(ids(both), ["a"]);
    assert_eq!(
        ids(Filter {
            limit: 2,
            ..everything()
        }),
        ["d", "c"]
    );
}

/// A writer whose first write waits until the test lets it go, saying when it started.
struct Gated {
    out: Shared,
    entered: Option<std::sync::mpsc::Sender<()>>,
    release: std::sync::mpsc::Receiver<()>,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(entered) = self.entered.take() {
            entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_queue_drops_lines_and_counts_them_without_waiting() {
    let metrics = Arc::new(Metrics::default());
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let out = Shared::default();
    let gated = Gated {
        out: out.clone(),
        entered: Some(entered_tx),
        release: release_rx,
    };
    let log = DecisionLog::new(metrics.clone(), false, 0)
        .writing_to(Box::new(gated), 1)
        .unwrap();
    log.record(classified("first", None, "none"));
    // The writer is stuck writing the first line: the queue holds one more, the rest drop.
    entered.recv().unwrap();
    let started = Instant::now();
    for i in 0..10 {
        log.record(classified(&format!("r{i}"), None, "none"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "record never waits"
    );
    assert!(
        metrics
            .render()
            .contains("semroute_decision_log_dropped_total 9\n"),
        "{}",
        metrics.render()
    );
    release.send(()).unwrap();
    log.sync().await;
    let ids: Vec<String> = out
        .lines()
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["first", "r0"]);
}

#[test]
fn the_dropped_counter_is_exported_from_the_start() {
    let text = Metrics::default().render();
    assert!(
        text.contains("semroute_decision_log_dropped_total 0\n"),
        "{text}"
    );
}
