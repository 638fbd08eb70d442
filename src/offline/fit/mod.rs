//! `semroute fit`: the global and per-route thresholds tuned on labelled prompts, with a
//! cross-validated estimate beside the in-sample one so a fit that only memorises its data
//! shows it. Pure: it works on what the router said about each prompt (`Observation`), so
//! it needs neither the model nor the index, and every threshold is tested without them.
//!
//! How thresholds are chosen: the global one maximises accuracy over every prompt (a
//! prompt labelled `null` is right when nothing is routed); then each route with enough
//! labelled prompts gets its own threshold, maximising accuracy over the prompts it could
//! affect (those where it is a candidate), nearest the global one among equals. Per-route
//! thresholds are kept only when cross-validation says they beat the global one alone.
//! Accuracy is the weighted share of prompts decided right: each counts once, or with
//! `--oos-share` as its group's share of the expected traffic (`offline::weights`).

pub mod conversation;
mod run;

pub use run::{FitRun, FitRunError, FitSettings, Tuning, run};

use crate::config::{RouteId, Threshold};
use crate::offline::weights::{Tally, Weights};
use crate::route::Classification;
use crate::route::decide::{OverrideHit, Policy, RouteScore, decide};

/// Labelled prompts a route needs before it gets a threshold of its own.
pub const MIN_ROUTE_EXAMPLES: usize = 10;
/// Labelled prompts needed to fit anything at all.
pub const MIN_SAMPLES: usize = 20;
/// Cross-validation folds.
pub const FOLDS: usize = 5;
/// A route's own threshold must fix at least this many of its prompts (in prompts of
/// average weight) to replace the global one (a tie is not worth a parameter).
const MIN_GAIN: f64 = 1.0;

/// One labelled prompt, as the router saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The route it should go to; `None`: no route should match.
    pub expected: Option<RouteId>,
    /// The keywords and patterns that matched (thresholds do not apply to them).
    pub overrides: Vec<OverrideHit>,
    /// Semantic scores, best first.
    pub scores: Vec<RouteScore>,
}

impl Observation {
    pub fn new(expected: Option<RouteId>, c: &Classification) -> Observation {
        Observation {
            expected,
            overrides: c.overrides.clone(),
            scores: c
                .candidates
                .iter()
                .map(|cand| RouteScore {
                    route: cand.route,
                    score: cand.score,
                })
                .collect(),
        }
    }
}

/// A global threshold and, per route (indexed by `RouteId`), an optional own one.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub global: f32,
    pub routes: Vec<Option<f32>>,
}

impl Policy for Thresholds {
    fn threshold_for(&self, route: RouteId) -> Threshold {
        Threshold::saturating(self.for_route(route))
    }

    fn global_threshold(&self) -> Threshold {
        Threshold::saturating(self.global)
    }

    /// None: a label says whether a route should claim the prompt, and the default route
    /// is what takes the prompts no route claims (`eval` counts it as no route, too).
    fn default_route(&self) -> Option<RouteId> {
        None
    }
}

impl Thresholds {
    pub fn for_route(&self, route: RouteId) -> f32 {
        self.routes
            .get(route.index())
            .copied()
            .flatten()
            .unwrap_or(self.global)
    }

    /// What the router decides under these thresholds (`None`: no route claims it).
    pub fn decide(&self, o: &Observation) -> Option<RouteId> {
        decide(&o.scores, &o.overrides, self).route
    }

    /// Prompts decided as labelled, by group.
    pub fn correct(&self, observations: &[&Observation]) -> Tally {
        Tally::of(
            observations
                .iter()
                .filter(|o| self.decide(o) == o.expected)
                .map(|o| o.expected.is_some()),
        )
    }

    /// The weight of the prompts decided as labelled.
    fn score(&self, observations: &[&Observation], weights: &Weights) -> f64 {
        weights.total(self.correct(observations))
    }

    /// The weighted share of prompts decided as labelled.
    fn accuracy(&self, observations: &[&Observation], weights: &Weights) -> f64 {
        weights
            .ratio(self.correct(observations), groups(observations))
            .unwrap_or(0.0)
    }
}

/// Why a route kept the threshold it had.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub route: RouteId,
    pub examples: usize,
}

/// The result of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// What to write: per-route thresholds only if they won the cross-validation.
    pub thresholds: Thresholds,
    pub per_route_kept: bool,
    /// The weighting the accuracies below (and the thresholds) were computed with.
    pub weights: Weights,
    /// Accuracy on the data itself: with the global threshold only, and with per-route ones.
    pub in_sample_global: f64,
    pub in_sample_per_route: f64,
    /// Mean held-out accuracy over the folds, the same two ways.
    pub cross_validated_global: f64,
    pub cross_validated_per_route: f64,
    /// Routes with too few labelled prompts for a threshold of their own.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error(
        "{got} labelled prompts are too few to fit thresholds: at least {MIN_SAMPLES} are needed, \
         with some labelled null (prompts no route should take)"
    )]
    TooFewSamples { got: usize },
    #[error(
        "none of the {got} prompts is labelled null: a threshold decides when no route should \
         match, so fit needs examples of such prompts (`\"route\": null`)"
    )]
    NoOutOfScope { got: usize },
    #[error("none of the {got} prompts is labelled with a route")]
    NoInScope { got: usize },
}

/// Whether prompts labelled so (`true`: with a route, `false`: null) are enough to fit
/// thresholds on: checked before any costly work, and again by [`fit`].
pub fn check_labels(in_scope: impl ExactSizeIterator<Item = bool>) -> Result<(), FitError> {
    let got = in_scope.len();
    if got < MIN_SAMPLES {
        return Err(FitError::TooFewSamples { got });
    }
    let labelled = in_scope.filter(|&labelled| labelled).count();
    if labelled == got {
        return Err(FitError::NoOutOfScope { got });
    }
    if labelled == 0 {
        return Err(FitError::NoInScope { got });
    }
    Ok(())
}

/// The prompts counted by group.
fn groups(observations: &[&Observation]) -> Tally {
    Tally::of(observations.iter().map(|o| o.expected.is_some()))
}

/// Fits thresholds on `observations`, weighed by `weights`. `current` are the config's
/// routes with their own thresholds, in route order (kept for routes that cannot be fitted).
pub fn fit(
    observations: &[Observation],
    current: &[(RouteId, Option<f32>)],
    weights: &Weights,
) -> Result<Fit, FitError> {
    check_labels(observations.iter().map(|o| o.expected.is_some()))?;
    let all: Vec<&Observation> = observations.iter().collect();
    let global = fit_global(&all, current, weights);
    let per_route = fit_routes(&all, current, global.clone(), weights);
    let in_sample_global = global.accuracy(&all, weights);
    let in_sample_per_route = per_route.accuracy(&all, weights);
    let (cross_validated_global, cross_validated_per_route) =
        cross_validate(observations, current, weights);
    let per_route_kept = cross_validated_per_route > cross_validated_global;
    let skipped = current
        .iter()
        .map(|&(route, _)| Skipped {
            route,
            examples: observations
                .iter()
                .filter(|o| o.expected == Some(route))
                .count(),
        })
        .filter(|s| s.examples < MIN_ROUTE_EXAMPLES)
        .collect();
    Ok(Fit {
        thresholds: if per_route_kept { per_route } else { global },
        per_route_kept,
        weights: *weights,
        in_sample_global,
        in_sample_per_route,
        cross_validated_global,
        cross_validated_per_route,
        skipped,
    })
}

/// The thresholds as they are, scored on `observations`: what a fit reports when the data
/// cannot move them (no prompt labelled null) but fits something else (conversations).
pub fn keep(observations: &[Observation], current: &[(RouteId, Option<f32>)], global: f32) -> Fit {
    let thresholds = Thresholds {
        global,
        routes: current.iter().map(|&(_, t)| t).collect(),
    };
    let all: Vec<&Observation> = observations.iter().collect();
    let accuracy = thresholds.accuracy(&all, &Weights::UNIFORM);
    Fit {
        weights: Weights::UNIFORM,
        thresholds,
        per_route_kept: false,
        in_sample_global: accuracy,
        in_sample_per_route: accuracy,
        cross_validated_global: accuracy,
        cross_validated_per_route: accuracy,
        skipped: Vec::new(),
    }
}

/// The global threshold with the most (weighted) correct decisions (per-route ones fixed
/// at `current`); among equals, the middle of the best run, so it sits between prompts.
fn fit_global(
    observations: &[&Observation],
    current: &[(RouteId, Option<f32>)],
    weights: &Weights,
) -> Thresholds {
    let mut thresholds = Thresholds {
        global: 0.0,
        routes: current.iter().map(|&(_, t)| t).collect(),
    };
    let mut scores: Vec<f32> = observations
        .iter()
        .flat_map(|o| o.scores.first().map(|s| s.score))
        .collect();
    let candidates = cut_points(&mut scores);
    let mut best: Vec<(f64, f32)> = Vec::new();
    for &t in &candidates {
        thresholds.global = t;
        let correct = thresholds.score(observations, weights);
        match best.first() {
            Some(&(b, _)) if correct < b => {}
            Some(&(b, _)) if correct == b => best.push((correct, t)),
            _ => best = vec![(correct, t)],
        }
    }
    thresholds.global = best.get(best.len() / 2).map_or(0.0, |b| b.1);
    thresholds
}

/// Each route with at least `MIN_ROUTE_EXAMPLES` labelled prompts gets the threshold that
/// decides the most (weighted) prompts where it is a candidate correctly, if that beats
/// `start` by `MIN_GAIN`.
fn fit_routes(
    observations: &[&Observation],
    current: &[(RouteId, Option<f32>)],
    start: Thresholds,
    weights: &Weights,
) -> Thresholds {
    let min_gain = MIN_GAIN * weights.unit();
    let mut thresholds = start;
    for &(route, _) in current {
        let r = route.index();
        let examples = observations
            .iter()
            .filter(|o| o.expected == Some(route))
            .count();
        if examples < MIN_ROUTE_EXAMPLES {
            continue;
        }
        let affected: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.scores.iter().any(|s| s.route == route))
            .copied()
            .collect();
        let mut scores: Vec<f32> = affected
            .iter()
            .flat_map(|o| {
                o.scores
                    .iter()
                    .filter(|s| s.route == route)
                    .map(|s| s.score)
            })
            .collect();
        let original = thresholds.routes[r];
        let start_value = thresholds.for_route(route);
        let baseline = thresholds.score(&affected, weights);
        let mut best = (baseline, 0.0f32, start_value);
        for t in cut_points(&mut scores) {
            thresholds.routes[r] = Some(t);
            let correct = thresholds.score(&affected, weights);
            let distance = (t - start_value).abs();
            let better = correct > best.0 || (correct == best.0 && distance < best.1);
            if better && correct >= baseline + min_gain {
                best = (correct, distance, t);
            }
        }
        // Nothing gained: the route keeps what it had.
        thresholds.routes[r] = if best.0 > baseline {
            Some(best.2)
        } else {
            original
        };
    }
    thresholds
}

/// Thresholds that separate the sorted distinct `scores`: the midpoints between
/// neighbours, plus one below all and one above all.
fn cut_points(scores: &mut Vec<f32>) -> Vec<f32> {
    scores.retain(|s| s.is_finite());
    scores.sort_by(f32::total_cmp);
    scores.dedup();
    let (Some(&first), Some(&last)) = (scores.first(), scores.last()) else {
        return Vec::new();
    };
    let mut cuts = Vec::with_capacity(scores.len() + 1);
    cuts.push(round(first - 1e-3).max(-1.0));
    cuts.extend(scores.windows(2).map(|w| round((w[0] + w[1]) / 2.0)));
    cuts.push(round(last + 1e-3).min(1.0));
    cuts.dedup();
    cuts
}

/// Four decimals: enough to separate scores, short enough to read in the config.
fn round(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// Held-out (weighted) accuracy over `FOLDS` interleaved folds: (global only, with
/// per-route).
fn cross_validate(
    observations: &[Observation],
    current: &[(RouteId, Option<f32>)],
    weights: &Weights,
) -> (f64, f64) {
    let (mut global_correct, mut per_route_correct) = (Tally::default(), Tally::default());
    let mut total = Tally::default();
    for fold in 0..FOLDS {
        let mut held: Vec<&Observation> = Vec::new();
        let mut train: Vec<&Observation> = Vec::new();
        for (i, o) in observations.iter().enumerate() {
            if i % FOLDS == fold {
                held.push(o);
            } else {
                train.push(o);
            }
        }
        if train.is_empty() || held.is_empty() {
            continue;
        }
        let global = fit_global(&train, current, weights);
        let per_route = fit_routes(&train, current, global.clone(), weights);
        global_correct += global.correct(&held);
        per_route_correct += per_route.correct(&held);
        total += groups(&held);
    }
    (
        weights.ratio(global_correct, total).unwrap_or(0.0),
        weights.ratio(per_route_correct, total).unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::decide::OverrideKind;

    /// The config's routes, none with its own threshold, or with `own` ones.
    fn routes(own: &[Option<f32>]) -> Vec<(RouteId, Option<f32>)> {
        own.iter()
            .enumerate()
            .map(|(r, &t)| (RouteId::at(r), t))
            .collect()
    }

    fn obs(expected: Option<usize>, scores: &[(usize, f32)]) -> Observation {
        Observation {
            expected: expected.map(RouteId::at),
            overrides: Vec::new(),
            scores: scores
                .iter()
                .map(|&(r, score)| RouteScore {
                    route: RouteId::at(r),
                    score,
                })
                .collect(),
        }
    }

    /// Route 0's prompts score 0.6-0.8, route 1's 0.3-0.45 (a route with lower similarity);
    /// out-of-scope prompts score 0.2-0.4 and land on either route.
    fn data() -> Vec<Observation> {
        let mut out = Vec::new();
        for i in 0..12 {
            out.push(obs(Some(0), &[(0, 0.6 + 0.2 * i as f32 / 12.0), (1, 0.1)]));
            out.push(obs(Some(1), &[(1, 0.3 + 0.15 * i as f32 / 12.0), (0, 0.1)]));
            out.push(obs(None, &[(0, 0.2 + 0.2 * i as f32 / 12.0), (1, 0.05)]));
            out.push(obs(None, &[(1, 0.2 + 0.09 * i as f32 / 12.0), (0, 0.05)]));
        }
        out
    }

    #[test]
    fn decisions_follow_the_routers_rules() {
        let t = Thresholds {
            global: 0.5,
            routes: vec![None, Some(0.2)],
        };
        // Route 0 is below the global threshold; route 1 clears its own lower one.
        assert_eq!(
            t.decide(&obs(None, &[(0, 0.45), (1, 0.3)])),
            Some(RouteId::at(1))
        );
        assert_eq!(t.decide(&obs(None, &[(0, 0.45), (1, 0.1)])), None);
        let mut forced = obs(None, &[(0, 0.1)]);
        forced.overrides = vec![OverrideHit {
            route: RouteId::at(1),
            kind: OverrideKind::Keyword,
            rule: "refund".into(),
        }];
        assert_eq!(t.decide(&forced), Some(RouteId::at(1)));
    }

    #[test]
    fn the_global_threshold_separates_in_scope_from_out_of_scope() {
        let data = data();
        let all: Vec<&Observation> = data.iter().collect();
        let t = fit_global(&all, &routes(&[None, None]), &Weights::UNIFORM);
        // Everything from 0.29 up is routed; accuracy is as high as one threshold allows.
        let correct = t.correct(&all).total();
        for other in [0.2f32, 0.3, 0.35, 0.4, 0.45, 0.5] {
            let alt = Thresholds {
                global: other,
                routes: vec![None, None],
            };
            assert!(
                alt.correct(&all).total() <= correct,
                "{other} beats {}",
                t.global
            );
        }
    }

    #[test]
    fn per_route_thresholds_fix_what_one_global_threshold_cannot() {
        let data = data();
        let fit = fit(&data, &routes(&[None, None]), &Weights::UNIFORM).unwrap();
        assert_eq!(fit.in_sample_per_route, 1.0, "{fit:?}");
        assert!(fit.in_sample_global < 1.0);
        assert!(fit.per_route_kept);
        assert!(fit.cross_validated_per_route > fit.cross_validated_global);
        let route0 = fit.thresholds.for_route(RouteId::at(0));
        assert!(route0 > 0.4 && route0 <= 0.6, "{route0}");
        let route1 = fit.thresholds.for_route(RouteId::at(1));
        assert!(route1 > 0.29 && route1 <= 0.3, "{route1}");
        assert!(fit.skipped.is_empty());
    }

    #[test]
    fn routes_with_too_few_examples_keep_their_threshold_and_are_reported() {
        let mut data = data();
        data.push(obs(Some(2), &[(2, 0.9)]));
        let fit = fit(&data, &routes(&[None, None, Some(0.7)]), &Weights::UNIFORM).unwrap();
        assert_eq!(
            fit.skipped,
            vec![Skipped {
                route: RouteId::at(2),
                examples: 1
            }]
        );
        assert_eq!(fit.thresholds.routes[2], Some(0.7));
    }

    #[test]
    fn too_little_data_is_refused_with_a_reason() {
        let few: Vec<Observation> = data().into_iter().take(5).collect();
        assert_eq!(
            fit(&few, &routes(&[None, None]), &Weights::UNIFORM),
            Err(FitError::TooFewSamples { got: 5 })
        );
        let in_scope: Vec<Observation> = data()
            .into_iter()
            .filter(|o| o.expected.is_some())
            .collect();
        assert_eq!(
            fit(&in_scope, &routes(&[None, None]), &Weights::UNIFORM),
            Err(FitError::NoOutOfScope { got: 24 })
        );
    }

    /// 40 in-scope prompts scoring 0.300-0.690 on route 0, and 10 out-of-scope ones scoring
    /// 0.205-0.385: they overlap, so the threshold trades one group for the other.
    fn overlapping() -> Vec<Observation> {
        let mut out: Vec<Observation> = (0..40)
            .map(|i| obs(Some(0), &[(0, 0.3 + 0.01 * i as f32)]))
            .collect();
        out.extend((0..10).map(|i| obs(None, &[(0, 0.205 + 0.02 * i as f32)])));
        out
    }

    #[test]
    fn weighting_out_of_scope_prompts_up_raises_the_threshold() {
        use crate::offline::weights::OosShare;
        let data = overlapping();
        let all: Vec<&Observation> = data.iter().collect();
        // 20% of the data is out of scope; weigh it as 50%.
        let share = OosShare::new(0.5).unwrap();
        let weights = Weights::new(groups(&all), Some(share)).unwrap();
        let plain = fit(&data, &routes(&[None]), &Weights::UNIFORM).unwrap();
        let weighted = fit(&data, &routes(&[None]), &weights).unwrap();
        let (low, high) = (plain.thresholds.global, weighted.thresholds.global);
        assert!(high > low, "{low} -> {high}");
        let oos_let_through = |t: &Thresholds| groups(&all).oos - t.correct(&all).oos;
        assert!(oos_let_through(&weighted.thresholds) < oos_let_through(&plain.thresholds));
        // Each fit is the best under its own weighting.
        assert!(
            weighted.thresholds.accuracy(&all, &weights)
                >= plain.thresholds.accuracy(&all, &weights)
        );
        assert!(
            plain.thresholds.accuracy(&all, &Weights::UNIFORM)
                >= weighted.thresholds.accuracy(&all, &Weights::UNIFORM)
        );
        // The reported accuracy is the weighted one: half the weight in each group.
        let right = weighted.thresholds.correct(&all);
        let expected = 0.5 * right.oos as f64 / 10.0 + 0.5 * right.in_scope as f64 / 40.0;
        assert!((weighted.in_sample_global - expected).abs() < 1e-12);
        assert_eq!(weighted.weights.share(), Some(0.5));
    }

    #[test]
    fn cut_points_lie_between_distinct_scores() {
        assert_eq!(
            cut_points(&mut vec![0.5, 0.3, 0.5, f32::NAN]),
            vec![0.299, 0.4, 0.501]
        );
        assert!(cut_points(&mut Vec::new()).is_empty());
    }
}
