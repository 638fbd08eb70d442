//! Config validation: every error names the file, the YAML path and the line, and says
//! what to write instead.

mod backends;
mod classes;
mod experiments;
mod files;
mod routes;
mod settings;
mod tenants;

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

/// Two backends with every kind of setting, for the routes of a test to target.
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
