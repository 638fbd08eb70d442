//! `serve` reloading as a process: on SIGHUP, and with `--watch` when the file is replaced
//! the way editors save (a new file renamed over the old). A file saved broken leaves the
//! service answering on the old config.

use crate::{Served, semroute, serve};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUTES: &str = "routes:\n  - name: weather\n    utterances: [will it rain tomorrow, is it sunny outside]\n  - name: billing\n    utterances: [why was I charged twice, update my credit card]\n";

fn start(config: &Path, extra: &[&str]) -> Served {
    let args = [&["--config", config.to_str().unwrap()][..], extra].concat();
    let server = serve(&args, Stdio::null());
    wait_for(&server, "/readyz", |_| true);
    server
}

/// One HTTP/1.1 exchange over a fresh connection: the status and the body.
fn http(server: &Served, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(&server.addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    crate::common::openapi::check_raw(method, path, &answer);
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// `GET path` as JSON, when it answers 200.
fn get(server: &Served, path: &str) -> Option<Value> {
    match http(server, "GET", path, "")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Polls `path` until it answers 200 with a body `done` accepts (60 s at most).
fn wait_for(server: &Served, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(body) = get(server, path)
            && done(&body)
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never became as expected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Saves `text` as an editor does: written beside, then renamed over `path`.
fn save(path: &Path, text: &str) {
    let beside = path.with_extension("yaml.swp");
    std::fs::write(&beside, text).unwrap();
    std::fs::rename(&beside, path).unwrap();
}

fn generation(server: &Served) -> u64 {
    get(server, "/admin/config").unwrap()["generation"]
        .as_u64()
        .unwrap()
}

#[test]
fn sighup_reloads_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, ROUTES).unwrap();
    let server = start(&config, &[]);
    assert_eq!(generation(&server), 1);
    std::fs::write(
        &config,
        ROUTES.replace("will it rain tomorrow", "will it snow tomorrow"),
    )
    .unwrap();
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let config_now = wait_for(&server, "/admin/config", |c| c["generation"] == 2);
    assert_eq!(config_now["last_reload"]["result"], "ok");
    // Still the same process, serving.
    let (_, metrics) = http(&server, "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("semroute_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn watch_reloads_a_saved_file_and_keeps_serving_when_it_is_saved_broken() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, ROUTES).unwrap();
    let server = start(&config, &["--watch"]);
    let added = format!("{ROUTES}  - name: dining\n    utterances: [reserve a table for dinner]\n");
    save(&config, &added);
    wait_for(&server, "/admin/config", |c| {
        c["generation"] == 2 && c["routes"] == 3
    });
    // Saved broken: the old config (3 routes) keeps answering, the failure is on record.
    save(&config, "routes:\n  - name: [oops\n");
    let after = wait_for(&server, "/admin/config", |c| {
        c["last_reload"]["result"] == "error"
    });
    assert_eq!(after["generation"], 2);
    assert_eq!(after["routes"], 3);
    let route = classify(&server, "book a table for dinner tonight");
    assert_eq!(route, "dining");
    // An unrelated file in the same directory does not reload.
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(generation(&server), 2);
}

fn classify(server: &Served, text: &str) -> Value {
    let (status, body) = http(
        server,
        "POST",
        "/classify",
        &json!({"text": text}).to_string(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["route"].clone()
}

#[test]
fn serve_shadow_compares_live_prompts_with_the_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, ROUTES).unwrap();
    let candidate = dir.path().join("candidate.yaml");
    let added = format!("{ROUTES}  - name: dining\n    utterances: [reserve a table for dinner]\n");
    std::fs::write(&candidate, added).unwrap();
    let server = start(&config, &["--shadow", candidate.to_str().unwrap()]);
    classify(&server, "book a table for dinner tonight");
    classify(&server, "will it rain on monday");
    let report = wait_for(&server, "/admin/shadow", |r| r["compared"] == 2);
    assert_eq!(report["agreed"], 1, "{report}");
    // A candidate that is not valid stops serve with the reason.
    std::fs::write(&candidate, "routes: []\n").unwrap();
    let out = semroute()
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--shadow",
            candidate.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--shadow"), "{stderr}");
}
