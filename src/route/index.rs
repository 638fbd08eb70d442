//! The utterance index: every route utterance's unit embedding, searched for a prompt's
//! nearest utterances by cosine similarity. Up to [`EXACT_UP_TO`] utterances the search
//! scans them all (exact, and as fast as the graph at that size: nothing to build, so a
//! reload's index is ready at once); above, an HNSW graph (hnsw_rs) is built and searched.
//!
//! Vectors are L2-normalised, so cosine similarity is their dot product and the graph's
//! distance is `1 - dot`. hnsw_rs's own `DistDot` asserts that value is never negative, which
//! rounding breaks for near-identical vectors (a panic reachable from input), and its
//! `DistCosine` re-normalises on every call in a scalar loop; `UnitDot` clamps instead.

use crate::config::RouteId;
use hnsw_rs::prelude::{Distance, Hnsw};

pub use crate::kernels::vector::dot;

/// Links per node and build breadth: recall@10 >= 0.99 on 3,000 real utterances with the
/// search breadth below (tests/classify.rs), at a third of the build time of 24/200.
const MAX_CONNECTIONS: usize = 16;
const EF_CONSTRUCTION: usize = 100;
/// Search breadth: at least this many candidates are explored per query.
const MIN_EF_SEARCH: usize = 64;
const MAX_LAYERS: usize = 16;
/// The most utterances searched by scanning them all. At 1,500 utterances (CLINC150) a scan
/// takes about as long as a graph search and the graph takes 165 ms to build on 2 cores
/// (`cargo bench --bench router -- search`).
pub const EXACT_UP_TO: usize = 4096;

/// `1 - a·b` for unit vectors, clamped to [0, 2] and never NaN.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = 1.0 - dot(a, b);
        if d.is_nan() { 2.0 } else { d.clamp(0.0, 2.0) }
    }
}

/// One retrieved utterance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Position of the utterance in the order it was added.
    pub utterance: usize,
    pub route: RouteId,
    pub similarity: f32,
}

pub struct UtteranceIndex {
    /// `None`: searched by a scan.
    graph: Option<Hnsw<'static, f32, UnitDot>>,
    /// Row-major unit vectors, `dim` floats per utterance, for exact scoring.
    vectors: Vec<f32>,
    routes: Vec<RouteId>,
    dim: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("embedding {index} has {got} dimensions, expected {expected}")]
    Dimension {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("embedding {index} is not a finite unit vector")]
    NotUnit { index: usize },
}

impl UtteranceIndex {
    /// The index of unit embeddings, each with the route that owns it: a scan up to
    /// [`EXACT_UP_TO`] of them, a graph above.
    pub fn build(
        embeddings: &[Vec<f32>],
        routes: &[RouteId],
    ) -> Result<UtteranceIndex, IndexError> {
        UtteranceIndex::build_with(embeddings, routes, embeddings.len() > EXACT_UP_TO)
    }

    /// The index with an HNSW graph whatever its size (what a large config gets).
    pub fn build_graph(
        embeddings: &[Vec<f32>],
        routes: &[RouteId],
    ) -> Result<UtteranceIndex, IndexError> {
        UtteranceIndex::build_with(embeddings, routes, true)
    }

    fn build_with(
        embeddings: &[Vec<f32>],
        routes: &[RouteId],
        with_graph: bool,
    ) -> Result<UtteranceIndex, IndexError> {
        let dim = embeddings.first().map_or(0, Vec::len);
        let mut vectors = Vec::with_capacity(embeddings.len() * dim);
        for (index, e) in embeddings.iter().enumerate() {
            if e.len() != dim {
                return Err(IndexError::Dimension {
                    index,
                    got: e.len(),
                    expected: dim,
                });
            }
            let norm = dot(e, e);
            if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
                return Err(IndexError::NotUnit { index });
            }
            vectors.extend_from_slice(e);
        }
        Ok(UtteranceIndex {
            graph: with_graph.then(|| graph(embeddings)),
            vectors,
            routes: routes.to_vec(),
            dim,
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The unit vector of utterance `i` (index order).
    pub fn vector(&self, i: usize) -> Option<&[f32]> {
        self.vectors.get(i * self.dim..(i + 1) * self.dim)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k` utterances nearest to `query` (a unit vector), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        if k == 0 || self.is_empty() || query.len() != self.dim {
            return Vec::new();
        }
        let Some(graph) = &self.graph else {
            return self.search_exhaustive(query, k);
        };
        let ef = MIN_EF_SEARCH.max(2 * k);
        let mut found: Vec<Neighbor> = graph
            .search(query, k, ef)
            .into_iter()
            .filter_map(|n| self.neighbor(n.d_id, query))
            .collect();
        sort_best_first(&mut found);
        found.truncate(k);
        found
    }

    /// The `k` nearest utterances by scanning all of them: the search of a small index,
    /// and the reference the graph's is measured against.
    pub fn search_exhaustive(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        if query.len() != self.dim || self.dim == 0 || k == 0 {
            return Vec::new();
        }
        let mut all: Vec<Neighbor> = self
            .vectors
            .chunks_exact(self.dim)
            .zip(&self.routes)
            .enumerate()
            .map(|(utterance, (vector, &route))| Neighbor {
                utterance,
                route,
                similarity: dot(vector, query),
            })
            .collect();
        if k < all.len() {
            all.select_nth_unstable_by(k - 1, best_first);
            all.truncate(k);
        }
        sort_best_first(&mut all);
        all
    }

    /// Exact similarity of `query` to every utterance, in index order.
    pub fn similarities(&self, query: &[f32]) -> Vec<Neighbor> {
        if query.len() != self.dim {
            return Vec::new();
        }
        (0..self.len())
            .filter_map(|i| self.neighbor(i, query))
            .collect()
    }

    /// Exact similarity of `query` to every utterance of `route`, best first.
    pub fn route_neighbors(&self, route: RouteId, query: &[f32]) -> Vec<Neighbor> {
        let mut found: Vec<Neighbor> = (0..self.len())
            .filter(|&i| self.routes.get(i) == Some(&route))
            .filter_map(|i| self.neighbor(i, query))
            .collect();
        sort_best_first(&mut found);
        found
    }

    /// The similarity is recomputed exactly rather than taken from the graph's clamped
    /// distance, so it is the true cosine.
    fn neighbor(&self, utterance: usize, query: &[f32]) -> Option<Neighbor> {
        let vector = self
            .vectors
            .get(utterance * self.dim..(utterance + 1) * self.dim)?;
        Some(Neighbor {
            utterance,
            route: *self.routes.get(utterance)?,
            similarity: dot(vector, query),
        })
    }
}

/// Higher similarity first; ties by utterance, so the order never depends on the search.
fn best_first(a: &Neighbor, b: &Neighbor) -> std::cmp::Ordering {
    b.similarity
        .total_cmp(&a.similarity)
        .then(a.utterance.cmp(&b.utterance))
}

fn sort_best_first(neighbors: &mut [Neighbor]) {
    neighbors.sort_by(best_first);
}

/// The HNSW graph of `embeddings`. Inserts run on every core (hnsw_rs locks per node): the
/// graph then depends on the threads' interleaving, as any approximate index may; recall is
/// tested, not the exact graph.
fn graph(embeddings: &[Vec<f32>]) -> Hnsw<'static, f32, UnitDot> {
    let graph = Hnsw::new(
        MAX_CONNECTIONS,
        embeddings.len().max(1),
        MAX_LAYERS,
        EF_CONSTRUCTION,
        UnitDot,
    );
    let items: Vec<(&[f32], usize)> = embeddings
        .iter()
        .enumerate()
        .map(|(id, e)| (e.as_slice(), id))
        .collect();
    graph.parallel_insert_slice(&items);
    let mut graph = graph;
    graph.set_searching_mode(true);
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = dot(v, v).sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn unit_dot_never_goes_negative_or_nan() {
        let v = unit(&[0.1, 0.2, 0.3, 0.4]);
        let d = UnitDot.eval(&v, &v);
        assert!((0.0..1e-6).contains(&d));
        assert_eq!(UnitDot.eval(&[f32::NAN], &[1.0]), 2.0);
        // A vector whose self-dot rounds above 1.
        let big = vec![1.0000001f32; 4];
        assert_eq!(UnitDot.eval(&big, &big), 0.0);
    }

    #[test]
    fn finds_the_nearest_utterance_and_its_route() {
        let vectors = vec![
            unit(&[1.0, 0.0, 0.0]),
            unit(&[0.0, 1.0, 0.0]),
            unit(&[0.0, 0.0, 1.0]),
        ];
        let routes = [RouteId::at(0), RouteId::at(1), RouteId::at(1)];
        let index = UtteranceIndex::build(&vectors, &routes).unwrap_or_else(|e| panic!("{e}"));
        let found = index.search(&unit(&[0.1, 0.9, 0.2]), 2);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].utterance, 1);
        assert_eq!(found[0].route, RouteId::at(1));
        assert!(found[0].similarity > found[1].similarity);
        assert_eq!(found, index.search_exhaustive(&unit(&[0.1, 0.9, 0.2]), 2));
    }

    #[test]
    fn asking_for_more_than_exists_returns_all() {
        let vectors = vec![unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
        let index = UtteranceIndex::build(&vectors, &[RouteId::at(0), RouteId::at(1)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(index.search(&unit(&[1.0, 1.0]), 50).len(), 2);
        assert!(
            index.search(&[1.0], 5).is_empty(),
            "wrong dimension gives nothing"
        );
    }

    #[test]
    fn refuses_vectors_that_are_not_unit_or_not_the_same_size() {
        let bad = UtteranceIndex::build(&[vec![3.0, 4.0]], &[RouteId::at(0)]);
        assert!(matches!(bad, Err(IndexError::NotUnit { index: 0 })));
        let ragged = UtteranceIndex::build(
            &[unit(&[1.0, 0.0]), vec![1.0]],
            &[RouteId::at(0), RouteId::at(0)],
        );
        assert!(matches!(
            ragged,
            Err(IndexError::Dimension { index: 1, .. })
        ));
    }

    #[test]
    fn a_small_index_is_scanned_and_finds_what_the_graph_finds() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut vectors = Vec::new();
        for _ in 0..300 {
            let mut v = [0.0f32; 16];
            for x in &mut v {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *x = (state % 2001) as f32 / 1000.0 - 1.0;
            }
            vectors.push(unit(&v));
        }
        let routes: Vec<RouteId> = (0..300).map(|i| RouteId::at(i % 7)).collect();
        let scan = UtteranceIndex::build(&vectors, &routes).unwrap_or_else(|e| panic!("{e}"));
        let graph =
            UtteranceIndex::build_graph(&vectors, &routes).unwrap_or_else(|e| panic!("{e}"));
        assert!(scan.graph.is_none() && graph.graph.is_some());
        let mut agreed = 0;
        for query in vectors.iter().step_by(10) {
            let found = scan.search(query, 10);
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            let all = scan.similarities(query);
            let best = all.iter().map(|n| n.similarity).fold(f32::MIN, f32::max);
            assert_eq!(found[0].similarity, best, "the scan is exact");
            let by_graph = graph.search(query, 10);
            agreed += found.iter().filter(|n| by_graph.contains(n)).count();
        }
        assert!(agreed >= 290, "the graph found {agreed} of 300 neighbours");
    }

    #[test]
    fn an_empty_index_answers_nothing() {
        let index = UtteranceIndex::build(&[], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(index.search(&[1.0, 0.0], 3).is_empty());
    }
}
