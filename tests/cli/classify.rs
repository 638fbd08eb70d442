//! `classify` and `embed`, and what any command says about bad arguments or a model it
//! cannot find.

use crate::{run, semroute, stderr, stdout};
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;

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
