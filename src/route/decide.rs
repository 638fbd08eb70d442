//! The routing decision: a pure function of the routes' semantic scores, the keyword and
//! pattern hits, and the policy (the config's thresholds and default route). No model, no
//! index: everything here is unit-tested alone. The service and `fit` both decide here.
//!
//! Precedence, first rule that applies wins:
//! 1. a `patterns` hit: the first route in file order whose pattern matches;
//! 2. a `keywords` hit: the first route in file order whose keyword matches;
//! 3. semantic: the highest-scoring route whose score clears its own threshold
//!    (the route's `threshold`, else the global one); ties go to the earlier route;
//! 4. the `default_route`, when the config names one;
//! 5. no route.

use crate::config::{Config, RouteId, Threshold};
use serde::Serialize;

/// A route's semantic score for one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteScore {
    pub route: RouteId,
    pub score: f32,
}

/// Which kind of override matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverrideKind {
    Pattern,
    Keyword,
}

/// A keyword or pattern of `route` that matched the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideHit {
    pub route: RouteId,
    pub kind: OverrideKind,
    /// The keyword or the pattern's source (never the matched text, which may be sensitive).
    pub rule: String,
}

/// How the decision was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    Semantic,
    Keyword,
    Pattern,
    /// The conversation's earlier turns decided (a chat's follow-up).
    Conversation,
    Default,
    None,
}

impl MatchedBy {
    /// The name `/classify` and the logs give it.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::Semantic => "semantic",
            MatchedBy::Keyword => "keyword",
            MatchedBy::Pattern => "pattern",
            MatchedBy::Conversation => "conversation",
            MatchedBy::Default => "default",
            MatchedBy::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub route: Option<RouteId>,
    pub matched_by: MatchedBy,
    /// The chosen route's semantic score; for `default`/`none`, the best score seen.
    pub score: Option<f32>,
    /// The threshold that applied to the chosen (or, failing that, best) route.
    pub threshold: Threshold,
}

/// What the decision needs beyond the scores and hits: the threshold each route must clear
/// and the route that takes what none clears. The config is the policy the service runs;
/// `fit` tries others through the same function.
pub trait Policy {
    /// The threshold a route's score must clear.
    fn threshold_for(&self, route: RouteId) -> Threshold;
    /// The threshold reported when there is no score at all.
    fn global_threshold(&self) -> Threshold;
    fn default_route(&self) -> Option<RouteId>;
}

impl Policy for Config {
    fn threshold_for(&self, route: RouteId) -> Threshold {
        Config::threshold_for(self, route)
    }

    fn global_threshold(&self) -> Threshold {
        self.threshold
    }

    fn default_route(&self) -> Option<RouteId> {
        self.default_route
    }
}

/// Decides the route. `scores` may be in any order and need not cover every route.
pub fn decide(scores: &[RouteScore], hits: &[OverrideHit], policy: &impl Policy) -> Decision {
    let score_of = |route: RouteId| scores.iter().find(|s| s.route == route).map(|s| s.score);
    // Rules 1 and 2: the hit with the strongest kind, then the earliest route.
    if let Some(hit) = hits.iter().min_by_key(|hit| (hit.kind, hit.route)) {
        return Decision {
            route: Some(hit.route),
            matched_by: match hit.kind {
                OverrideKind::Pattern => MatchedBy::Pattern,
                OverrideKind::Keyword => MatchedBy::Keyword,
            },
            score: score_of(hit.route),
            threshold: policy.threshold_for(hit.route),
        };
    }
    // Rule 3: best score among routes that clear their own thresholds.
    let cleared = scores
        .iter()
        .filter(|s| s.score >= policy.threshold_for(s.route).get())
        .min_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
    if let Some(best) = cleared {
        return Decision {
            route: Some(best.route),
            matched_by: MatchedBy::Semantic,
            score: Some(best.score),
            threshold: policy.threshold_for(best.route),
        };
    }
    let best = scores
        .iter()
        .min_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
    let threshold = best.map_or(policy.global_threshold(), |b| policy.threshold_for(b.route));
    let score = best.map(|b| b.score);
    match policy.default_route() {
        Some(route) => Decision {
            route: Some(route),
            matched_by: MatchedBy::Default,
            score,
            threshold,
        },
        None => Decision {
            route: None,
            matched_by: MatchedBy::None,
            score,
            threshold,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        match Config::parse(yaml, "test.yaml", Path::new(".")) {
            Ok(config) => config,
            Err(err) => panic!("test config is invalid: {err}"),
        }
    }

    const ROUTES: &str = "
threshold: 0.5
routes:
  - name: code
    utterances: [write a function]
    keywords: [python]
  - name: billing
    utterances: [refund my invoice]
    keywords: [invoice]
    threshold: 0.7
  - name: secrets
    patterns: ['\\d{16}']
  - name: chat
    utterances: [hello there]
";

    fn score(route: usize, score: f32) -> RouteScore {
        RouteScore {
            route: RouteId::at(route),
            score,
        }
    }

    fn hit(route: usize, kind: OverrideKind) -> OverrideHit {
        OverrideHit {
            route: RouteId::at(route),
            kind,
            rule: "rule".into(),
        }
    }

    #[test]
    fn best_score_above_its_threshold_wins() {
        let config = config(ROUTES);
        let d = decide(&[score(0, 0.6), score(3, 0.9)], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(3)));
        assert_eq!(d.matched_by, MatchedBy::Semantic);
        assert_eq!(d.score, Some(0.9));
        assert_eq!(d.threshold.get(), 0.5);
    }

    #[test]
    fn a_route_is_chosen_only_if_it_clears_its_own_threshold() {
        let config = config(ROUTES);
        // billing (0.65) beats code (0.55) on score but misses its own 0.7 threshold.
        let d = decide(&[score(1, 0.65), score(0, 0.55)], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(0)));
        assert_eq!(d.threshold.get(), 0.5);
        let d = decide(&[score(1, 0.7)], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(1)));
        assert_eq!(d.threshold.get(), 0.7);
    }

    #[test]
    fn nothing_confident_and_no_default_gives_no_route() {
        let config = config(ROUTES);
        let d = decide(&[score(0, 0.3), score(1, 0.45)], &[], &config);
        assert_eq!(d.route, None);
        assert_eq!(d.matched_by, MatchedBy::None);
        assert_eq!(d.score, Some(0.45));
        assert_eq!(d.threshold.get(), 0.7);
    }

    #[test]
    fn nothing_confident_falls_back_to_the_default_route() {
        let config = config(&format!("{ROUTES}default_route: chat\n"));
        let d = decide(&[score(0, 0.3)], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(3)));
        assert_eq!(d.matched_by, MatchedBy::Default);
        assert_eq!(d.score, Some(0.3));
    }

    #[test]
    fn no_scores_at_all_falls_back_too() {
        let config = config(&format!("{ROUTES}default_route: chat\n"));
        let d = decide(&[], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(3)));
        assert_eq!(d.score, None);
        assert_eq!(d.threshold.get(), 0.5);
    }

    #[test]
    fn a_keyword_beats_a_higher_semantic_score() {
        let config = config(ROUTES);
        let d = decide(
            &[score(0, 0.95), score(1, 0.2)],
            &[hit(1, OverrideKind::Keyword)],
            &config,
        );
        assert_eq!(d.route, Some(RouteId::at(1)));
        assert_eq!(d.matched_by, MatchedBy::Keyword);
        assert_eq!(d.score, Some(0.2));
    }

    #[test]
    fn a_pattern_beats_a_keyword_of_an_earlier_route() {
        let config = config(ROUTES);
        let hits = [hit(0, OverrideKind::Keyword), hit(2, OverrideKind::Pattern)];
        let d = decide(&[score(0, 0.9)], &hits, &config);
        assert_eq!(d.route, Some(RouteId::at(2)));
        assert_eq!(d.matched_by, MatchedBy::Pattern);
        assert_eq!(d.score, None);
    }

    #[test]
    fn among_keyword_hits_the_earlier_route_wins_whatever_the_order_given() {
        let config = config(ROUTES);
        let hits = [hit(1, OverrideKind::Keyword), hit(0, OverrideKind::Keyword)];
        let d = decide(&[score(1, 0.9)], &hits, &config);
        assert_eq!(d.route, Some(RouteId::at(0)));
    }

    #[test]
    fn equal_scores_go_to_the_earlier_route() {
        let config = config(ROUTES);
        let d = decide(&[score(3, 0.8), score(0, 0.8)], &[], &config);
        assert_eq!(d.route, Some(RouteId::at(0)));
    }

    #[test]
    fn a_keyword_wins_even_below_the_threshold() {
        let config = config(ROUTES);
        let d = decide(&[score(1, 0.1)], &[hit(1, OverrideKind::Keyword)], &config);
        assert_eq!(d.route, Some(RouteId::at(1)));
    }
}
