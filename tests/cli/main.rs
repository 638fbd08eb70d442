//! The `semroute` binary as a user runs it, one module per group of commands: classify
//! and embed, validate, serve, and the offline tools (bench, eval, fit). The helpers here
//! run the binary built for the tests against the shipped routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod classify;
mod conversations;
mod experiments;
mod offline;
mod reload;
mod serve;
mod validate;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn semroute() -> Command {
    common::model_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semroute"));
    cmd.current_dir(common::repo());
    // Keep the embedding cache out of the home directory.
    cmd.env(
        "SEMROUTE_CACHE_DIR",
        std::env::temp_dir().join("semroute-test-cache"),
    );
    cmd
}

fn run(args: &[&str]) -> Output {
    semroute().args(args).output().expect("run semroute")
}

/// `semroute COMMAND --config routes.yaml --data DATA EXTRA...`
fn on_shipped_routes(command: &str, data: &std::path::Path, extra: &[&str]) -> Output {
    let data = data.to_str().unwrap();
    let mut args = vec![command, "--config", "routes.yaml", "--data", data];
    args.extend_from_slice(extra);
    run(&args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(stdout(out).trim()).unwrap()
}

/// A `semroute serve` child, killed if the test ends before stopping it.
struct Served {
    child: Child,
    /// The address it logged that it listens on.
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `semroute serve --addr 127.0.0.1:0 ARGS` (logging at info), once it logged its address.
fn serve(args: &[&str], stdout: Stdio) -> Served {
    let child = semroute()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "semroute=info")
        .stderr(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        addr: String::new(),
    };
    let stderr = served.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    served.addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("serve logs its address");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    served
}
