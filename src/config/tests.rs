//! Config validation: every error names the file, the YAML path and the line, and says
//! what to write instead.

use super::*;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::parse(yaml, "routes.yaml", Path::new("/etc/semroute"))
}

fn valid(yaml: &str) -> Config {
    parse(yaml).unwrap_or_else(|err| panic!("expected a valid config, got: {err}"))
}

/// The single issue of an invalid config.
fn issue(yaml: &str) -> ConfigIssue {
    let err = match parse(yaml) {
        Ok(_) => panic!("expected an invalid config:\n{yaml}"),
        Err(err) => err,
    };
    let text = err.to_string();
    assert!(
        text.contains("routes.yaml"),
        "the message names the file: {text}"
    );
    match err.issues() {
        [one] => one.clone(),
        many => panic!("expected one issue, got {}: {text}", many.len()),
    }
}

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
fn top_mean_aggregation_takes_its_count() {
    let config = valid("aggregation: {top_mean: 5}\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(config.aggregation, Aggregation::TopMean(5));
}

#[test]
fn routes_named_yes_and_no_stay_strings() {
    let config = valid(
        "routes:\n  - name: yes\n    utterances: [sure]\n  - name: no\n    utterances: [nope]\n",
    );
    assert_eq!(config.routes[0].name.as_str(), "yes");
    assert_eq!(config.routes[1].name.as_str(), "no");
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
fn a_duplicate_route_name_points_at_both() {
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n  - name: a\n    utterances: [y]\n");
    assert_eq!(i.path, "routes[1].name");
    assert_eq!(i.line, Some(4));
    assert!(i.message.contains("line 2"), "{i:?}");
    assert!(i.hint.as_deref().is_some_and(|h| h.contains("unique")));
}

#[test]
fn a_route_with_nothing_to_match_on_is_refused() {
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n  - name: empty\n");
    assert_eq!(i.path, "routes[1]");
    assert_eq!(i.line, Some(4));
    assert!(i.message.contains("empty"), "{i:?}");
}

#[test]
fn the_default_route_alone_may_have_no_utterances() {
    let config = valid(
        "default_route: fallback\nroutes:\n  - name: a\n    utterances: [x]\n  - name: fallback\n",
    );
    assert_eq!(config.default_route, Some(RouteId::at(1)));
}

#[test]
fn a_route_with_only_keywords_or_patterns_is_fine() {
    valid("routes:\n  - name: a\n    keywords: [invoice]\n  - name: b\n    patterns: ['x+']\n");
}

#[test]
fn an_invalid_regex_is_explained() {
    let i = issue("routes:\n  - name: a\n    patterns: ['(unclosed']\n");
    assert_eq!(i.path, "routes[0].patterns[0]");
    assert_eq!(i.line, Some(3));
    assert!(i.message.contains("invalid regular expression"), "{i:?}");
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
fn a_default_route_that_names_nothing_lists_the_routes() {
    let i = issue("default_route: genral\nroutes:\n  - name: general\n    utterances: [x]\n");
    assert_eq!(i.path, "default_route");
    assert_eq!(i.line, Some(1));
    assert!(
        i.hint.as_deref().is_some_and(|h| h.contains("general")),
        "{i:?}"
    );
}

#[test]
fn empty_utterances_keywords_and_names_are_refused() {
    assert_eq!(
        issue("routes:\n  - name: a\n    utterances: ['  ']\n").path,
        "routes[0].utterances[0]"
    );
    assert_eq!(
        issue("routes:\n  - name: a\n    keywords: ['']\n").path,
        "routes[0].keywords[0]"
    );
    assert_eq!(
        issue("routes:\n  - name: ''\n    utterances: [x]\n").path,
        "routes[0].name"
    );
}

#[test]
fn no_routes_or_an_empty_file_is_refused() {
    assert!(issue("routes: []\n").message.contains("no routes"));
    assert!(issue("").message.contains("empty"));
    let i = issue("threshold: 0.5\n");
    assert!(i.message.contains("routes"), "{i:?}");
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
    let i = issue("encoder:\n  precision: fp8\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!((i.path.as_str(), i.line), ("encoder.precision", Some(2)));
}

#[test]
fn a_written_config_loads_back_to_the_same_settings() {
    let yaml = r#"
encoder:
  path: models/mini
  device: cuda:1
  max_tokens: 128
  precision: bf16
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
    assert_eq!(again.encoder.precision, Precision::Bf16);
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

#[test]
fn head_weight_out_of_range_is_reported() {
    let problem = issue("head_weight: -1\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(problem.path, "head_weight");
    assert_eq!(problem.line, Some(1));
}

const BACKENDS: &str = r#"
backends:
  - name: fast
    url: http://127.0.0.1:9001/v1/
    model: small
    api_key_env: SMALL_API_KEY
    first_byte_timeout_ms: 2000
    weight: 3
    cost: {input_per_mtok: 0.15, output_per_mtok: 0.6}
    data_classes: [public]
  - name: big
    url: https://api.example.com/v1
    model: large
    data_classes: [public, internal]
"#;

#[test]
fn backends_and_route_targets_are_resolved_with_their_defaults() {
    let config = valid(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast, big]\n    strategy: round_robin\n  - name: b\n    utterances: [y]\n    targets: [big]\n    data_class: internal\n"
    ));
    assert_eq!(config.backends.len(), 2);
    let fast = &config.backends[0];
    assert_eq!(
        fast.url, "http://127.0.0.1:9001/v1",
        "trailing slash dropped"
    );
    assert_eq!(
        fast.first_byte_timeout,
        std::time::Duration::from_millis(2000)
    );
    assert_eq!(fast.timeout, std::time::Duration::from_millis(60_000));
    assert_eq!(fast.retries, 1);
    assert_eq!(fast.weight, 3);
    assert!(fast.accepts(Some("public")) && !fast.accepts(Some("internal")));
    assert!(config.backends[1].accepts(Some("internal")));
    assert!(!config.backends[1].accepts(Some("pii")));
    let a = &config.routes[0].dispatch;
    assert_eq!(a.targets, vec![BackendId(0), BackendId(1)]);
    assert_eq!(a.strategy, Strategy::RoundRobin);
    assert_eq!(
        config.routes[1].dispatch.data_class.as_deref(),
        Some("internal")
    );
    assert_eq!(config.backend_id("big"), Some(BackendId(1)));

    // And they survive being written out.
    let written = config.to_yaml("").unwrap_or_else(|e| panic!("{e}"));
    let again = valid(&written);
    assert_eq!(again.backends, config.backends);
    assert_eq!(again.routes[0].dispatch, config.routes[0].dispatch);
    assert_eq!(again.routes[1].dispatch, config.routes[1].dispatch);
}

#[test]
fn an_unknown_target_names_the_backends_there_are() {
    let problem = issue(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fats]\n"
    ));
    assert_eq!(problem.path, "routes[0].targets[0]");
    assert!(problem.message.contains("`fats`"), "{problem:?}");
    assert!(problem.hint.unwrap().contains("fast, big"));
}

#[test]
fn once_backends_exist_every_route_needs_targets() {
    let problem = issue(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n"
    ));
    assert_eq!(problem.path, "routes[0].targets");
    assert!(problem.message.contains("no targets"));
}

#[test]
fn backend_mistakes_are_each_reported_with_their_line() {
    let yaml = r#"backends:
  - name: one
    url: ftp://example.com
    model: m
  - name: one
    url: "not a url"
    model: m
  - name: three
    url: http://127.0.0.1:1/v1
    model: m
    api_key_env: "sk-live-123"
    timeout_ms: 0
routes:
  - name: a
    utterances: [x]
    targets: [three]
    strategy: random
"#;
    let err = parse(yaml).err().unwrap_or_else(|| panic!("invalid"));
    let paths: Vec<(&str, Option<u64>)> = err
        .issues()
        .iter()
        .map(|i| (i.path.as_str(), i.line))
        .collect();
    assert_eq!(
        paths,
        [
            ("backends[0].url", Some(3)),
            ("backends[1].name", Some(5)),
            ("backends[1].url", Some(6)),
            ("backends[2].api_key_env", Some(11)),
            ("backends[2].timeout_ms", Some(12)),
            ("routes[0].strategy", Some(17)),
        ],
        "{err}"
    );
    assert!(err.to_string().contains("scheme is `ftp`"), "{err}");
    assert!(
        !err.to_string().contains("sk-live"),
        "a key pasted by mistake is not echoed"
    );
}

#[test]
fn a_data_class_no_target_accepts_is_refused() {
    let problem = issue(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast]\n    data_class: secret\n"
    ));
    assert_eq!(problem.path, "routes[0].data_class");
    assert!(problem.message.contains("`secret`"));
}

#[test]
fn once_data_classes_are_used_a_backend_without_a_list_takes_only_the_lowest_and_validate_says_so()
{
    let yaml = "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\n  - name: local\n    url: http://127.0.0.1:2/v1\n    model: m\n    data_classes: [public, pii]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open, local]\n    data_class: pii\n";
    let config = valid(yaml);
    let open = &config.backends[0];
    assert!(open.accepts(Some("public")));
    assert!(!open.accepts(Some("internal")) && !open.accepts(Some("pii")));
    assert!(open.accepts(None), "an unclassified request goes anywhere");
    assert_eq!(config.notes.len(), 1, "{:?}", config.notes);
    assert_eq!(config.notes[0].path, "backends[0].data_classes");
    assert!(config.notes[0].message.contains("only `public`"));
    // Without any class in the file, a backend without a list takes everything.
    let plain = valid(
        "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open]\n",
    );
    assert!(plain.backends[0].accepts(Some("restricted")));
    assert!(plain.notes.is_empty());
}

#[test]
fn the_class_order_is_the_default_or_the_files_and_unknown_classes_are_refused() {
    let config = valid("routes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(
        config.data_classes.describe(),
        "public < internal < pii < restricted"
    );
    let custom =
        valid("data_classes_order: [open, secret]\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(custom.data_classes.stricter("open", "secret"), "secret");
    assert_eq!(custom.data_classes.lowest(), "open");
    let problem = issue("data_classes_order: [a, a]\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(problem.path, "data_classes_order[1]");
    let problem = issue(
        "backends:\n  - name: b\n    url: http://127.0.0.1:1/v1\n    model: m\n    data_classes: [public, topsecret]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [b]\n",
    );
    assert_eq!(problem.path, "backends[0].data_classes[1]");
    assert_eq!(problem.line, Some(5));
    assert!(problem.message.contains("`topsecret`"));
}

#[test]
fn patterns_that_serve_could_not_compile_together_are_refused_with_their_line() {
    // Each pattern compiles alone; together they pass the compiled-size limit.
    let patterns: Vec<String> = (0..10)
        .map(|_| "      - '\\w{1,30}'\n".to_string())
        .collect();
    let yaml = format!("routes:\n  - name: a\n    patterns:\n{}", patterns.concat());
    let problem = issue(&yaml);
    assert_eq!(problem.path, "routes[0].patterns[6]", "{problem:?}");
    assert_eq!(problem.line, Some(10), "{problem:?}");
    assert!(problem.message.contains("size limit"), "{problem:?}");
}

#[test]
fn credentials_in_a_backend_url_are_refused_without_echoing_them() {
    let err = parse("backends:\n  - name: b\n    url: http://admin:hunter2@127.0.0.1:1/v1\n    model: m\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [b]\n")
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    let text = err.to_string();
    assert!(
        text.contains("backends[0].url") && text.contains("api_key_env"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}
