//! The `semroute` binary: classify, embed, validate and serve, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn classify_json_answers_the_code_route_with_score_and_runners_up() {
    let out = run(&[
        "classify",
        "--config",
        "routes.yaml",
        "--json",
        "Write a Python function to parse JSON",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let body: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(body["route"], "code");
    assert!(body["score"].as_f64().unwrap() > 0.4);
    assert!(body["candidates"].as_array().unwrap().len() >= 2);
}

#[test]
fn classify_reads_stdin_lines_and_prints_a_table() {
    let mut child = semroute()
        .args(["classify", "--config", "routes.yaml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"compose a haiku about autumn leaves\nI was charged twice this month\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("-> creative_writing"), "{text}");
    assert!(text.contains("-> billing"), "{text}");
    assert!(text.contains("runners-up"), "{text}");
}

#[test]
fn classify_reports_an_empty_input_and_fails_but_answers_the_rest() {
    let out = run(&[
        "classify",
        "--config",
        "routes.yaml",
        "--json",
        "",
        "hi there",
    ]);
    assert!(!out.status.success());
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["error"]["code"], "invalid_request");
    assert_eq!(lines[1]["route"], "small_talk");
}

#[test]
fn embed_prints_text_tokens_and_a_unit_vector() {
    let out = run(&["embed", "hello world", ""]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "hello world");
    assert_eq!(lines[0]["tokens"], 4);
    assert_eq!(lines[1]["tokens"], 2, "the empty text is [CLS] [SEP]");
    let v: Vec<f64> = lines[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn validate_accepts_the_shipped_and_clinc_files() {
    let out = run(&["validate", "--config", "routes.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));
    let clinc = common::shared().join("datasets/clinc150/routes-10shot.yaml");
    let out = run(&["validate", "--config", clinc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("150 routes"));
}

#[test]
fn validate_names_file_line_and_fix_for_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: a\n    utterances: [x]\n    threshold: 2\n  - name: a\n    utterances: [y]\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.yaml:4:"), "{err}");
    assert!(err.contains("routes[0].threshold"), "{err}");
    assert!(err.contains("bad.yaml:5:"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn validate_refuses_patterns_serve_could_not_compile_and_notes_backends_limited_to_the_lowest_class()
 {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let patterns: String = (0..10).map(|_| "      - '\\w{1,30}'\n").collect();
    std::fs::write(
        &big,
        format!("routes:\n  - name: a\n    patterns:\n{patterns}"),
    )
    .unwrap();
    let out = run(&["validate", "--config", big.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("big.yaml:10:"), "{err}");
    assert!(err.contains("size limit"), "{err}");

    let classed = dir.path().join("classed.yaml");
    std::fs::write(
        &classed,
        "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\n  - name: local\n    url: http://127.0.0.1:2/v1\n    model: m\n    data_classes: [public, pii]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open, local]\n  - name: b\n    patterns: ['\\d{3}-\\d{2}-\\d{4}']\n    targets: [local]\n    data_class: pii\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", classed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("classed.yaml:2: note: backends[0].data_classes"),
        "{text}"
    );
    assert!(text.contains("receives only `public` requests"), "{text}");
    assert!(!text.contains("backends[1]"), "{text}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = run(&["classify"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--config"));
    let out = run(&["frobnicate"]);
    assert!(!out.status.success());
    let out = run(&["classify", "--config", "no-such.yaml", "hi"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such.yaml"));
}

#[test]
fn a_missing_model_names_the_places_tried_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "encoder:\n  model: example/not-a-real-model\nroutes:\n  - name: a\n    utterances: [x]\n",
    )
    .unwrap();
    let out = semroute()
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .args(["classify", "--config", path.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("models/not-a-real-model"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(err.contains("./models/fetch.sh"), "{err}");
}

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
            if ready.status() == 200 {
                break;
            }
            assert_eq!(ready.status(), 503);
            assert!(Instant::now() < deadline, "not ready in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body: Value = client
            .post(format!("http://{addr}/classify"))
            .json(&serde_json::json!({"text": "Write a Python function to parse JSON"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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

#[test]
fn bench_reports_the_quoted_numbers_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"hi there\"}\n{\"text\": \"refund my order\", \"route\": \"billing\"}\n",
    )
    .unwrap();
    let out = on_shipped_routes("bench", &data, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    for key in [
        "embed_single_p50_ms",
        "embed_single_p99_ms",
        "embed_batch_per_s",
        "classify_p50_ms",
        "index_build_s",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    assert!(report["embed_single_p99_ms"].as_f64() >= report["embed_single_p50_ms"].as_f64());
}

#[test]
fn bench_names_the_line_of_a_bad_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"ok\"}\n{\"txt\": \"oops\"}\n").unwrap();
    let out = on_shipped_routes("bench", &data, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));
}

#[test]
fn eval_reports_exactly_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("labelled.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"text\": \"I was charged twice this month\", \"route\": \"billing\"}\n",
            "{\"text\": \"compose a haiku about autumn leaves\", \"route\": \"creative_writing\"}\n",
            "{\"text\": \"zxqv blorf 7731\", \"route\": null}\n",
        ),
    )
    .unwrap();
    let out = on_shipped_routes("eval", &data, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let mut keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "confusions",
            "in_scope_acc",
            "in_scope_top1",
            "oos_precision",
            "oos_recall",
            "overall_acc",
            "per_route",
            "queries_per_s"
        ]
    );
    assert_eq!(report["overall_acc"], 1.0);
    assert_eq!(report["oos_recall"], 1.0);
    assert!(report["confusions"].as_array().unwrap().is_empty());

    let out = on_shipped_routes("eval", &data, &[]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("overall accuracy 100.0%"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn eval_refuses_labels_the_config_does_not_know_and_lines_without_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("labelled.jsonl");
    std::fs::write(&data, "{\"text\": \"hi\", \"route\": \"weather\"}\n").unwrap();
    let out = on_shipped_routes("eval", &data, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`weather`"), "{}", stderr(&out));
    std::fs::write(&data, "{\"text\": \"hi\"}\n").unwrap();
    let out = on_shipped_routes("eval", &data, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("labelled.jsonl:1"),
        "{}",
        stderr(&out)
    );
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(stdout(out).trim()).unwrap()
}

#[test]
fn fit_on_clinc150_val_improves_accuracy_and_writes_a_config_eval_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let clinc = common::shared().join("datasets/clinc150");
    let routes = clinc.join("routes-10shot.yaml");
    let val = clinc.join("val.jsonl");
    let fitted = dir.path().join("fitted.yaml");
    let (routes, val, fitted) = (
        routes.to_str().unwrap(),
        val.to_str().unwrap(),
        fitted.to_str().unwrap(),
    );
    let fit = json_of(&run(&[
        "fit", "--config", routes, "--data", val, "--out", fitted, "--json",
    ]));
    let before = fit["before"]["overall_acc"].as_f64().unwrap();
    let after = fit["after"]["overall_acc"].as_f64().unwrap();
    assert!(
        after > before,
        "fit must improve accuracy: {before} -> {after}"
    );
    // An honest estimate sits next to the in-sample one, and is not above it by chance.
    let cv = fit["cross_validated"]["global"].as_f64().unwrap();
    assert!(cv > 0.85 && cv <= fit["in_sample"]["global"].as_f64().unwrap() + 0.01);
    let threshold = fit["threshold"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&threshold));

    // The written config is valid, carries the fitted threshold, and `eval` on it
    // reproduces the "after" numbers exactly.
    let text = std::fs::read_to_string(fitted).unwrap();
    assert!(text.starts_with("# Written by `semroute fit`"), "{text}");
    assert!(
        text.contains(&format!("threshold: {}", fit["threshold"])),
        "{text:.400}"
    );
    assert!(run(&["validate", "--config", fitted]).status.success());
    let eval = json_of(&run(&["eval", "--config", fitted, "--data", val, "--json"]));
    for key in [
        "overall_acc",
        "in_scope_acc",
        "oos_recall",
        "oos_precision",
        "in_scope_top1",
    ] {
        assert_eq!(eval[key], fit["after"][key], "{key}");
    }
}

#[test]
fn fit_refuses_data_it_cannot_fit_and_will_not_overwrite_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("labelled.jsonl");
    let lines: String = (0..30)
        .map(|i| {
            format!("{{\"text\": \"I was charged twice, case {i}\", \"route\": \"billing\"}}\n")
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let out_file = dir.path().join("out.yaml");
    let out = on_shipped_routes("fit", &data, &["--out", out_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("labelled null"), "{}", stderr(&out));
    assert!(
        !out_file.exists(),
        "nothing is written when the fit is refused"
    );

    let out = on_shipped_routes("fit", &data, &["--out", "./routes.yaml"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("new file"), "{}", stderr(&out));
}

#[test]
fn fit_can_tune_the_encoder_and_the_fitted_config_serves_from_the_tuned_model() {
    let dir = tempfile::tempdir().unwrap();
    let fitted = dir.path().join("fitted.yaml");
    let fitted = fitted.to_str().unwrap();
    let data = "tests/data/shipped-labelled.jsonl";
    let fit = json_of(&run(&[
        "fit",
        "--config",
        "routes.yaml",
        "--data",
        data,
        "--out",
        fitted,
        "--tune-encoder",
        "--epochs",
        "3",
        "--json",
    ]));
    // The model directory sits beside the config and the config names it.
    let model = dir.path().join("fitted.model");
    assert_eq!(fit["tuned_model"], model.to_str().unwrap());
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(model.join(file).is_file(), "{file}");
    }
    let tune = &fit["tuning"];
    assert_eq!(
        tune["steps"], 3,
        "one batch of all 8 routes per epoch: {tune}"
    );
    assert!(tune["last_loss"].as_f64().unwrap() < tune["first_loss"].as_f64().unwrap());
    let text = std::fs::read_to_string(fitted).unwrap();
    assert!(
        text.contains(&format!("path: {}", model.display())),
        "{text:.600}"
    );

    // The tuned model is a different model, and eval (like serve) loads it from the config.
    let eval = json_of(&run(&[
        "eval", "--config", fitted, "--data", data, "--json",
    ]));
    assert_eq!(eval["overall_acc"], fit["after"]["overall_acc"]);
    let tuned = json_of(&run(&[
        "classify",
        "--config",
        fitted,
        "--json",
        "refund my order",
    ]));
    let original = json_of(&run(&[
        "classify",
        "--config",
        "routes.yaml",
        "--json",
        "refund my order",
    ]));
    assert_ne!(tuned["score"], original["score"]);
}
