//! The learned route head: a multinomial logistic regression over utterance embeddings,
//! trained when the router is built (L-BFGS on the route utterances, a fraction of a second
//! for 1,500 utterances) and cached with the embeddings. It answers "how likely is each
//! route, given that the prompt belongs to one of them?"; `score::apply_head` turns that
//! into a re-weighting of the similarity scores that never raises a score, so thresholds
//! keep their meaning and out-of-scope prompts stay out.

use crate::config::RouteId;
use crate::kernels::gemm::{Isa, Linear};
use crate::kernels::vector::{aligned_zeros, dot_rows};
use crate::route::lbfgs::{Objective, Stopping, minimize};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Zip};

/// Inverse L2 strength, as scikit-learn's `LogisticRegression(C=…)` (the mean loss plus
/// `‖W‖² / (2·C·n)`); chosen on CLINC150 val (10 / 30 / 100 gave 91.3 / 91.8 / 91.5% top-1).
pub const INVERSE_REGULARIZATION: f32 = 30.0;
/// L-BFGS stops here at the latest; CLINC150's 150 routes converge in 40-80.
const MAX_ITERATIONS: usize = 150;
/// ... or when no gradient entry is larger than this.
const GRADIENT_TOLERANCE: f64 = 1e-4;
/// Both, for L-BFGS.
const STOPPING: Stopping = Stopping {
    max_iterations: MAX_ITERATIONS,
    gradient_tolerance: GRADIENT_TOLERANCE,
};
/// Largest training problem (utterances x routes x dimensions) trained at load: about 12
/// times CLINC150's 1,500 x 150 x 384, a few seconds. Larger route sets go without a head.
pub const MAX_TRAINING_SIZE: usize = 1 << 30;

/// Which of an earlier head's routes each route is (by name), for a warm start.
pub type RouteMap<'a> = &'a dyn Fn(RouteId) -> Option<RouteId>;

/// Weights and biases for the routes that have utterances.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    routes: Vec<RouteId>,
    /// `routes x dim`: row `r` scores `routes[r]`.
    weights: Array2<f32>,
    bias: Array1<f32>,
}

impl Head {
    /// Trains on `vectors` (each `dim` long, owned by `owners`). `None` with fewer than two
    /// routes: there is nothing to tell apart.
    pub fn train(vectors: &[Vec<f32>], owners: &[RouteId]) -> Option<Head> {
        Head::train_from(vectors, owners, None)
    }

    /// `train`, starting from `start`'s weights where it knows the route (its route for
    /// each of ours, if any): after a reload that edited a few routes, L-BFGS starts near
    /// the answer and needs a fraction of the iterations. The optimum is the same (the
    /// problem is convex), up to the stopping tolerance.
    pub fn train_from(
        vectors: &[Vec<f32>],
        owners: &[RouteId],
        start: Option<(&Head, RouteMap<'_>)>,
    ) -> Option<Head> {
        let dim = vectors.first()?.len();
        let mut routes: Vec<RouteId> = owners.to_vec();
        routes.sort_unstable();
        routes.dedup();
        if routes.len() < 2 || vectors.len() != owners.len() {
            return None;
        }
        if vectors
            .len()
            .saturating_mul(routes.len())
            .saturating_mul(dim)
            > MAX_TRAINING_SIZE
        {
            tracing::warn!(
                utterances = vectors.len(),
                routes = routes.len(),
                "too many utterances and routes to train the route head at load; scoring without it"
            );
            return None;
        }
        let labels: Vec<usize> = owners
            .iter()
            .filter_map(|r| routes.binary_search(r).ok())
            .collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let problem = Problem::new(&flat, labels, dim, routes.len())?;
        let initial = match start {
            Some((head, old_of)) if head.weights.ncols() == dim => {
                head.initial_for(&routes, old_of, problem.parameters())
            }
            _ => vec![0.0; problem.parameters()],
        };
        let theta = minimize(&problem, initial, STOPPING);
        let (weights, bias) = theta.split_at(routes.len() * dim);
        Some(Head {
            weights: weights_matrix(routes.len(), dim, weights)?,
            bias: Array1::from(bias.to_vec()),
            routes,
        })
    }

    /// Parameters (weights row by row, then biases) for `routes`, copied from this head
    /// where `old_of` maps a route to one of ours, zero elsewhere.
    fn initial_for(&self, routes: &[RouteId], old_of: RouteMap<'_>, parameters: usize) -> Vec<f32> {
        let dim = self.weights.ncols();
        let mut theta = vec![0.0; parameters];
        let (weights, bias) = theta.split_at_mut(routes.len() * dim);
        for (row, &route) in routes.iter().enumerate() {
            let Some(old) = old_of(route).and_then(|o| self.routes.binary_search(&o).ok()) else {
                continue;
            };
            if let (Some(to), Some(from)) = (
                weights.get_mut(row * dim..(row + 1) * dim),
                self.weights.row(old).as_slice(),
            ) {
                to.copy_from_slice(from);
            }
            if let (Some(to), Some(&from)) = (bias.get_mut(row), self.bias.get(old)) {
                *to = from;
            }
        }
        theta
    }

    /// Each route's probability for the unit vector `query`, in route order.
    pub fn probabilities(&self, query: &[f32]) -> Vec<(RouteId, f32)> {
        if query.len() != self.weights.ncols() {
            return Vec::new();
        }
        let logits = dot_rows(self.weights.view(), query) + &self.bias;
        self.routes.iter().copied().zip(softmax(logits)).collect()
    }

    /// A byte image for the cache: dim, route count, route ids, weights, biases (little
    /// endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.routes.len() + 4 * self.weights.len());
        out.extend_from_slice(&(self.weights.ncols() as u64).to_le_bytes());
        out.extend_from_slice(&(self.routes.len() as u64).to_le_bytes());
        for r in &self.routes {
            out.extend_from_slice(&(r.index() as u64).to_le_bytes());
        }
        for v in self.weights.iter().chain(&self.bias) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The inverse of `to_bytes`; `None` for anything malformed or a route `route_at` does
    /// not know (the config's routes are the only source of ids).
    pub fn from_bytes(bytes: &[u8], route_at: impl Fn(usize) -> Option<RouteId>) -> Option<Head> {
        let mut words = bytes.chunks_exact(8);
        let mut next = || -> Option<usize> {
            usize::try_from(u64::from_le_bytes(words.next()?.try_into().ok()?)).ok()
        };
        let dim = next()?;
        let count = next()?;
        let routes: Vec<RouteId> = (0..count)
            .map(|_| next().and_then(&route_at))
            .collect::<Option<_>>()?;
        let start = 16usize.checked_add(count.checked_mul(8)?)?;
        let floats: Vec<f32> = bytes
            .get(start..)?
            .chunks_exact(4)
            .filter_map(|b| b.try_into().ok().map(f32::from_le_bytes))
            .collect();
        let weights_len = count.checked_mul(dim)?;
        if dim == 0
            || count < 2
            || floats.len() != weights_len + count
            || !(bytes.len() - start).is_multiple_of(4)
        {
            return None;
        }
        let (weights, bias) = floats.split_at(weights_len);
        Some(Head {
            routes,
            weights: weights_matrix(count, dim, weights)?,
            bias: Array1::from(bias.to_vec()),
        })
    }
}

/// `values` (row-major) as the head's `routes x dim` weights, aligned for `dot_rows`.
fn weights_matrix(routes: usize, dim: usize, values: &[f32]) -> Option<Array2<f32>> {
    let mut weights = aligned_zeros(routes, dim);
    weights.assign(&ArrayView2::from_shape((routes, dim), values).ok()?);
    Some(weights)
}

fn softmax(mut logits: Array1<f32>) -> Array1<f32> {
    let max = logits.fold(f32::NEG_INFINITY, |m, &z| m.max(z));
    logits.mapv_inplace(|z| (z - max).exp());
    let sum: f32 = logits.iter().sum();
    logits / sum.max(f32::MIN_POSITIVE)
}

/// The regularised mean cross-entropy over the training set: the objective L-BFGS minimises,
/// over the weights (`routes x dim`, row-major) followed by the biases. The two products
/// with the data go through the encoder's packed kernels, the data packed once in both
/// orientations they need: `ndarray`'s general product (matrixmultiply, AVX2 at best) made
/// training 1.5x slower (BENCHMARKS.md).
struct Problem {
    isa: Isa,
    /// `X` as a layer: `W·Xᵀ` gives the logits, one row per route.
    rows: Linear,
    /// `Xᵀ` as a layer: `G·X` gives the weight gradient.
    columns: Linear,
    labels: Vec<usize>,
    samples: usize,
    dim: usize,
    routes: usize,
    lambda: f32,
}

impl Problem {
    fn new(x: &[f32], labels: Vec<usize>, dim: usize, routes: usize) -> Option<Problem> {
        let samples = labels.len();
        if x.len() != samples * dim || samples == 0 || labels.iter().any(|&l| l >= routes) {
            return None;
        }
        let x = ArrayView2::from_shape((samples, dim), x).ok()?;
        let transposed = x.t().as_standard_layout().into_owned();
        Some(Problem {
            isa: Isa::detect(),
            rows: Linear::new(x.as_slice()?, &vec![0.0; samples], samples, dim)?,
            columns: Linear::new(transposed.as_slice()?, &vec![0.0; dim], dim, samples)?,
            labels,
            samples,
            dim,
            routes,
            lambda: 1.0 / (INVERSE_REGULARIZATION * samples as f32),
        })
    }

    fn parameters(&self) -> usize {
        self.routes * (self.dim + 1)
    }

    /// The loss at `theta` (weights then biases), writing its gradient into `grad`: with
    /// `P` the softmax of the logits `W·Xᵀ + b` (one column per sample) and `Y` the one-hot
    /// labels, the gradient is `(P − Y)·X / n + λ·W` for the weights and the row sums of
    /// `(P − Y) / n` for the biases. NaN (which L-BFGS rejects) for vectors of another length.
    fn loss(&self, theta: &[f32], grad: &mut [f32]) -> f64 {
        let (n, k, d) = (self.samples, self.routes, self.dim);
        if theta.len() != self.parameters() || grad.len() != theta.len() {
            return f64::NAN;
        }
        let (w, b) = theta.split_at(k * d);
        let (gw, gb) = grad.split_at_mut(k * d);
        let mut logits = Array2::<f32>::zeros((k, n));
        let Some(out) = logits.as_slice_mut() else {
            return f64::NAN;
        };
        self.rows.forward(self.isa, w, k, out, None, None);
        let b = ArrayView1::from(b);
        // Softmax down each sample's column (copied out with the biases added, as the
        // columns are strided); `logits` becomes (P − Y)/n in place.
        let mut loss = 0.0f64;
        let mut column = Array1::<f32>::zeros(k);
        for (mut sample, &label) in logits.columns_mut().into_iter().zip(&self.labels) {
            Zip::from(&mut column)
                .and(&sample)
                .and(&b)
                .for_each(|c, &z, &b| *c = z + b);
            let max = column.fold(f32::NEG_INFINITY, |m, &z| m.max(z));
            let sum: f32 = column.iter().map(|z| (z - max).exp()).sum();
            let log_sum = max + sum.ln();
            loss += f64::from(log_sum - column[label]);
            Zip::indexed(&mut sample)
                .and(&column)
                .for_each(|c, out, &z| {
                    let p = (z - log_sum).exp();
                    let y = if c == label { 1.0 } else { 0.0 };
                    *out = (p - y) / n as f32;
                });
        }
        let Some(delta) = logits.as_slice() else {
            return f64::NAN;
        };
        self.columns.forward(self.isa, delta, k, gw, None, None);
        let (Ok(w), Ok(mut gw)) = (
            ArrayView2::from_shape((k, d), w),
            ArrayViewMut2::from_shape((k, d), gw),
        ) else {
            return f64::NAN;
        };
        gw.scaled_add(self.lambda, &w);
        for (g, row) in gb.iter_mut().zip(logits.rows()) {
            *g = row.iter().sum();
        }
        let norm: f64 = w.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        loss / n as f64 + 0.5 * f64::from(self.lambda) * norm
    }
}

impl Objective for Problem {
    fn evaluate(&self, theta: &[f32], grad: &mut [f32]) -> f64 {
        self.loss(theta, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three routes, each a cluster around one axis of a 4-dimensional space.
    fn clusters() -> (Vec<Vec<f32>>, Vec<RouteId>) {
        let mut vectors = Vec::new();
        let mut owners = Vec::new();
        for route in 0..3 {
            for j in 0..5 {
                let mut v = [0.1 * j as f32 / 5.0; 4];
                v[route] = 1.0;
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                vectors.push(v.iter().map(|x| x / norm).collect());
                owners.push(RouteId::at(route * 2));
            }
        }
        (vectors, owners)
    }

    #[test]
    fn a_trained_head_prefers_the_route_whose_cluster_the_query_is_in() {
        let (vectors, owners) = clusters();
        let head = Head::train(&vectors, &owners).unwrap();
        for route in 0..3 {
            let mut query = vec![0.05; 4];
            query[route] = 1.0;
            let probs = head.probabilities(&query);
            assert_eq!(probs.len(), 3);
            let best = probs.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
            assert_eq!(best.0, RouteId::at(route * 2), "{probs:?}");
            assert!(best.1 > 0.5, "{probs:?}");
            let total: f32 = probs.iter().map(|p| p.1).sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn lbfgs_reaches_the_gradient_tolerance_on_a_small_problem() {
        let (vectors, owners) = clusters();
        let labels: Vec<usize> = owners.iter().map(|r| r.index() / 2).collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let problem = Problem::new(&flat, labels, 4, 3).unwrap();
        let theta = minimize(&problem, vec![0.0; problem.parameters()], STOPPING);
        let mut grad = vec![0.0; theta.len()];
        let trained = problem.loss(&theta, &mut grad);
        let start = problem.loss(&vec![0.0; theta.len()], &mut grad.clone());
        assert!(trained < start / 2.0, "{trained} vs {start}");
        assert!(
            grad.iter()
                .all(|g| f64::from(g.abs()) < 10.0 * GRADIENT_TOLERANCE)
        );
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (vectors, owners) = clusters();
        let labels: Vec<usize> = owners.iter().map(|r| r.index() / 2).collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let problem = Problem::new(&flat, labels, 4, 3).unwrap();
        let theta: Vec<f32> = (0..problem.parameters())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut grad = vec![0.0; theta.len()];
        problem.loss(&theta, &mut grad);
        let mut scratch = grad.clone();
        for i in 0..theta.len() {
            let h = 1e-2;
            let mut plus = theta.clone();
            plus[i] += h;
            let mut minus = theta.clone();
            minus[i] -= h;
            let numeric = (problem.loss(&plus, &mut scratch) - problem.loss(&minus, &mut scratch))
                / (2.0 * f64::from(h));
            assert!(
                (numeric - f64::from(grad[i])).abs() < 1e-3,
                "{i}: {numeric} vs {}",
                grad[i]
            );
        }
    }

    #[test]
    fn one_route_trains_no_head() {
        let (vectors, _) = clusters();
        let owners = vec![RouteId::at(0); vectors.len()];
        assert!(Head::train(&vectors, &owners).is_none());
    }

    #[test]
    fn the_byte_image_round_trips_and_rejects_damage() {
        let (vectors, owners) = clusters();
        let head = Head::train(&vectors, &owners).unwrap();
        let bytes = head.to_bytes();
        assert_eq!(
            Head::from_bytes(&bytes, |i| Some(RouteId::at(i))),
            Some(head)
        );
        assert!(Head::from_bytes(&bytes[..bytes.len() - 1], |i| Some(RouteId::at(i))).is_none());
        assert!(Head::from_bytes(&bytes[..10], |i| Some(RouteId::at(i))).is_none());
        assert!(Head::from_bytes(&[], |i| Some(RouteId::at(i))).is_none());
    }
}
