//! The `semroute` binary as a user runs it, one module per group of commands: classify
//! and embed, validate, serve, and the offline tools (bench, eval, fit). The helpers here
//! run the binary built for the tests against the shipped routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod classify;
mod conversations;
mod offline;
mod reload;
mod serve;
mod validate;

use serde_json::Value;
use std::process::{Command, Output};

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
