//! `serve` end to end, as a process: it listens, turns ready, answers, and stops cleanly
//! on SIGTERM.

use crate::{common, semroute};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `semroute serve` end to end: listens, turns ready, classifies, stops cleanly on SIGTERM.
#[test]
fn serve_answers_over_http_and_shuts_down_on_sigterm() {
    let child = semroute()
        .args(["serve", "--config", "routes.yaml", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "semroute=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("serve logs its address");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = common::http_client();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .unwrap();
            let (status, _, _) = common::openapi::read("GET", ready).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            assert!(Instant::now() < deadline, "not ready in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = client
            .post(format!("http://{addr}/classify"))
            .json(&serde_json::json!({"text": "Write a Python function to parse JSON"}))
            .send()
            .await
            .unwrap();
        let body = common::openapi::read_json("POST", answer).await;
        assert_eq!(body["route"], "code");
    });
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.0.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// A server child that is killed if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
