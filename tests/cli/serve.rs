//! `serve` end to end, as a process: it listens, turns ready, answers, and stops cleanly
//! on SIGTERM; `--decision-log` writes to a file or to standard output.

use crate::{Served, common, semroute, serve};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `semroute serve --config routes.yaml` on a free port with `extra` arguments: the child
/// and the address it logged.
fn start(extra: &[&str], stdout: Stdio) -> (Served, String) {
    let args = [&["--config", "routes.yaml"][..], extra].concat();
    let served = serve(&args, stdout);
    let addr = served.addr.clone();
    (served, addr)
}

async fn wait_ready(client: &reqwest::Client, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        let (status, _, _) = common::openapi::read("GET", ready).await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Classifies `text` with `x-request-id: id` once the server is ready; returns the route.
fn classify_on(addr: &str, text: &str, id: &str) -> Value {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = common::http_client();
        wait_ready(&client, addr).await;
        let response = client
            .post(format!("http://{addr}/classify"))
            .header("x-request-id", id)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], id);
        common::openapi::read_json("POST", response).await["route"].clone()
    })
}

fn terminate(child: &mut Served) {
    let pid = child.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// `semroute serve` end to end: listens, turns ready, classifies, stops cleanly on SIGTERM.
#[test]
fn serve_answers_over_http_and_shuts_down_on_sigterm() {
    let (mut child, addr) = start(&[], Stdio::null());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = common::http_client();
        wait_ready(&client, &addr).await;
        let answer = client
            .post(format!("http://{addr}/classify"))
            .json(&serde_json::json!({"text": "Write a Python function to parse JSON"}))
            .send()
            .await
            .unwrap();
        let body = common::openapi::read_json("POST", answer).await;
        assert_eq!(body["route"], "code");
    });
    terminate(&mut child);
}

#[test]
fn serve_appends_one_decision_line_per_classification_to_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    std::fs::write(&path, "{\"earlier\": true}\n").unwrap();
    let (mut child, addr) = start(&["--decision-log", path.to_str().unwrap()], Stdio::null());
    let text = "Write a Python function to parse JSON";
    assert_eq!(classify_on(&addr, text, "cli-file-1"), "code");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path).unwrap().lines().count() < 2 {
        assert!(Instant::now() < deadline, "no line was written");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&mut child);
    let written = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "appended to what was there: {written}");
    assert_eq!(lines[1]["request_id"], "cli-file-1");
    assert_eq!(lines[1]["endpoint"], "/classify");
    assert_eq!(lines[1]["route"], "code");
    assert!(!written.contains("Python"), "no prompt without log_prompts");
}

#[test]
fn serve_writes_the_decision_log_to_standard_output_with_a_dash() {
    let (mut child, addr) = start(&["--decision-log", "-"], Stdio::piped());
    let stdout = child.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let text = "Write a Python function to parse JSON";
    assert_eq!(classify_on(&addr, text, "cli-stdout-1"), "code");
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a decision line on stdout");
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["request_id"], "cli-stdout-1");
    assert_eq!(line["route"], "code");
    terminate(&mut child);
}

#[test]
fn serve_refuses_to_start_with_a_decision_log_it_cannot_open() {
    let out = semroute()
        .args(["serve", "--config", "routes.yaml", "--addr", "127.0.0.1:0"])
        .args([
            "--decision-log",
            "/nonexistent-semroute-dir/decisions.jsonl",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the decision log /nonexistent-semroute-dir/decisions.jsonl"),
        "{err}"
    );
}
