//! Keyword and pattern overrides: one pass over the prompt finds every route whose keywords
//! or patterns match (all of them, so `/classify` can explain; `decide` picks the winner).

use crate::config::{Config, Rules};
use crate::route::decide::{OverrideHit, OverrideKind};

/// The config's compiled keywords and patterns (compiled once, by validation).
pub struct OverrideMatcher {
    rules: Rules,
}

impl OverrideMatcher {
    pub fn new(config: &Config) -> OverrideMatcher {
        OverrideMatcher {
            rules: config.overrides.clone(),
        }
    }

    /// Every keyword and pattern that matches `text`, in file order.
    pub fn hits(&self, text: &str) -> Vec<OverrideHit> {
        self.rules
            .hits(text)
            .map(|source| OverrideHit {
                route: source.route,
                kind: if source.pattern {
                    OverrideKind::Pattern
                } else {
                    OverrideKind::Keyword
                },
                rule: source.text.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteId;
    use std::path::Path;

    fn matcher(yaml: &str) -> OverrideMatcher {
        let config = Config::parse(yaml, "t.yaml", Path::new("."))
            .unwrap_or_else(|err| panic!("invalid test config: {err}"));
        OverrideMatcher::new(&config)
    }

    const YAML: &str = r#"
routes:
  - name: billing
    keywords: [invoice, "credit note", refund]
  - name: code
    keywords: ["c++", python]
  - name: secrets
    patterns: ['\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b', '(?i)api[_-]?key']
"#;

    fn rules(m: &OverrideMatcher, text: &str) -> Vec<String> {
        m.hits(text).into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        let m = matcher(YAML);
        assert_eq!(rules(&m, "Where is my INVOICE?"), ["invoice"]);
        assert!(rules(&m, "invoices are late").is_empty());
        assert!(rules(&m, "the reinvoice tool").is_empty());
    }

    #[test]
    fn phrases_match_across_any_whitespace() {
        let m = matcher(YAML);
        assert_eq!(rules(&m, "send a credit\n  note please"), ["credit note"]);
        assert!(rules(&m, "credit notes").is_empty());
    }

    #[test]
    fn symbol_keywords_match_without_a_boundary_on_the_symbol_side() {
        let m = matcher(YAML);
        assert_eq!(rules(&m, "write C++ code"), ["c++"]);
        assert_eq!(rules(&m, "c++, please"), ["c++"]);
        assert!(rules(&m, "abc++").is_empty());
    }

    #[test]
    fn patterns_match_and_report_their_source_not_the_text() {
        let m = matcher(YAML);
        let hits = m.hits("my card is 4111 1111 1111 1111");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].kind, OverrideKind::Pattern);
        assert_eq!(hits[0].route, RouteId::at(2));
        assert!(!hits[0].rule.contains("4111"));
    }

    #[test]
    fn every_hit_is_reported_in_file_order() {
        let m = matcher(YAML);
        let hits = m.hits("refund my python API_KEY");
        let routes: Vec<usize> = hits.iter().map(|h| h.route.index()).collect();
        assert_eq!(routes, [0, 1, 2]);
    }

    #[test]
    fn no_rules_no_hits() {
        let m = matcher("routes:\n  - name: a\n    utterances: [x]\n");
        assert!(m.hits("anything").is_empty());
    }
}
