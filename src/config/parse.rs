//! From `routes.yaml`'s text to its raw shape (`raw.rs`): a YAML syntax or shape error
//! becomes one issue with its YAML path, its line and, where one helps, a hint.

use super::raw::RawConfig;
use super::{ConfigError, ConfigIssue};

pub(super) fn parse_raw(text: &str, source: &str) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Invalid {
            file: source.to_string(),
            issues: vec![ConfigIssue {
                path: String::new(),
                line: None,
                message: "the file is empty".into(),
                hint: Some(
                    "write at least `routes:` with one route that has a `name` and `utterances`"
                        .into(),
                ),
            }],
        });
    }
    let mut yaml_path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        let result = serde_path_to_error::deserialize::<_, RawConfig>(de);
        result.map_err(|err| {
            // `Spanned` wraps values in a `value` field that the user never wrote.
            yaml_path = err.path().to_string().replace(".value", "");
            err.into_inner()
        })
    });
    parsed.map_err(|err| {
        let plain = err.without_snippet();
        let line = plain.location().map(|loc| loc.line()).filter(|&l| l > 0);
        let message = strip_location_suffix(&plain.to_string());
        ConfigError::Invalid {
            file: source.to_string(),
            issues: vec![ConfigIssue {
                path: if yaml_path == "." {
                    String::new()
                } else {
                    yaml_path
                },
                line,
                hint: hint_for_parse_error(&message),
                message,
            }],
        }
    })
}

/// serde-saphyr appends " at line N column M"; the issue carries the line separately.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

fn hint_for_parse_error(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some(
            "remove the key or fix its spelling; the accepted keys are listed in the message"
                .into(),
        )
    } else if message.contains("missing field `routes`") {
        Some("add `routes:` with at least one route (`name` and `utterances`)".into())
    } else if message.contains("missing field `name`") {
        Some("give every route a `name:`".into())
    } else if message.contains("unknown variant") {
        Some("use one of the values listed in the message".into())
    } else {
        None
    }
}
