//! Every route's keywords and patterns compiled as `serve` runs them: all of them together
//! (`Config::overrides`) and the patterns of classed routes together
//! (`Config::class_patterns`), each rule with the route it came from. A set that cannot
//! be compiled is refused here, at the line of the rule where it stops compiling.

use super::{Checker, Route, RouteId, RuleSet};
use serde_saphyr::Location;

/// Route rules (keywords, patterns) compiled together, with where each came from.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub set: RuleSet,
    pub sources: Vec<RuleSource>,
}

/// One keyword or pattern of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSource {
    pub route: RouteId,
    /// A pattern (a regex as written), else a keyword.
    pub pattern: bool,
    /// The keyword or the pattern's source.
    pub text: String,
}

impl Rules {
    /// The sources of the rules that match `text`, in order.
    pub fn hits<'a>(&'a self, text: &str) -> impl Iterator<Item = &'a RuleSource> + 'a {
        self.set
            .matches(text)
            .into_iter()
            .filter_map(|i| self.sources.get(i))
    }
}

impl Checker<'_> {
    /// Compiles the routes' keywords and patterns as `serve` runs them: all of them
    /// together, and the patterns of classed routes together.
    pub(super) fn rules(&mut self, routes: &[Route]) -> Option<(Rules, Rules)> {
        let mut all = Rules::default();
        let mut regexes = Vec::new();
        let mut classed = Vec::new();
        for (r, route) in routes.iter().enumerate() {
            for keyword in &route.keywords {
                regexes.push(keyword.regex_source().to_string());
                all.sources.push(RuleSource {
                    route: RouteId::new(r),
                    pattern: false,
                    text: keyword.as_str().to_string(),
                });
            }
            for pattern in &route.patterns {
                if route.dispatch.data_class.is_some() {
                    classed.push(all.sources.len());
                }
                regexes.push(pattern.as_str().to_string());
                all.sources.push(RuleSource {
                    route: RouteId::new(r),
                    pattern: true,
                    text: pattern.as_str().to_string(),
                });
            }
        }
        all.set = match RuleSet::new(&regexes) {
            Ok(set) => set,
            Err(err) => {
                self.rule_failed(err.index, &err.reason);
                return None;
            }
        };
        let class_regexes: Vec<String> = classed.iter().map(|&i| regexes[i].clone()).collect();
        let class_patterns = match RuleSet::new(&class_regexes) {
            Ok(set) => Rules {
                set,
                sources: classed.iter().map(|&i| all.sources[i].clone()).collect(),
            },
            Err(err) => {
                self.rule_failed(classed.get(err.index).copied().unwrap_or(0), &err.reason);
                return None;
            }
        };
        Some((all, class_patterns))
    }

    fn rule_failed(&mut self, site: usize, reason: &str) {
        let (path, at) = self
            .rule_sites
            .get(site)
            .cloned()
            .unwrap_or_else(|| ("routes".to_string(), Location::UNKNOWN));
        self.issue(
            path,
            at,
            format!("the routes' keywords and patterns cannot be compiled together from this one on: {reason}"),
            "simplify this pattern (bounded repetitions such as {1000} and large Unicode classes such as \\w make it big), or split the routes",
        );
    }
}
