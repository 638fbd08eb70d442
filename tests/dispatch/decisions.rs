//! The decision log, through the app into a real file: one line per `/classify` and per
//! proxied request (plain, streamed, refused, or left by its client mid-stream) with the
//! right keys and values; prompts only with `log_prompts`; `x-request-id` taken when sane,
//! replaced when not, generated when absent, on every response; `GET /admin/decisions`.

use crate::proxy::*;
use crate::upstream::{Behaviour, StreamEnd, Upstream};
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use semroute::http::{AppState, app};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const CLASSIFY_KEYS: [&str; 8] = [
    "ts",
    "request_id",
    "endpoint",
    "route",
    "matched_by",
    "score",
    "margin",
    "ambiguous",
];
const PROXIED_KEYS: [&str; 7] = [
    "backend",
    "attempts",
    "status",
    "latency_ms",
    "ttfb_ms",
    "tokens",
    "cost_usd",
];

/// An app whose decision log is a file in a temporary directory.
struct Logged {
    state: AppState,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    fn new(state: AppState) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let file = std::fs::File::create(&path).unwrap();
        let state = state.with_decision_log(Box::new(file)).unwrap();
        Logged {
            state,
            path,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }

    /// The lines written once `n` are there (waiting for a stream's relay to let go), and
    /// checked to stay `n` a moment later.
    async fn lines(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.state.decisions().sync().await;
            if self.text().lines().count() >= n || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.state.decisions().sync().await;
        let lines: Vec<Value> = self
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        assert_eq!(lines.len(), n, "{lines:#?}");
        lines
    }
}

/// A line's keys, and the expected ones, sorted.
fn same_keys(line: &Value, expected: &[&str]) -> bool {
    let mut found: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = expected.to_vec();
    found.sort_unstable();
    expected.sort_unstable();
    found == expected
}

fn classify_request(text: &str, id: Option<&[u8]>) -> Request<Body> {
    let mut request = Request::post("/classify").header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = id {
        request = request.header("x-request-id", HeaderValue::from_bytes(id).unwrap());
    }
    request
        .body(Body::from(json!({ "text": text }).to_string()))
        .unwrap()
}

fn one_backend(a: &Upstream, extra: &str, top: &str) -> AppState {
    let backends = backend(
        "a",
        &a.url,
        &format!("    cost: {{input_per_mtok: 2, output_per_mtok: 4}}\n{extra}"),
    );
    state_from(&format!(
        "{top}backends:\n{backends}routes:\n  - name: chat\n    utterances: [hello there, how are you]\n    targets: [a]\n  - name: code\n    utterances: [write a python function, fix this rust compile error]\n    targets: [a]\n    keywords: [borrow checker]\ndefault_route: chat\n"
    ))
}

#[tokio::test]
async fn a_classification_is_one_line_with_its_route_scores_and_request_id() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let log = Logged::new(one_backend(&a, "", ""));
    let reply = send(
        &log.state,
        classify_request("write a python function to sort a list", Some(b"req-42")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-request-id"), "req-42");
    let body = reply.json();
    let lines = log.lines(1).await;
    let line = &lines[0];
    assert!(
        same_keys(line, &CLASSIFY_KEYS),
        "no proxied keys, no key, no prompt: {line}"
    );
    assert_eq!(line["request_id"], "req-42");
    assert_eq!(line["endpoint"], "/classify");
    assert_eq!(line["route"], "code");
    assert_eq!(line["matched_by"], body["matched_by"]);
    assert_eq!(line["score"], body["score"]);
    assert_eq!(line["margin"], body["margin"]);
    assert_eq!(line["ambiguous"], body["ambiguous"]);
    let ts = line["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
}

#[tokio::test]
async fn a_proxied_answer_is_one_line_with_backend_status_timings_tokens_and_cost() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    for stream in [false, true] {
        let log = Logged::new(one_backend(&a, "", ""));
        let body = if stream {
            stream_request("auto")
        } else {
            request("auto")
        };
        let reply = chat(&log.state, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let line = &log.lines(1).await[0];
        let expected: Vec<&str> = CLASSIFY_KEYS.iter().chain(&PROXIED_KEYS).copied().collect();
        assert!(same_keys(line, &expected), "stream {stream}: {line}");
        assert_eq!(line["request_id"], reply.header("x-request-id"));
        assert_eq!(line["endpoint"], "/v1/chat/completions");
        assert_eq!(line["route"], "chat");
        assert_eq!(line["matched_by"], "semantic");
        assert_eq!(
            line["score"].as_f64().map(|s| format!("{s:.4}")).as_deref(),
            Some(reply.header("x-semroute-score"))
        );
        assert!(line["margin"].is_number() && line["ambiguous"].is_boolean());
        assert_eq!(line["backend"], "a");
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["status"], 200);
        // Both went upstream as streams: the mock reports the same usage either way.
        assert_eq!(line["tokens"], json!({"prompt": 10, "completion": 5}));
        let cost = (10.0 * 2.0 + 5.0 * 4.0) / 1e6;
        assert!(
            (line["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{line}"
        );
        let (latency, ttfb) = (
            line["latency_ms"].as_f64().unwrap(),
            line["ttfb_ms"].as_f64().unwrap(),
        );
        assert!(ttfb > 0.0 && latency >= ttfb, "{line}");
    }
}

#[tokio::test]
async fn a_fallback_counts_every_attempt_and_names_the_backend_that_answered() {
    let (_a, _b, s) = pair(Behaviour::status(503), Behaviour::Answer).await;
    let log = Logged::new(s);
    let reply = chat(&log.state, request("chat")).await;
    assert_eq!(reply.header("x-semroute-backend"), "b");
    let line = &log.lines(1).await[0];
    assert_eq!(line["route"], "chat");
    assert!(
        line["matched_by"].is_null(),
        "a named route is not classified"
    );
    assert_eq!(line["attempts"], 3, "a, its retry, then b");
    assert_eq!(line["backend"], "b");
    assert_eq!(line["status"], 200);
    assert!(line["cost_usd"].is_null(), "b has no cost");
    assert_eq!(line["tokens"], json!({"prompt": 10, "completion": 5}));
}

#[tokio::test]
async fn refusals_and_failures_are_logged_with_the_status_the_client_got() {
    let a = Upstream::start("a", Behaviour::status(503)).await;
    let log = Logged::new(one_backend(&a, "", ""));
    let failed = chat(&log.state, request("a")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let unknown = chat(&log.state, request("no-such-model")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let lines = log.lines(2).await;
    assert!(
        lines[0]["route"].is_null(),
        "a backend named directly has no route"
    );
    assert_eq!(lines[0]["status"], 502);
    assert_eq!(lines[0]["attempts"], 2);
    assert!(lines[0]["backend"].is_null() && lines[0]["ttfb_ms"].is_null());
    assert!(lines[0]["tokens"].is_null() && lines[0]["cost_usd"].is_null());
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["attempts"], 0);
    assert_eq!(lines[1]["request_id"], unknown.header("x-request-id"));
}

#[tokio::test]
async fn a_client_that_vanishes_mid_stream_still_gives_exactly_one_line() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    a.script([Behaviour::Stream {
        pieces: vec!["Hello"],
        end: StreamEnd::Stall,
    }]);
    let log = Logged::new(one_backend(&a, "    stream_idle_timeout_ms: 10000\n", ""));
    let streaming = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(stream_request("chat").to_string()))
        .unwrap();
    let response = app(log.state.clone()).oneshot(streaming).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("Hello"));
    log.state.decisions().sync().await;
    assert_eq!(log.text(), "", "nothing is written while the stream runs");
    drop(body);
    let line = &log.lines(1).await[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["backend"], "a");
    assert!(line["tokens"].is_null(), "the stream never reported usage");
    assert!(line["latency_ms"].as_f64().unwrap() < 5000.0, "{line}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_logged_with_499() {
    let a = Upstream::start("a", Behaviour::Slow(Duration::from_secs(2))).await;
    let log = Logged::new(one_backend(&a, "    upstream_stream: false\n", ""));
    let waiting = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(request("chat").to_string()))
        .unwrap();
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        app(log.state.clone()).oneshot(waiting),
    )
    .await;
    assert!(gone.is_err(), "the client gave up first");
    let line = &log.lines(1).await[0];
    assert_eq!(line["status"], 499);
    assert_eq!(line["attempts"], 1);
    assert!(line["backend"].is_null() && line["ttfb_ms"].is_null());
}

#[tokio::test]
async fn the_key_is_named_and_never_quoted() {
    const KEY: &str = "sk-decisions-0123456789abcdef";
    let digest = hex::encode(semroute::config::key_digest(KEY.as_bytes()));
    let a = Upstream::start("a", Behaviour::Answer).await;
    let top = format!("auth:\n  keys:\n    - name: team-log\n      key_sha256: {digest}\n");
    let log = Logged::new(one_backend(&a, "", &top));
    let keyed = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from(request("auto").to_string()))
        .unwrap();
    assert_eq!(send(&log.state, keyed).await.status, StatusCode::OK);
    assert_eq!(
        chat(&log.state, request("auto")).await.status,
        StatusCode::OK
    );
    let lines = log.lines(2).await;
    assert_eq!(lines[0]["key"], "team-log");
    assert!(lines[1].get("key").is_none(), "no key, no `key`");
    assert!(!log.text().contains(KEY) && !log.text().contains(&digest));
}

#[tokio::test]
async fn prompts_are_logged_only_with_log_prompts() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    for on in [false, true] {
        let top = if on { "log_prompts: true\n" } else { "" };
        let log = Logged::new(one_backend(&a, "", top));
        send(
            &log.state,
            classify_request("my borrow checker hates me", None),
        )
        .await;
        let mut body = request("auto");
        body["messages"] = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there, old friend"}]},
        ]);
        assert_eq!(chat(&log.state, body).await.status, StatusCode::OK);
        let lines = log.lines(2).await;
        if on {
            assert_eq!(lines[0]["prompt"], "my borrow checker hates me");
            assert_eq!(lines[0]["matched_by"], "keyword");
            assert_eq!(
                lines[1]["prompt"],
                json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there, old friend"}])
            );
        } else {
            assert!(lines.iter().all(|l| l.get("prompt").is_none()));
            assert!(!log.text().contains("borrow") && !log.text().contains("old friend"));
        }
    }
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_and_anything_else_replaced() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let log = Logged::new(one_backend(&a, "", ""));
    let long = vec![b'x'; 10 * 1024];
    let junk: [&[u8]; 5] = [b"has space", b"tab\tinside", b"caf\xc3\xa9", &long, b""];
    for id in junk {
        let reply = send(&log.state, classify_request("hello there", Some(id))).await;
        let echoed = reply.header("x-request-id");
        assert_eq!(echoed.len(), 32, "replaced by a generated id: {echoed}");
        assert!(echoed.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let two = Request::post("/classify")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .body(Body::from(json!({"text": "hi"}).to_string()))
        .unwrap();
    assert_eq!(send(&log.state, two).await.header("x-request-id").len(), 32);
    let sane = "0af7651916cd43dd8448eb211c80319c:span/1";
    let reply = send(
        &log.state,
        classify_request("hello there", Some(sane.as_bytes())),
    )
    .await;
    assert_eq!(reply.header("x-request-id"), sane);
    let lines = log.lines(7).await;
    assert_eq!(lines[6]["request_id"], sane);
    for line in &lines[..6] {
        assert_eq!(line["request_id"].as_str().unwrap().len(), 32, "{line}");
    }
    assert!(!log.text().contains("has space") && !log.text().contains("xxxxxxxxxx"));
}

#[tokio::test]
async fn every_response_carries_a_request_id_errors_included() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = one_backend(&a, "", "");
    let absent = send(&s, classify_request("hello there", None)).await;
    assert_eq!(absent.status, StatusCode::OK);
    let not_found = get(&s, "/no-such-endpoint").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let invalid = send(
        &s,
        Request::post("/classify")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", "bad-1")
            .body(Body::from("{\"text\": \"\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.header("x-request-id"), "bad-1");
    let metrics = get(&s, "/metrics").await;
    let ids = [&absent, &not_found, &metrics].map(|r| r.header("x-request-id").to_string());
    assert!(ids.iter().all(|id| id.len() == 32), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
}

#[tokio::test]
async fn admin_decisions_lists_the_recent_ones_newest_first_and_filters_them() {
    let a = Upstream::start("a", Behaviour::Answer).await;
    let s = one_backend(&a, "", "log_prompts: true\n");
    for text in [
        "hello there",
        "write a python function",
        "my borrow checker again",
    ] {
        send(&s, classify_request(text, None)).await;
    }
    assert_eq!(chat(&s, request("chat")).await.status, StatusCode::OK);
    let list = |query: &str| {
        let s = s.clone();
        let path = format!("/admin/decisions{query}");
        async move { get_local(&s, &path).await }
    };
    // The proxied request's line is recorded when its last holder lets go.
    let deadline = Instant::now() + Duration::from_secs(5);
    let all = loop {
        let all = list("").await.json();
        if all["decisions"].as_array().unwrap().len() == 4 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(all["log_prompts"], true);
    let prompts: Vec<Value> = all["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["prompt"].clone())
        .collect();
    assert_eq!(prompts[1], "my borrow checker again");
    assert_eq!(prompts[3], "hello there");
    assert_eq!(prompts[0][0]["content"], "hello there");
    let code = list("?route=code").await.json();
    let code_prompts: Vec<&Value> = code["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["prompt"])
        .collect();
    assert_eq!(
        code_prompts,
        [
            &json!("my borrow checker again"),
            &json!("write a python function")
        ]
    );
    let keyword = list("?matched_by=keyword").await.json();
    assert_eq!(keyword["decisions"].as_array().unwrap().len(), 1);
    let limited = list("?limit=1&route=").await.json();
    assert_eq!(limited["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(limited["decisions"][0]["endpoint"], "/v1/chat/completions");
    for bad in [
        "?limit=0",
        "?limit=many",
        "?matched_by=magic",
        "?colour=red",
    ] {
        assert_eq!(
            list(bad).await.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    let off = one_backend(&a, "", "");
    send(&off, classify_request("hello there", None)).await;
    let reply = get_local(&off, "/admin/decisions").await;
    assert_eq!(reply.json(), json!({"log_prompts": false, "decisions": []}));
}
