//! The offline tools on small data files: `bench` and `eval` reports and the errors they
//! name, and `fit` (thresholds, then the encoder tuned) writing a config that `eval` and
//! `classify` read back.

use crate::{common, json_of, on_shipped_routes, run, stderr, stdout};
use serde_json::Value;

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
    // Refused before the encoder is tuned (minutes of work), not after.
    let out = on_shipped_routes(
        "fit",
        &data,
        &["--out", out_file.to_str().unwrap(), "--tune-encoder"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("labelled null"), "{}", stderr(&out));
    assert!(!out_file.exists() && !out_file.with_extension("model").exists());

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
