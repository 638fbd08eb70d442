//! The single-valued settings: thresholds, `top_k`, `aggregation`, margins, the encoder.

use super::*;

#[test]
fn top_mean_aggregation_takes_its_count() {
    let config = valid("aggregation: {top_mean: 5}\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(config.aggregation, Aggregation::TopMean(5));
}

#[test]
fn thresholds_outside_minus_one_to_one_are_refused() {
    let i = issue("threshold: 1.5\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(i.path, "threshold");
    assert_eq!(i.line, Some(1));
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n    threshold: -2\n");
    assert_eq!(i.path, "routes[0].threshold");
    assert_eq!(i.line, Some(4));
    assert!(
        i.hint
            .as_deref()
            .is_some_and(|h| h.contains("between -1 and 1"))
    );
}

#[test]
fn bad_top_k_and_device_are_refused() {
    assert_eq!(
        issue("top_k: 0\nroutes:\n  - name: a\n    utterances: [x]\n").path,
        "top_k"
    );
    let i = issue("encoder:\n  device: tpu\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(i.path, "encoder.device");
    assert_eq!(i.line, Some(2));
}

#[test]
fn ambiguity_margin_defaults_and_is_checked() {
    let config = valid("routes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(config.ambiguity_margin, DEFAULT_AMBIGUITY_MARGIN);
    let config = valid("ambiguity_margin: 0.1\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert!((config.ambiguity_margin - 0.1).abs() < 1e-6);
    let i = issue("ambiguity_margin: -1\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!((i.path.as_str(), i.line), ("ambiguity_margin", Some(1)));
}

#[test]
fn precision_is_read_and_checked() {
    let config = valid("encoder: {precision: bf16}\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(config.encoder.precision, Precision::Bf16);
    let config = valid("encoder: {precision: int8}\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(config.encoder.precision, Precision::Int8);
    let i = issue("encoder:\n  precision: fp8\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!((i.path.as_str(), i.line), ("encoder.precision", Some(2)));
    assert!(
        i.hint.as_deref().is_some_and(|h| h.contains("int8")),
        "{i:?}"
    );
}

#[test]
fn threads_default_to_the_cores_and_are_checked() {
    let routes = "routes:\n  - name: a\n    utterances: [x]\n";
    assert_eq!(valid(routes).encoder.threads, None);
    let config = valid(&format!("encoder: {{threads: 4}}\n{routes}"));
    assert_eq!(config.encoder.threads, Some(4));
    for bad in ["0", "-2", "100000"] {
        let i = issue(&format!("encoder:\n  threads: {bad}\n{routes}"));
        assert_eq!(
            (i.path.as_str(), i.line),
            ("encoder.threads", Some(2)),
            "{bad}"
        );
    }
}

#[test]
fn head_weight_out_of_range_is_reported() {
    let problem = issue("head_weight: -1\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(problem.path, "head_weight");
    assert_eq!(problem.line, Some(1));
}

#[test]
fn log_prompts_is_off_unless_set_and_must_be_a_boolean() {
    let config = valid("routes:\n  - name: a\n    utterances: [x]\n");
    assert!(!config.log_prompts);
    let config = valid("log_prompts: true\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert!(config.log_prompts);
    let written = config.to_yaml("").unwrap_or_else(|e| panic!("{e}"));
    assert!(written.contains("log_prompts: true"), "{written}");
    assert!(valid(&written).log_prompts);
    let i = issue("log_prompts: maybe\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!((i.path.as_str(), i.line), ("log_prompts", Some(1)));
}
