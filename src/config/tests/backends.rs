//! Backends and the routes' targets: defaults, unknown or missing targets, every mistake in a
//! backend with its line, credentials never echoed.

use super::*;

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
    assert_eq!(a.targets, vec![BackendId::at(0), BackendId::at(1)]);
    assert_eq!(a.strategy, Strategy::RoundRobin);
    assert_eq!(
        config.routes[1].dispatch.data_class.as_deref(),
        Some("internal")
    );
    assert_eq!(config.backend_id("big"), Some(BackendId::at(1)));

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
