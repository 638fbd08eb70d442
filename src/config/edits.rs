//! Edits to a validated config that are tried, not saved: a route's utterances or
//! threshold changed (the debugging page's what-if panel). Checked as the file's values
//! are; everything else (keywords, patterns, backends, keys) stays as it is.

use super::{Config, Threshold};
use serde::Deserialize;

/// Most utterances one set of edits may give, all routes together (each is embedded).
pub const MAX_EDITED_UTTERANCES: usize = 2_000;
/// Longest utterance accepted in an edit, in bytes.
pub const MAX_UTTERANCE_BYTES: usize = 4_096;

/// One route's new utterances and/or threshold.
#[derive(Debug, Clone, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteEdit {
    /// The route's name, as in the file.
    pub route: String,
    /// Replaces the route's utterances.
    #[serde(default)]
    pub utterances: Option<Vec<String>>,
    /// Replaces the route's threshold.
    #[serde(default)]
    pub threshold: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EditError {
    #[error("there is no route `{0}`")]
    NoSuchRoute(String),
    #[error("route `{route}`: threshold {value} is outside [-1, 1]")]
    Threshold { route: String, value: f32 },
    #[error("route `{route}`: utterance {index} is empty")]
    EmptyUtterance { route: String, index: usize },
    #[error("route `{route}`: utterance {index} is longer than {MAX_UTTERANCE_BYTES} bytes")]
    LongUtterance { route: String, index: usize },
    #[error("the edits give {0} utterances; at most {MAX_EDITED_UTTERANCES} are tried at once")]
    TooMany(usize),
    #[error("route `{0}` is edited twice")]
    Twice(String),
}

impl Config {
    /// This config with `edits` applied, or the first problem with them.
    pub fn with_edits(&self, edits: &[RouteEdit]) -> Result<Config, EditError> {
        let given: usize = edits
            .iter()
            .filter_map(|e| e.utterances.as_ref().map(Vec::len))
            .sum();
        if given > MAX_EDITED_UTTERANCES {
            return Err(EditError::TooMany(given));
        }
        let mut edited = self.clone();
        let mut seen = std::collections::HashSet::new();
        for edit in edits {
            let id = self
                .route_id(&edit.route)
                .ok_or_else(|| EditError::NoSuchRoute(edit.route.clone()))?;
            if !seen.insert(id) {
                return Err(EditError::Twice(edit.route.clone()));
            }
            let route = &mut edited.routes[id.index()];
            if let Some(value) = edit.threshold {
                route.threshold = Some(Threshold::new(value).ok_or(EditError::Threshold {
                    route: edit.route.clone(),
                    value,
                })?);
            }
            if let Some(utterances) = &edit.utterances {
                for (index, text) in utterances.iter().enumerate() {
                    let route = edit.route.clone();
                    if text.trim().is_empty() {
                        return Err(EditError::EmptyUtterance { route, index });
                    }
                    if text.len() > MAX_UTTERANCE_BYTES {
                        return Err(EditError::LongUtterance { route, index });
                    }
                }
                route.utterances = utterances.clone();
            }
        }
        Ok(edited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "routes:\n  - name: a\n    utterances: [hello]\n  - name: b\n    utterances: [bye]\n    keywords: [ciao]\n",
            "test.yaml",
            std::path::Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn edit(route: &str, utterances: Option<&[&str]>, threshold: Option<f32>) -> RouteEdit {
        RouteEdit {
            route: route.into(),
            utterances: utterances.map(|u| u.iter().map(|s| s.to_string()).collect()),
            threshold,
        }
    }

    #[test]
    fn an_edit_replaces_utterances_and_threshold_and_keeps_the_rest() {
        let base = config();
        let edited = base
            .with_edits(&[edit("b", Some(&["see you", "later"]), Some(0.6))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(edited.routes[1].utterances, ["see you", "later"]);
        assert_eq!(edited.routes[1].threshold.map(Threshold::get), Some(0.6));
        assert_eq!(edited.routes[0].utterances, base.routes[0].utterances);
        assert_eq!(
            edited.routes[1].keywords.len(),
            base.routes[1].keywords.len()
        );
    }

    #[test]
    fn bad_edits_are_refused_with_what_is_wrong() {
        let base = config();
        let cases = [
            (edit("c", None, None), "no route `c`"),
            (edit("a", None, Some(1.5)), "outside [-1, 1]"),
            (edit("a", None, Some(f32::NAN)), "outside"),
            (
                edit("a", Some(&["ok", " \t"]), None),
                "utterance 1 is empty",
            ),
        ];
        for (e, expected) in cases {
            let err = base.with_edits(&[e]).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|m| m.contains(expected)),
                "{expected}: {err:?}"
            );
        }
        let long = "x".repeat(MAX_UTTERANCE_BYTES + 1);
        assert!(matches!(
            base.with_edits(&[edit("a", Some(&[long.as_str()]), None)]),
            Err(EditError::LongUtterance { .. })
        ));
        let many: Vec<&str> = vec!["x"; MAX_EDITED_UTTERANCES + 1];
        assert!(matches!(
            base.with_edits(&[edit("a", Some(&many), None)]),
            Err(EditError::TooMany(_))
        ));
        assert!(matches!(
            base.with_edits(&[edit("a", None, Some(0.1)), edit("a", None, Some(0.2))]),
            Err(EditError::Twice(_))
        ));
    }
}
