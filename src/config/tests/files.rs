//! The file as a whole: defaults, every option read, YAML errors with their path and line,
//! every problem reported at once, and a written config that loads back the same.

use super::*;
use std::path::PathBuf;

#[test]
fn the_minimal_file_gets_every_default() {
    let config = valid("routes:\n  - name: a\n    utterances: [hello]\n");
    assert_eq!(config.threshold.get(), DEFAULT_THRESHOLD);
    assert_eq!(config.top_k, DEFAULT_TOP_K);
    assert_eq!(config.aggregation, Aggregation::CentroidMix(0.7));
    assert_eq!(config.default_route, None);
    assert_eq!(config.encoder, EncoderConfig::default());
    assert_eq!(config.routes[0].name.as_str(), "a");
}

#[test]
fn every_option_is_read() {
    let config = valid(
        r#"
encoder:
  model: sentence-transformers/all-MiniLM-L12-v2
  path: models/custom
  device: auto
  max_tokens: 128
threshold: 0.5
top_k: 7
aggregation: max
default_route: chat
routes:
  - name: chat
  - name: billing
    description: money questions
    utterances: [refund please]
    keywords: [invoice]
    patterns: ['\d{16}']
    threshold: 0.6
    metadata: {team: payments, priority: 2}
"#,
    );
    assert_eq!(
        config.encoder.model,
        "sentence-transformers/all-MiniLM-L12-v2"
    );
    assert_eq!(
        config.encoder.path,
        Some(PathBuf::from("/etc/semroute/models/custom"))
    );
    assert_eq!(config.encoder.device, DeviceChoice::Auto);
    assert_eq!(config.encoder.max_tokens, 128);
    assert_eq!(config.threshold.get(), 0.5);
    assert_eq!(config.top_k, 7);
    assert_eq!(config.aggregation, Aggregation::Max);
    assert_eq!(config.default_route, Some(RouteId::at(0)));
    let billing = &config.routes[1];
    assert_eq!(billing.threshold.map(Threshold::get), Some(0.6));
    assert_eq!(billing.keywords[0].as_str(), "invoice");
    assert_eq!(billing.patterns[0].as_str(), r"\d{16}");
    assert_eq!(billing.description.as_deref(), Some("money questions"));
    assert_eq!(billing.metadata["team"], serde_json::json!("payments"));
    assert_eq!(config.threshold_for(RouteId::at(1)).get(), 0.6);
    assert_eq!(config.threshold_for(RouteId::at(0)).get(), 0.5);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n    treshold: 0.5\n");
    assert!(i.message.contains("treshold"), "{i:?}");
    assert_eq!(i.line, Some(4));
    assert_eq!(i.path, "routes[0].treshold");
    assert!(i.hint.is_some());
}

#[test]
fn an_unknown_top_level_key_is_refused() {
    let i = issue("route:\n  - name: a\n");
    assert!(i.message.contains("route"), "{i:?}");
    assert_eq!(i.line, Some(1));
}

#[test]
fn a_wrong_type_is_named_with_its_path() {
    let i = issue("top_k: many\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(i.path, "top_k");
    assert_eq!(i.line, Some(1));
}

#[test]
fn no_routes_or_an_empty_file_is_refused() {
    assert!(issue("routes: []\n").message.contains("no routes"));
    assert!(issue("").message.contains("empty"));
    let i = issue("threshold: 0.5\n");
    assert!(i.message.contains("routes"), "{i:?}");
}

#[test]
fn malformed_yaml_reports_a_line() {
    let i = issue("routes:\n  - name: a\n    utterances: [x\n");
    assert!(i.line.is_some(), "{i:?}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let err = parse("threshold: 3\nroutes:\n  - name: a\n    patterns: ['(']\n  - name: a\n    utterances: [x]\n")
        .err()
        .unwrap_or_else(|| panic!("expected errors"));
    assert_eq!(err.issues().len(), 3, "{err}");
    let text = err.to_string();
    assert!(text.contains("routes.yaml:1:"), "{text}");
    assert!(text.contains("routes.yaml:4:"), "{text}");
    assert!(text.contains("routes.yaml:5:"), "{text}");
}

#[test]
fn an_unreadable_file_says_so() {
    let err = Config::load(Path::new("/no/such/routes.yaml"))
        .err()
        .unwrap_or_else(|| panic!("loaded a missing file"));
    assert!(err.to_string().contains("/no/such/routes.yaml"));
}

#[test]
fn a_written_config_loads_back_to_the_same_settings() {
    let yaml = r#"
encoder:
  path: models/mini
  device: cuda:1
  max_tokens: 128
  precision: int8
  threads: 3
threshold: 0.42
top_k: 7
aggregation: {top_mean: 2}
default_route: chat
ambiguity_margin: 0.05
head_weight: 1.5
routes:
  - name: code
    description: "programming: \"quoted\" and # not a comment"
    threshold: 0.3
    keywords: [python, "stack trace"]
    patterns: ['(?i)\bfn\s+\w+\(']
    utterances: ["write a function", "it's: tricky\nmultiline"]
    metadata: {tier: 2, tags: [a, b]}
  - name: chat
    utterances: [hello]
"#;
    let config = valid(yaml);
    let written = config
        .to_yaml("fitted by a test\nsecond line")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(written.starts_with("# fitted by a test\n# second line\n"));
    let again = valid(&written);
    assert_eq!(
        again.to_yaml("fitted by a test\nsecond line").ok(),
        Some(written.clone())
    );
    assert_eq!(again.threshold.get(), 0.42);
    assert_eq!(again.top_k, 7);
    assert_eq!(again.aggregation, Aggregation::TopMean(2));
    assert_eq!(again.default_route, Some(RouteId::at(1)));
    assert_eq!(again.ambiguity_margin, 0.05);
    assert_eq!(again.head_weight, 1.5);
    assert_eq!(again.encoder.device, DeviceChoice::Cuda(1));
    assert_eq!(again.encoder.precision, Precision::Int8);
    assert_eq!(again.encoder.threads, Some(3));
    assert_eq!(
        again.encoder.path,
        Some(PathBuf::from("/etc/semroute/models/mini"))
    );
    let code = &again.routes[0];
    assert_eq!(code.threshold.map(|t| t.get()), Some(0.3));
    assert_eq!(code.utterances, config.routes[0].utterances);
    assert_eq!(code.description, config.routes[0].description);
    assert_eq!(code.metadata, config.routes[0].metadata);
    let words: Vec<&str> = code.keywords.iter().map(|k| k.as_str()).collect();
    assert_eq!(words, ["python", "stack trace"]);
    assert_eq!(code.patterns[0].as_str(), r"(?i)\bfn\s+\w+\(");
}
