//! `auth:`, `limits:` and `state:`: keys resolved against routes and backends, never
//! echoed; limits in range; a Redis URL never shown.

use super::*;

const BASE: &str = "backends:\n  - name: a\n    url: http://127.0.0.1:1/v1\n    model: m\nroutes:\n  - name: chat\n    utterances: [hi]\n    targets: [a]\n";
const DIGEST: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

fn with(extra: &str) -> String {
    format!("{extra}{BASE}")
}

#[test]
fn keys_limits_and_state_are_read_as_written() {
    let config = valid(&with(&format!(
        "state:\n  redis: redis://:secret@127.0.0.1:6379/0\n  prefix: team1\n  on_error: fail_closed\n\
         auth:\n  required: true\n  keys:\n    - name: k1\n      key_sha256: {DIGEST}\n      routes: [auto, chat]\n      backends: [a]\n      limits: {{rpm: 600, tpm: 200000, usd_per_day: 25, usd_per_month: 400}}\n\
         limits:\n  per_user: {{rpm: 60, usd_per_day: 2}}\n"
    )));
    assert_eq!(config.state.on_error, OnError::FailClosed);
    assert_eq!(config.state.prefix, "team1");
    let key = &config.auth.keys[0];
    assert_eq!(hex::encode(key.digest), DIGEST);
    assert_eq!(
        key.routes,
        Some(RouteAccess {
            auto: true,
            routes: vec![RouteId::at(0)]
        })
    );
    assert_eq!(key.limits.usd_per_month, Some(400.0));
    assert_eq!(config.per_user.rpm, Some(60));
}

#[test]
fn a_key_names_only_what_exists_and_comes_from_one_place() {
    let unknown = issue(&with(&format!(
        "auth:\n  keys:\n    - name: k1\n      key_sha256: {DIGEST}\n      routes: [search]\n"
    )));
    assert_eq!(unknown.path, "auth.keys[0].routes[0]");
    let both = issue(&with(&format!(
        "auth:\n  keys:\n    - name: k1\n      key_sha256: {DIGEST}\n      key_env: SOME_KEY\n"
    )));
    assert!(both.message.contains("exactly one of"), "{}", both.message);
    let unset = issue(&with(
        "auth:\n  keys:\n    - name: k1\n      key_env: SEMROUTE_TEST_KEY_THAT_IS_NEVER_SET\n",
    ));
    assert!(unset.message.contains("is not set"), "{}", unset.message);
    let pasted = issue(&with(
        "auth:\n  keys:\n    - name: k1\n      key_sha256: sk-this-is-a-key-not-a-digest\n",
    ));
    assert!(!pasted.message.contains("sk-this"), "{}", pasted.message);
    let locked_out = issue(&with("auth:\n  required: true\n"));
    assert!(
        locked_out
            .message
            .contains("every request would be refused")
    );
}

#[test]
fn a_backend_limit_is_a_quota_not_a_budget_and_redis_urls_are_not_echoed() {
    let yaml = BASE.replace(
        "    model: m\n",
        "    model: m\n    limits: {rpm: 10, usd_per_day: 3}\n",
    );
    let budget = issue(&yaml);
    assert_eq!(budget.path, "backends[0].limits.usd_per_day");
    let url = issue(&with("state:\n  redis: http://user:hunter2@host/\n"));
    assert!(!url.message.contains("hunter2"), "{}", url.message);
    let tls = issue(&with("state:\n  redis: rediss://:hunter2@host:6380/0\n"));
    assert!(tls.hint.unwrap_or_default().contains("not supported yet"));
    let mode = issue(&with("state:\n  on_error: retry\n"));
    assert_eq!(mode.path, "state.on_error");
}

#[test]
fn fit_writes_the_tenant_sections_back_unchanged() {
    let yaml = with(&format!(
        "state:\n  redis: redis://127.0.0.1:6379/0\n  on_error: fail_closed\n\
         auth:\n  required: true\n  keys:\n    - name: k1\n      key_sha256: {DIGEST}\n      routes: [auto, chat]\n      backends: [a]\n      limits: {{rpm: 600, usd_per_month: 400}}\n      admin: true\n\
         limits:\n  per_user: {{rpm: 60, usd_per_day: 2}}\n"
    ))
    .replace(
        "    model: m\n",
        "    model: m\n    limits: {rpm: 10, tpm: 5000}\n    context_window: 8000\n    max_output_tokens: 512\n",
    );
    let config = valid(&yaml);
    let written = config.to_yaml("").unwrap_or_else(|e| panic!("{e}"));
    let again = valid(&written);
    assert_eq!(again.state, config.state);
    assert_eq!(again.auth, config.auth);
    assert_eq!(again.per_user, config.per_user);
    assert_eq!(again.backends, config.backends);
}
