//! Route scores from retrieved neighbours: each route's score is an aggregate of the cosine
//! similarities of its utterances among the prompt's nearest neighbours.

use crate::config::{Aggregation, RouteId};
use crate::route::decide::RouteScore;

/// One retrieved utterance: which route owns it and how similar it is to the prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub route: RouteId,
    pub similarity: f32,
}

/// Scores every route that has at least one retrieved neighbour, best first (ties: earlier
/// route first). `hits` must be sorted by similarity, best first, as a search returns them.
pub fn route_scores(hits: &[Hit], aggregation: Aggregation) -> Vec<RouteScore> {
    // The weakest similarity retrieved bounds every utterance that was not retrieved.
    let floor = hits.last().map_or(0.0, |h| h.similarity);
    let mut routes: Vec<RouteId> = hits.iter().map(|h| h.route).collect();
    routes.sort_unstable();
    routes.dedup();
    let mut scores: Vec<RouteScore> = routes
        .into_iter()
        .map(|route| {
            let sims = hits
                .iter()
                .filter(|h| h.route == route)
                .map(|h| h.similarity);
            RouteScore {
                route,
                score: aggregate(sims, aggregation, floor),
            }
        })
        .collect();
    scores.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
    scores
}

/// Mixes neighbour scores (from `route_scores`) with each route's prototype similarity:
/// `weight · prototype + (1 − weight) · neighbours`, where a route with no retrieved
/// neighbour counts `floor` (the weakest similarity retrieved). Every route with a prototype
/// is scored; best first, ties to the earlier route.
pub fn mix_with_prototypes(
    neighbours: &[RouteScore],
    floor: f32,
    prototypes: &[(RouteId, f32)],
    weight: f32,
) -> Vec<RouteScore> {
    let mut scores: Vec<RouteScore> = prototypes
        .iter()
        .map(|&(route, proto)| {
            let near = neighbours
                .iter()
                .find(|s| s.route == route)
                .map_or(floor, |s| s.score);
            RouteScore {
                route,
                score: weight * proto + (1.0 - weight) * near,
            }
        })
        .collect();
    scores.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
    scores
}

/// Re-weights route scores by the learned head's probabilities: each score is multiplied
/// by `(p / p_best)^weight`, where `p_best` is the most likely route's probability. The
/// head's favourite keeps its similarity exactly and no score ever rises, so a threshold
/// still means "this similar"; a route the head knows nothing about keeps its score.
/// (A negative score moves down by the same fraction of its size.) Re-sorted, best first.
pub fn apply_head(scores: &mut [RouteScore], probabilities: &[(RouteId, f32)], weight: f32) {
    let best = probabilities
        .iter()
        .map(|p| p.1)
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    for score in scores.iter_mut() {
        if let Some(&(_, p)) = probabilities.iter().find(|p| p.0 == score.route) {
            let factor = (p / best).clamp(0.0, 1.0).powf(weight);
            score.score -= score.score.abs() * (1.0 - factor);
        }
    }
    scores.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
}

/// `similarities` are one route's, best first.
fn aggregate(similarities: impl Iterator<Item = f32>, aggregation: Aggregation, floor: f32) -> f32 {
    match aggregation {
        Aggregation::Max => similarities.fold(f32::NEG_INFINITY, f32::max),
        Aggregation::Mean => {
            let (sum, n) = similarities.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            sum / n.max(1) as f32
        }
        // The neighbour half of the mix; `mix_with_prototypes` adds the centroids.
        Aggregation::CentroidMix(_) => aggregate(similarities, Aggregation::TopMean(3), floor),
        Aggregation::TopMean(k) => {
            let (sum, n) = similarities
                .take(k)
                .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            (sum + floor * (k - n) as f32) / k as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(list: &[(usize, f32)]) -> Vec<Hit> {
        list.iter()
            .map(|&(route, similarity)| Hit {
                route: RouteId::at(route),
                similarity,
            })
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn max_takes_each_routes_best_neighbour() {
        let scores = route_scores(&hits(&[(1, 0.9), (0, 0.8), (1, 0.5)]), Aggregation::Max);
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].route, RouteId::at(1));
        assert!(close(scores[0].score, 0.9));
        assert!(close(scores[1].score, 0.8));
    }

    #[test]
    fn mean_averages_all_retrieved_neighbours() {
        let scores = route_scores(&hits(&[(1, 0.9), (0, 0.8), (1, 0.5)]), Aggregation::Mean);
        assert_eq!(scores[0].route, RouteId::at(0));
        assert!(close(scores[0].score, 0.8));
        assert!(close(scores[1].score, 0.7));
    }

    #[test]
    fn top_mean_fills_missing_neighbours_with_the_weakest_retrieved() {
        // Route 0 has one neighbour; its other two count as 0.4, the weakest retrieved.
        let list = [(1, 0.9), (0, 0.85), (1, 0.8), (1, 0.7), (1, 0.4)];
        let scores = route_scores(&hits(&list), Aggregation::TopMean(3));
        assert_eq!(scores[0].route, RouteId::at(1));
        assert!(close(scores[0].score, (0.9 + 0.8 + 0.7) / 3.0));
        assert!(close(scores[1].score, (0.85 + 0.4 + 0.4) / 3.0));
    }

    #[test]
    fn ties_go_to_the_earlier_route() {
        let scores = route_scores(&hits(&[(2, 0.5), (1, 0.5)]), Aggregation::Max);
        assert_eq!(scores[0].route, RouteId::at(1));
    }

    #[test]
    fn prototypes_mix_with_neighbours_and_cover_unretrieved_routes() {
        let neighbours = [RouteScore {
            route: RouteId::at(0),
            score: 0.8,
        }];
        let protos = [(RouteId::at(0), 0.6), (RouteId::at(1), 0.9)];
        let mixed = mix_with_prototypes(&neighbours, 0.2, &protos, 0.5);
        assert_eq!(mixed.len(), 2);
        // Route 0: 0.5·0.6 + 0.5·0.8; route 1 was not retrieved: 0.5·0.9 + 0.5·floor.
        assert_eq!(mixed[0].route, RouteId::at(0));
        assert!(close(mixed[0].score, 0.5 * 0.6 + 0.5 * 0.8));
        assert!(close(mixed[1].score, 0.5 * 0.9 + 0.5 * 0.2));
    }

    fn scored(list: &[(usize, f32)]) -> Vec<RouteScore> {
        list.iter()
            .map(|&(route, score)| RouteScore {
                route: RouteId::at(route),
                score,
            })
            .collect()
    }

    #[test]
    fn the_head_reorders_scores_without_raising_any() {
        let mut scores = scored(&[(0, 0.6), (1, 0.5), (2, -0.2), (3, 0.4)]);
        // Route 3 is unknown to the head and keeps its score.
        let probs = [
            (RouteId::at(0), 0.1),
            (RouteId::at(1), 0.8),
            (RouteId::at(2), 0.1),
        ];
        apply_head(&mut scores, &probs, 1.0);
        assert_eq!(scores[0].route, RouteId::at(1));
        assert!(close(scores[0].score, 0.5));
        assert_eq!(scores[1].route, RouteId::at(3));
        assert!(close(scores[1].score, 0.4));
        assert!(close(scores[2].score, 0.6 * 0.125));
        // A negative score falls by the same fraction of its size.
        assert!(close(scores[3].score, -0.2 - 0.2 * 0.875));
    }

    #[test]
    fn a_head_weight_of_zero_changes_nothing() {
        let mut scores = scored(&[(0, 0.6), (1, 0.5)]);
        apply_head(
            &mut scores,
            &[(RouteId::at(0), 0.01), (RouteId::at(1), 0.99)],
            0.0,
        );
        assert_eq!(scores, scored(&[(0, 0.6), (1, 0.5)]));
    }

    #[test]
    fn no_hits_no_scores() {
        assert!(route_scores(&[], Aggregation::default()).is_empty());
    }
}
