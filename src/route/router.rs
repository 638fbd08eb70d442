//! The router: routes' utterances embedded into the index, plus the override matcher; turns
//! a prompt's embedding into a `Classification` (the decision and the evidence behind it).

use crate::config::Aggregation;
use crate::config::{Config, MAX_TOP_K, RouteId};
use crate::embed::{EmbedError, Embedding};
use crate::route::context::{ConversationReport, ScoreCache, score_cache};
use crate::route::decide::{MatchedBy, OverrideHit, RouteScore, decide};
use crate::route::head::Head;
use crate::route::index::{IndexError, Neighbor, UtteranceIndex};
use crate::route::overrides::OverrideMatcher;
use crate::route::prototypes::Prototypes;
use crate::route::score::{Hit, apply_head, mix_with_prototypes, route_scores};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Neighbours listed per candidate route in a classification.
const NEIGHBORS_SHOWN: usize = 3;

pub struct Router {
    config: Arc<Config>,
    index: UtteranceIndex,
    overrides: OverrideMatcher,
    /// For each indexed utterance: (route, position in the route's `utterances`).
    utterances: Vec<(RouteId, usize)>,
    /// Each route's normalised mean utterance vector (routes without utterances have none).
    prototypes: Prototypes,
    /// The learned head (none when `head_weight` is 0 or fewer than two routes have
    /// utterances).
    head: Option<Head>,
    /// Messages already scored for every route (a conversation's earlier turns).
    pub(super) scores: ScoreCache,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("embedding the route utterances failed: {0}")]
    Embed(#[from] EmbedError),
    #[error("building the utterance index failed: {0}")]
    Index(#[from] IndexError),
    #[error("{got} embeddings for {expected} utterances")]
    Count { got: usize, expected: usize },
}

/// The answer to "which route?", with the evidence, in the engine's terms: routes are ids.
/// `http::classify::ClassifyResponse` renders it with names (the shape of `POST /classify`).
#[derive(Debug, Clone)]
pub struct Classification {
    pub route: Option<RouteId>,
    pub score: Option<f32>,
    pub matched_by: MatchedBy,
    pub threshold: f32,
    /// The best route's score minus the runner-up's (`None` with fewer than two candidates).
    pub margin: Option<f32>,
    /// The best two routes are closer than the config's `ambiguity_margin`: a caller may
    /// want to ask the user which they meant.
    pub ambiguous: bool,
    /// Every keyword or pattern that matched, in file order (the first decides).
    pub overrides: Vec<OverrideHit>,
    /// Routes with retrieved neighbours, best first.
    pub candidates: Vec<Candidate>,
    /// Tokens the prompt was embedded as (after truncation).
    pub tokens: usize,
    pub timing_us: Timing,
    /// What the conversation contributed (classifications of a chat's last message only).
    pub conversation: Option<ConversationReport>,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub route: RouteId,
    pub score: f32,
    pub threshold: f32,
    /// The route's utterances nearest the prompt, nearest first.
    pub neighbors: Vec<NearUtterance>,
}

/// One of a route's utterances and its similarity to the prompt.
#[derive(Debug, Clone, Copy)]
pub struct NearUtterance {
    /// Its position in the route's `utterances`.
    pub utterance: usize,
    pub similarity: f32,
}

/// Microseconds spent embedding, searching and deciding, and in total.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Timing {
    pub embed: u64,
    pub search: u64,
    pub total: u64,
}

impl Router {
    pub(super) fn from_parts(
        config: Config,
        vectors: Vec<Vec<f32>>,
        head: Option<Head>,
    ) -> Result<Router, BuildError> {
        let utterances: Vec<(RouteId, usize)> = config
            .route_ids()
            .flat_map(|r| (0..config.route(r).utterances.len()).map(move |u| (r, u)))
            .collect();
        if vectors.len() != utterances.len() {
            return Err(BuildError::Count {
                got: vectors.len(),
                expected: utterances.len(),
            });
        }
        let owners: Vec<RouteId> = utterances.iter().map(|(r, _)| *r).collect();
        let prototypes = Prototypes::new(&vectors, &owners);
        let index = UtteranceIndex::build(&vectors, &owners)?;
        let overrides = OverrideMatcher::new(&config);
        let scores = score_cache(config.routes.len());
        Ok(Router {
            scores,
            config: Arc::new(config),
            index,
            overrides,
            utterances,
            prototypes,
            head,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The learned head, if one was trained.
    pub(super) fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    pub fn index(&self) -> &UtteranceIndex {
        &self.index
    }

    /// Classifies a prompt from its embedding. `top_k` overrides the config's for this query.
    pub fn classify(&self, text: &str, query: &Embedding, top_k: Option<usize>) -> Classification {
        self.classify_with_hits(self.override_hits(text), query, top_k)
    }

    /// The keywords and patterns that match `text` (the part of `classify` that reads the
    /// whole text: run it off the async runtime for a large one).
    pub fn override_hits(&self, text: &str) -> Vec<OverrideHit> {
        self.overrides.hits(text)
    }

    /// `classify` with the override hits already found.
    pub fn classify_with_hits(
        &self,
        override_hits: Vec<OverrideHit>,
        query: &Embedding,
        top_k: Option<usize>,
    ) -> Classification {
        let started = Instant::now();
        let config = &self.config;
        let k = top_k.unwrap_or(config.top_k).clamp(1, MAX_TOP_K);
        let neighbors = self.index.search(&query.vector, k);
        let scores = self.candidate_scores(&neighbors, &override_hits, &query.vector, k);
        let decision = decide(&scores, &override_hits, config.as_ref());
        let candidates = scores
            .iter()
            .map(|s| Candidate {
                route: s.route,
                score: s.score,
                threshold: config.threshold_for(s.route).get(),
                neighbors: self.near_utterances(s.route, &neighbors, &query.vector),
            })
            .collect();
        let search = started.elapsed().as_micros() as u64;
        let margin = match scores.as_slice() {
            [first, second, ..] => Some(first.score - second.score),
            _ => None,
        };
        Classification {
            margin,
            ambiguous: margin.is_some_and(|m| m < config.ambiguity_margin),
            route: decision.route,
            score: decision.score,
            matched_by: decision.matched_by,
            threshold: decision.threshold.get(),
            overrides: override_hits,
            candidates,
            tokens: query.tokens,
            timing_us: Timing {
                embed: 0,
                search,
                total: search,
            },
            conversation: None,
        }
    }

    /// The candidates' scores, best first: the routes of the `k` neighbours (mixed with the
    /// prototypes and the head as configured), plus every route an override selected, so
    /// the answer always carries the chosen route's score.
    fn candidate_scores(
        &self,
        neighbors: &[Neighbor],
        override_hits: &[OverrideHit],
        query: &[f32],
        k: usize,
    ) -> Vec<RouteScore> {
        let config = &self.config;
        let hits: Vec<Hit> = neighbors
            .iter()
            .map(|n| Hit {
                route: n.route,
                similarity: n.similarity,
            })
            .collect();
        let mut scores = route_scores(&hits, config.aggregation);
        if let Aggregation::CentroidMix(weight) = config.aggregation {
            let floor = hits.last().map_or(0.0, |h| h.similarity);
            let sims = self.prototypes.similarities(query);
            scores = mix_with_prototypes(&scores, floor, &sims, weight);
        }
        let probabilities = self.head_probabilities(query);
        apply_head(&mut scores, &probabilities, config.head_weight);
        // As many candidates as neighbours searched.
        scores.truncate(k);
        for hit in override_hits {
            if !scores.iter().any(|s| s.route == hit.route)
                && let Some(score) = self.exact_score(hit.route, query)
            {
                scores.push(score);
            }
        }
        // Candidates are listed best first, the added ones included.
        scores.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
        scores
    }

    /// Every route's score for `query` by the candidates' formula, exactly (no search):
    /// before the head and after it, by route index (`NEG_INFINITY` for routes without
    /// utterances).
    pub(crate) fn every_route_score(&self, query: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let n = self.config.routes.len();
        let mut by_route: Vec<Vec<Hit>> = vec![Vec::new(); n];
        for neighbor in self.index.similarities(query) {
            if let Some(hits) = by_route.get_mut(neighbor.route.index()) {
                hits.push(Hit {
                    route: neighbor.route,
                    similarity: neighbor.similarity,
                });
            }
        }
        let mut scores: Vec<RouteScore> = by_route
            .iter_mut()
            .filter_map(|hits| {
                hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
                route_scores(hits, self.config.aggregation).pop()
            })
            .collect();
        if let Aggregation::CentroidMix(weight) = self.config.aggregation {
            let mixed: Vec<RouteScore> = scores
                .iter()
                .flat_map(|s| {
                    let proto = self.prototypes.similarity(s.route, query);
                    proto.map(|p| mix_with_prototypes(&[*s], s.score, &[(s.route, p)], weight))
                })
                .flatten()
                .collect();
            scores = mixed;
        }
        let dense = |scores: &[RouteScore]| {
            let mut out = vec![f32::NEG_INFINITY; n];
            for s in scores {
                if let Some(slot) = out.get_mut(s.route.index()) {
                    *slot = s.score;
                }
            }
            out
        };
        let plain = dense(&scores);
        apply_head(
            &mut scores,
            &self.head_probabilities(query),
            self.config.head_weight,
        );
        (plain, dense(&scores))
    }

    fn exact_score(&self, route: RouteId, query: &[f32]) -> Option<RouteScore> {
        let hits: Vec<Hit> = self
            .index
            .route_neighbors(route, query)
            .iter()
            .map(|n| Hit {
                route,
                similarity: n.similarity,
            })
            .collect();
        let score = route_scores(&hits, self.config.aggregation).pop()?;
        // The same formula as the candidates': with prototypes, mix in the route's centroid
        // (every utterance of the route is in `hits`, so no floor is needed), then the head.
        let mut scores = match (
            self.config.aggregation,
            self.prototypes.similarity(route, query),
        ) {
            (Aggregation::CentroidMix(weight), Some(similarity)) => {
                mix_with_prototypes(&[score], score.score, &[(route, similarity)], weight)
            }
            _ => vec![score],
        };
        apply_head(
            &mut scores,
            &self.head_probabilities(query),
            self.config.head_weight,
        );
        scores.pop()
    }

    fn head_probabilities(&self, query: &[f32]) -> Vec<(RouteId, f32)> {
        match &self.head {
            Some(head) if self.config.head_weight > 0.0 => head.probabilities(query),
            _ => Vec::new(),
        }
    }

    fn near_utterances(
        &self,
        route: RouteId,
        retrieved: &[Neighbor],
        query: &[f32],
    ) -> Vec<NearUtterance> {
        let mut mine: Vec<_> = retrieved
            .iter()
            .filter(|n| n.route == route)
            .copied()
            .collect();
        if mine.is_empty() {
            mine = self.index.route_neighbors(route, query);
        }
        mine.iter()
            .take(NEIGHBORS_SHOWN)
            .filter_map(|n| {
                let (_, u) = self.utterances.get(n.utterance)?;
                Some(NearUtterance {
                    utterance: *u,
                    similarity: n.similarity,
                })
            })
            .collect()
    }
}
