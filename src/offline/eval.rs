//! `semroute eval`: routing quality on labelled prompts. A prompt labelled `null` should
//! match no route; the router "matches no route" when its decision is the default route or
//! none (`matched_by` `default`/`none`), since the default route is the fallback for prompts
//! that nothing claims. With `--oos-share`, the rates that mix in-scope and out-of-scope
//! prompts are weighted (`weights`).

use crate::config::Config;
use crate::embed::{EmbedError, Encoder};
use crate::offline::weights::{Tally, Weights};
use crate::route::conversation::Speaker;
use crate::route::decide::MatchedBy;
use crate::route::{Classification, Router};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Most confused pairs listed, and example texts per pair.
const CONFUSIONS_SHOWN: usize = 10;
const EXAMPLES_PER_CONFUSION: usize = 3;

/// One labelled prompt: a text, or a conversation's last user message with the messages
/// before it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    pub text: String,
    /// The route it should go to; `None`: no route should match.
    pub route: Option<String>,
    /// The conversation's messages before `text`, oldest first (empty: a lone prompt).
    pub earlier: Vec<(Speaker, String)>,
    /// Which user turn of its conversation the prompt is (0: the first).
    pub turn: Option<u64>,
    /// Whether the label differs from the previous user turn's.
    pub switch: Option<bool>,
}

/// What the router did with one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub expected: Option<String>,
    /// The decision, with `default`/`none` as `None`.
    pub predicted: Option<String>,
    /// The best-scoring route, ignoring thresholds and overrides.
    pub top1: Option<String>,
}

impl Outcome {
    /// From a classification by the router built from `config`.
    pub fn from_classification(
        expected: Option<String>,
        c: &Classification,
        config: &Config,
    ) -> Outcome {
        let name = |r| config.route(r).name.to_string();
        let predicted = match c.matched_by {
            MatchedBy::Semantic
            | MatchedBy::Keyword
            | MatchedBy::Pattern
            | MatchedBy::Conversation => c.route.map(name),
            MatchedBy::Default | MatchedBy::None => None,
        };
        Outcome {
            expected,
            predicted,
            top1: c.candidates.first().map(|c| name(c.route)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMetrics {
    pub route: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Samples labelled with this route.
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// The label (`null`: no route should match).
    pub expected: Option<String>,
    /// What the router chose (`null`: no route).
    pub predicted: Option<String>,
    pub count: usize,
    pub examples: Vec<String>,
}

/// The report; a rate with nothing to count (no out-of-scope samples, say) is `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub overall_acc: Option<f64>,
    pub in_scope_top1: Option<f64>,
    pub in_scope_acc: Option<f64>,
    pub oos_recall: Option<f64>,
    pub oos_precision: Option<f64>,
    /// The out-of-scope share the mixed rates were weighted as (`None`: unweighted).
    pub oos_share: Option<f64>,
    pub per_route: Vec<RouteMetrics>,
    pub confusions: Vec<Confusion>,
    pub queries_per_s: f64,
    /// Accuracy by kind of turn, when the prompts are turns of conversations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationMetrics>,
}

/// Accuracy on the turns of labelled conversations: all of them, those whose label
/// `switch`es from the previous turn's, follow-ups (`turn` > 0, no switch) and first turns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationMetrics {
    pub all_acc: Option<f64>,
    pub switch_acc: Option<f64>,
    pub follow_up_acc: Option<f64>,
    pub first_turn_acc: Option<f64>,
    /// Prompts that are turns of conversations (they have earlier messages, a `turn` or a
    /// `switch`).
    pub items: usize,
}

impl ConversationMetrics {
    /// `None` when no sample is a conversation's turn.
    pub fn new(samples: &[Sample], outcomes: &[Outcome]) -> Option<ConversationMetrics> {
        let turns: Vec<(&Sample, bool)> = samples
            .iter()
            .zip(outcomes)
            .filter(|(s, _)| !s.earlier.is_empty() || s.turn.is_some() || s.switch.is_some())
            .map(|(s, o)| (s, o.expected == o.predicted))
            .collect();
        if turns.is_empty() {
            return None;
        }
        let rate = |keep: &dyn Fn(&Sample) -> bool| {
            let kept: Vec<bool> = turns.iter().filter(|(s, _)| keep(s)).map(|t| t.1).collect();
            ratio(kept.iter().filter(|&&ok| ok).count(), kept.len())
        };
        let switch = |s: &Sample| s.switch == Some(true);
        Some(ConversationMetrics {
            all_acc: rate(&|_| true),
            switch_acc: rate(&switch),
            follow_up_acc: rate(&|s| s.turn.is_some_and(|t| t > 0) && !switch(s)),
            first_turn_acc: rate(&|s| s.turn == Some(0)),
            items: turns.len(),
        })
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Computes every metric from outcomes (in the same order as `texts`); rates that mix
/// in-scope and out-of-scope prompts weigh them by `weights`.
pub fn metrics(
    outcomes: &[Outcome],
    texts: &[&str],
    queries_per_s: f64,
    weights: &Weights,
) -> EvalReport {
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let tally = |f: &dyn Fn(&Outcome) -> bool| {
        Tally::of(
            outcomes
                .iter()
                .filter(|o| f(o))
                .map(|o| o.expected.is_some()),
        )
    };
    let in_scope = count(&|o| o.expected.is_some());
    let oos = outcomes.len() - in_scope;
    let oos_hit = count(&|o| o.expected.is_none() && o.predicted.is_none());

    let routes: BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|o| [o.expected.as_deref(), o.predicted.as_deref()])
        .flatten()
        .collect();
    let per_route = routes
        .into_iter()
        .map(|route| {
            let tp = tally(&|o| {
                o.expected.as_deref() == Some(route) && o.predicted.as_deref() == Some(route)
            });
            let labelled = count(&|o| o.expected.as_deref() == Some(route));
            let chosen = tally(&|o| o.predicted.as_deref() == Some(route));
            let precision = weights.ratio(tp, chosen);
            let recall = ratio(tp.in_scope, labelled);
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            RouteMetrics {
                route: route.to_string(),
                precision,
                recall,
                f1,
                support: labelled,
            }
        })
        .collect();

    let confusions = confusions(outcomes, texts);
    EvalReport {
        overall_acc: weights.ratio(tally(&|o| o.expected == o.predicted), tally(&|_| true)),
        in_scope_top1: ratio(
            count(&|o| o.expected.is_some() && o.top1 == o.expected),
            in_scope,
        ),
        in_scope_acc: ratio(
            count(&|o| o.expected.is_some() && o.predicted == o.expected),
            in_scope,
        ),
        oos_recall: ratio(oos_hit, oos),
        oos_precision: weights.ratio(
            tally(&|o| o.expected.is_none() && o.predicted.is_none()),
            tally(&|o| o.predicted.is_none()),
        ),
        oos_share: weights.share(),
        per_route,
        confusions,
        queries_per_s,
        conversation: None,
    }
}

/// The most frequent (label, decision) mismatches with example texts, most frequent first.
fn confusions(outcomes: &[Outcome], texts: &[&str]) -> Vec<Confusion> {
    // (expected, chosen) -> (count, example texts)
    type Pair<'a> = (Option<&'a str>, Option<&'a str>);
    let mut pairs: BTreeMap<Pair, (usize, Vec<String>)> = BTreeMap::new();
    for (o, text) in outcomes.iter().zip(texts) {
        if o.expected != o.predicted {
            let entry = pairs
                .entry((o.expected.as_deref(), o.predicted.as_deref()))
                .or_default();
            entry.0 += 1;
            if entry.1.len() < EXAMPLES_PER_CONFUSION {
                entry.1.push(text.to_string());
            }
        }
    }
    let mut confusions: Vec<Confusion> = pairs
        .into_iter()
        .map(|((expected, predicted), (count, examples))| Confusion {
            expected: expected.map(str::to_string),
            predicted: predicted.map(str::to_string),
            count,
            examples,
        })
        .collect();
    // Most frequent first; the map's order breaks ties, so the list is deterministic.
    confusions.sort_by_key(|c| std::cmp::Reverse(c.count));
    confusions.truncate(CONFUSIONS_SHOWN);
    confusions
}

/// Classifies every sample (embedding in batches) and reports the metrics.
pub fn run(
    router: &Router,
    encoder: &Encoder,
    samples: &[Sample],
    weights: &Weights,
) -> Result<EvalReport, EmbedError> {
    let (classifications, queries_per_s) = classify_all(router, encoder, samples)?;
    let outcomes: Vec<Outcome> = samples
        .iter()
        .zip(&classifications)
        .map(|(sample, c)| Outcome::from_classification(sample.route.clone(), c, router.config()))
        .collect();
    let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    let mut report = metrics(&outcomes, &texts, queries_per_s, weights);
    report.conversation = ConversationMetrics::new(samples, &outcomes);
    Ok(report)
}

/// Every sample's classification, in order, and how many were classified per second
/// (embedding included).
pub fn classify_all(
    router: &Router,
    encoder: &Encoder,
    samples: &[Sample],
) -> Result<(Vec<Classification>, f64), EmbedError> {
    let started = Instant::now();
    if samples.iter().any(|s| !s.earlier.is_empty()) {
        let params = router.config().conversation;
        let scored = super::conversations::Scored::new(router, encoder, samples, &params)?;
        let out = scored.classify(router, samples, &params);
        let queries_per_s = samples.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        return Ok((out, queries_per_s));
    }
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(|s| s.text.as_str()).collect();
        let embeddings = encoder.embed(&texts)?;
        for (text, embedding) in texts.iter().zip(&embeddings) {
            out.push(router.classify(text, embedding, None));
        }
    }
    let queries_per_s = samples.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((out, queries_per_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(expected: Option<&str>, predicted: Option<&str>, top1: Option<&str>) -> Outcome {
        Outcome {
            expected: expected.map(str::to_string),
            predicted: predicted.map(str::to_string),
            top1: top1.map(str::to_string),
        }
    }

    /// Six prompts: 4 in scope (a, a, b, b), 2 out of scope.
    fn report() -> EvalReport {
        let outcomes = [
            o(Some("a"), Some("a"), Some("a")), // right
            o(Some("a"), None, Some("a")),      // right top-1, under the threshold
            o(Some("b"), Some("a"), Some("a")), // confused b -> a
            o(Some("b"), Some("b"), Some("b")), // right
            o(None, None, Some("b")),           // correctly unrouted
            o(None, Some("a"), Some("a")),      // out of scope, routed to a
        ];
        let texts = ["a1", "a2", "b1", "b2", "x1", "x2"];
        metrics(&outcomes, &texts, 123.0, &Weights::UNIFORM)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn headline_rates_are_exact() {
        let r = report();
        assert!(close(r.overall_acc, 3.0 / 6.0), "{:?}", r.overall_acc);
        assert!(close(r.in_scope_top1, 3.0 / 4.0));
        assert!(close(r.in_scope_acc, 2.0 / 4.0));
        assert!(close(r.oos_recall, 1.0 / 2.0));
        // Unrouted: a2 (wrongly) and x1 (rightly).
        assert!(close(r.oos_precision, 1.0 / 2.0));
        assert_eq!(r.queries_per_s, 123.0);
    }

    #[test]
    fn per_route_precision_recall_f1_are_exact() {
        let r = report();
        let a = &r.per_route[0];
        assert_eq!((a.route.as_str(), a.support), ("a", 2));
        // a was chosen 3 times (a1, b1, x2), right once; 2 labelled, 1 found.
        assert!(close(a.precision, 1.0 / 3.0));
        assert!(close(a.recall, 1.0 / 2.0));
        assert!(close(a.f1, 2.0 * (1.0 / 3.0) * 0.5 / (1.0 / 3.0 + 0.5)));
        let b = &r.per_route[1];
        assert!(close(b.precision, 1.0) && close(b.recall, 0.5));
        assert_eq!(r.per_route.len(), 2);
    }

    #[test]
    fn confusions_are_counted_with_examples() {
        let r = report();
        assert_eq!(r.confusions.len(), 3);
        assert!(r.confusions.iter().all(|c| c.count == 1));
        let b_to_a = r
            .confusions
            .iter()
            .find(|c| c.expected.as_deref() == Some("b"))
            .unwrap_or_else(|| panic!("b -> a is listed"));
        assert_eq!(b_to_a.predicted.as_deref(), Some("a"));
        assert_eq!(b_to_a.examples, ["b1"]);
    }

    #[test]
    fn weighted_rates_mix_the_groups_as_the_share_says() {
        use crate::offline::weights::OosShare;
        let outcomes = [
            o(Some("a"), Some("a"), Some("a")),
            o(Some("a"), Some("a"), Some("a")),
            o(Some("b"), Some("b"), Some("b")),
            o(Some("b"), None, Some("b")), // in scope, unrouted
            o(None, None, Some("a")),      // correctly unrouted
            o(None, Some("a"), Some("a")), // out of scope, routed to a
        ];
        let texts = ["a1", "a2", "b1", "b2", "x1", "x2"];
        let share = OosShare::new(0.2).unwrap();
        // 2 out-of-scope prompts weigh 0.1 each, 4 in-scope ones 0.2 each.
        let weights = Weights::new(
            Tally {
                oos: 2,
                in_scope: 4,
            },
            Some(share),
        )
        .unwrap();
        let r = metrics(&outcomes, &texts, 1.0, &weights);
        let plain = metrics(&outcomes, &texts, 1.0, &Weights::UNIFORM);
        assert!(close(plain.overall_acc, 4.0 / 6.0));
        // 0.8 * 3/4 in scope + 0.2 * 1/2 out of scope.
        assert!(close(r.overall_acc, 0.7), "{:?}", r.overall_acc);
        // Unrouted: b2 (0.2, wrongly) and x1 (0.1, rightly).
        assert!(close(r.oos_precision, 0.1 / 0.3));
        // a was chosen for a1, a2 (0.2 each, right) and x2 (0.1).
        let a = &r.per_route[0];
        assert!(close(a.precision, 0.4 / 0.5) && close(a.recall, 1.0));
        assert!(close(a.f1, 2.0 * 0.8 / 1.8));
        assert_eq!(a.support, 2);
        // Rates within one group do not move.
        assert_eq!(r.in_scope_acc, plain.in_scope_acc);
        assert_eq!(r.in_scope_top1, plain.in_scope_top1);
        assert_eq!(r.oos_recall, plain.oos_recall);
        assert_eq!((r.oos_share, plain.oos_share), (Some(0.2), None));
    }

    #[test]
    fn undefined_rates_are_null_not_nan() {
        let r = metrics(
            &[o(Some("a"), Some("a"), Some("a"))],
            &["t"],
            1.0,
            &Weights::UNIFORM,
        );
        assert_eq!(r.oos_recall, None);
        assert_eq!(r.oos_precision, None);
        assert!(close(r.overall_acc, 1.0));
        let json = serde_json::to_value(&r).unwrap_or_default();
        let keys: Vec<&str> = json
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 9, "{keys:?}");
        assert_eq!(r.oos_share, None);
    }
}
