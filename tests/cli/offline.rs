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
            "oos_share",
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

/// Two of its 23 prompts are out of scope: "what is the capital of australia" scores 0.38 on
/// `general` and "how do I reset the password of my wifi router" 0.44 on `support`, above
/// four in-scope prompts (0.28-0.40). Counted as labelled, letting both through costs fewer
/// prompts than losing those four; weighed as 30% of the traffic, it does not.
const FEW_OOS: &str = "tests/data/few-oos-labelled.jsonl";

#[test]
fn fit_for_a_larger_out_of_scope_share_raises_the_threshold_and_warns_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let plain_out = dir.path().join("plain.yaml");
    let plain = run(&[
        "fit",
        "--config",
        "routes.yaml",
        "--data",
        FEW_OOS,
        "--out",
        plain_out.to_str().unwrap(),
        "--json",
    ]);
    assert!(stderr(&plain).contains("warning: only 8.7% of the labelled prompts are out of scope"));
    assert!(stderr(&plain).contains("--oos-share"), "{}", stderr(&plain));
    let plain = json_of(&plain);
    assert_eq!(plain["oos_share"], Value::Null);
    assert_eq!(
        (plain["data_oos"].as_u64(), plain["data_prompts"].as_u64()),
        (Some(2), Some(23))
    );
    assert!((plain["data_oos_share"].as_f64().unwrap() - 2.0 / 23.0).abs() < 1e-12);

    let weighted_out = dir.path().join("weighted.yaml");
    let weighted = run(&[
        "fit",
        "--config",
        "routes.yaml",
        "--data",
        FEW_OOS,
        "--out",
        weighted_out.to_str().unwrap(),
        "--oos-share",
        "0.3",
    ]);
    assert!(weighted.status.success(), "{}", stderr(&weighted));
    assert!(
        !stderr(&weighted).contains("warning"),
        "{}",
        stderr(&weighted)
    );
    assert!(
        stdout(&weighted)
            .contains("out-of-scope share in the data: 8.7% (2 of 23); weighting as 30.0%"),
        "{}",
        stdout(&weighted)
    );
    let threshold = |path: &std::path::Path| -> f64 {
        let text = std::fs::read_to_string(path).unwrap();
        let line = text.lines().find(|l| l.starts_with("threshold: ")).unwrap();
        line["threshold: ".len()..].trim().parse().unwrap()
    };
    let (low, high) = (threshold(&plain_out), threshold(&weighted_out));
    assert!(low < 0.38 && high > 0.44, "{low} -> {high}");

    // The fitted configs, evaluated for that mix: the weighted fit lets neither through.
    let eval = |config: &std::path::Path| {
        let config = config.to_str().unwrap();
        json_of(&run(&[
            "eval",
            "--config",
            config,
            "--data",
            FEW_OOS,
            "--json",
            "--oos-share",
            "0.3",
        ]))
    };
    let (plain_eval, weighted_eval) = (eval(&plain_out), eval(&weighted_out));
    assert_eq!(plain_eval["oos_recall"], 0.0);
    assert_eq!(weighted_eval["oos_recall"], 1.0);
    assert!(weighted_eval["overall_acc"].as_f64() > plain_eval["overall_acc"].as_f64());
}

#[test]
fn eval_with_an_oos_share_weighs_overall_accuracy_and_says_so() {
    let plain = json_of(&on_shipped_routes(
        "eval",
        std::path::Path::new(FEW_OOS),
        &["--json"],
    ));
    let out = on_shipped_routes(
        "eval",
        std::path::Path::new(FEW_OOS),
        &["--json", "--oos-share", "0.25"],
    );
    let weighted = json_of(&out);
    assert_eq!(plain["oos_share"], Value::Null);
    assert_eq!(weighted["oos_share"], 0.25);
    // Rates within one group are the same; overall accuracy is their mix at 25/75.
    for key in ["in_scope_acc", "in_scope_top1", "oos_recall"] {
        assert_eq!(plain[key], weighted[key], "{key}");
    }
    let (in_scope, oos) = (
        weighted["in_scope_acc"].as_f64().unwrap(),
        weighted["oos_recall"].as_f64().unwrap(),
    );
    let overall = weighted["overall_acc"].as_f64().unwrap();
    assert!(
        (overall - (0.75 * in_scope + 0.25 * oos)).abs() < 1e-12,
        "{weighted}"
    );
    let right = plain["overall_acc"].as_f64().unwrap() * 23.0;
    assert!((right - (in_scope * 21.0 + oos * 2.0)).abs() < 1e-9);

    let text = on_shipped_routes(
        "eval",
        std::path::Path::new(FEW_OOS),
        &["--oos-share", "0.25"],
    );
    assert!(
        stdout(&text).contains("weighted as      25.0% out of scope (the data: 8.7% (2 of 23))"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn an_oos_share_must_be_a_fraction_and_needs_out_of_scope_prompts() {
    for bad in ["0", "1", "1.5", "-0.2", "20%"] {
        let out = on_shipped_routes("eval", std::path::Path::new(FEW_OOS), &["--oos-share", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            stderr(&out).contains("--oos-share"),
            "{bad}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("between 0 and 1") || stderr(&out).contains("not a number"));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in-scope.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"refund my order\", \"route\": \"billing\"}\n",
    )
    .unwrap();
    let out = on_shipped_routes("eval", &data, &["--oos-share", "0.2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("none of the 1 prompts is labelled null"),
        "{}",
        stderr(&out)
    );
}
