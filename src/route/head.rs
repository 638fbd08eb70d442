//! The learned route head: a multinomial logistic regression over utterance embeddings,
//! trained when the router is built (L-BFGS on the route utterances, a fraction of a second
//! for 1,500 utterances) and cached with the embeddings. It answers "how likely is each
//! route, given that the prompt belongs to one of them?"; `score::apply_head` turns that
//! into a re-weighting of the similarity scores that never raises a score, so thresholds
//! keep their meaning and out-of-scope prompts stay out.

use crate::config::RouteId;
use crate::kernels::gemm::{Isa, Linear};

/// Inverse L2 strength, as scikit-learn's `LogisticRegression(C=…)` (the mean loss plus
/// `‖W‖² / (2·C·n)`); chosen on CLINC150 val (10 / 30 / 100 gave 91.3 / 91.8 / 91.5% top-1).
pub const INVERSE_REGULARIZATION: f32 = 30.0;
/// L-BFGS stops here at the latest; CLINC150's 150 routes converge in 40-80.
const MAX_ITERATIONS: usize = 150;
/// ... or when no gradient entry is larger than this.
const GRADIENT_TOLERANCE: f64 = 1e-4;
/// Largest training problem (utterances x routes x dimensions) trained at load: about 12
/// times CLINC150's 1,500 x 150 x 384, a few seconds. Larger route sets go without a head.
pub const MAX_TRAINING_SIZE: usize = 1 << 30;
/// Curvature pairs L-BFGS remembers.
const HISTORY: usize = 10;

/// Weights `[routes][dim]` and biases for the routes that have utterances.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    routes: Vec<RouteId>,
    dim: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    /// Trains on `vectors` (each `dim` long, owned by `owners`). `None` with fewer than two
    /// routes: there is nothing to tell apart.
    pub fn train(vectors: &[Vec<f32>], owners: &[RouteId]) -> Option<Head> {
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
        let theta = lbfgs(&problem, vec![0.0; problem.parameters()]);
        let (weights, bias) = theta.split_at(routes.len() * dim);
        Some(Head {
            routes,
            dim,
            weights: weights.to_vec(),
            bias: bias.to_vec(),
        })
    }

    /// Each route's probability for the unit vector `query`, in route order.
    pub fn probabilities(&self, query: &[f32]) -> Vec<(RouteId, f32)> {
        if query.len() != self.dim {
            return Vec::new();
        }
        let logits: Vec<f32> = self
            .weights
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(w, b)| crate::kernels::vector::dot(w, query) + b)
            .collect();
        let probs = softmax(&logits);
        self.routes.iter().copied().zip(probs).collect()
    }

    /// A byte image for the cache: dim, route count, route ids, weights, biases (little
    /// endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.routes.len() + 4 * self.weights.len());
        out.extend_from_slice(&(self.dim as u64).to_le_bytes());
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
            dim,
            weights: weights.to_vec(),
            bias: bias.to_vec(),
        })
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter()
        .map(|e| e / sum.max(f32::MIN_POSITIVE))
        .collect()
}

/// The regularised mean cross-entropy over the training set, with the data packed once for
/// the encoder's matrix kernels in both orientations the loss and its gradient need.
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
        if x.len() != samples * dim || samples == 0 {
            return None;
        }
        let mut transposed = vec![0.0f32; x.len()];
        for (i, row) in x.chunks_exact(dim).enumerate() {
            for (d, &v) in row.iter().enumerate() {
                transposed[d * samples + i] = v;
            }
        }
        Some(Problem {
            isa: Isa::detect(),
            rows: Linear::new(x, &vec![0.0; samples], samples, dim)?,
            columns: Linear::new(&transposed, &vec![0.0; dim], dim, samples)?,
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

    /// The loss at `theta` (weights then biases), writing its gradient into `grad`.
    fn loss(&self, theta: &[f32], grad: &mut [f32]) -> f64 {
        let (n, k, d) = (self.samples, self.routes, self.dim);
        let (w, b) = theta.split_at(k * d);
        let mut logits = vec![0.0f32; k * n];
        self.rows.forward(self.isa, w, k, &mut logits, None);
        // Softmax down each sample's column; `logits` becomes (P − Y)/n in place.
        let mut loss = 0.0f64;
        let mut column = vec![0.0f32; k];
        for i in 0..n {
            for c in 0..k {
                column[c] = logits[c * n + i] + b[c];
            }
            let max = column.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = column.iter().map(|z| (z - max).exp()).sum();
            let log_sum = max + sum.ln();
            loss += f64::from(log_sum - column[self.labels[i]]);
            for c in 0..k {
                let p = (column[c] - log_sum).exp();
                let y = if c == self.labels[i] { 1.0 } else { 0.0 };
                logits[c * n + i] = (p - y) / n as f32;
            }
        }
        let (gw, gb) = grad.split_at_mut(k * d);
        self.columns.forward(self.isa, &logits, k, gw, None);
        for (g, x) in gw.iter_mut().zip(w) {
            *g += self.lambda * x;
        }
        for (c, g) in gb.iter_mut().enumerate() {
            *g = logits[c * n..(c + 1) * n].iter().sum();
        }
        let norm: f64 = w.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        loss / n as f64 + 0.5 * f64::from(self.lambda) * norm
    }
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Limited-memory BFGS with a backtracking (Armijo) line search; returns the last iterate.
fn lbfgs(problem: &Problem, mut theta: Vec<f32>) -> Vec<f32> {
    let len = theta.len();
    let mut grad = vec![0.0f32; len];
    let mut loss = problem.loss(&theta, &mut grad);
    let mut history: std::collections::VecDeque<(Vec<f32>, Vec<f32>, f64)> =
        std::collections::VecDeque::with_capacity(HISTORY);
    let mut next_grad = vec![0.0f32; len];
    let mut candidate = vec![0.0f32; len];
    for iteration in 0..MAX_ITERATIONS {
        let largest = grad.iter().fold(0.0f64, |m, g| m.max(f64::from(g.abs())));
        if largest < GRADIENT_TOLERANCE {
            tracing::debug!(iteration, loss, "route head converged");
            break;
        }
        let direction = two_loop(&grad, &history);
        let slope = dot64(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): start the memory afresh.
            history.clear();
            continue;
        }
        let mut step = if history.is_empty() {
            (1.0 / largest).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..30 {
            for ((c, t), d) in candidate.iter_mut().zip(&theta).zip(&direction) {
                *c = t + (step as f32) * d;
            }
            let trial = problem.loss(&candidate, &mut next_grad);
            if trial.is_finite() && trial <= loss + 1e-4 * step * slope {
                accepted = Some(trial);
                break;
            }
            step *= 0.5;
        }
        let Some(trial) = accepted else { break };
        let s: Vec<f32> = candidate.iter().zip(&theta).map(|(c, t)| c - t).collect();
        let y: Vec<f32> = next_grad.iter().zip(&grad).map(|(n, g)| n - g).collect();
        let curvature = dot64(&s, &y);
        if curvature > 1e-12 {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / curvature));
        }
        std::mem::swap(&mut theta, &mut candidate);
        std::mem::swap(&mut grad, &mut next_grad);
        loss = trial;
    }
    theta
}

/// The L-BFGS search direction `−H·grad` from the remembered curvature pairs.
fn two_loop(
    grad: &[f32],
    history: &std::collections::VecDeque<(Vec<f32>, Vec<f32>, f64)>,
) -> Vec<f32> {
    let mut q: Vec<f64> = grad.iter().map(|&g| f64::from(g)).collect();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let alpha = rho
            * s.iter()
                .zip(&q)
                .map(|(&s, q)| f64::from(s) * q)
                .sum::<f64>();
        q.iter_mut()
            .zip(y)
            .for_each(|(q, &y)| *q -= alpha * f64::from(y));
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = history.back() {
        let gamma = dot64(s, y) / dot64(y, y).max(1e-30);
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for ((s, y, rho), alpha) in history.iter().zip(alphas.iter().rev()) {
        let beta = rho
            * y.iter()
                .zip(&q)
                .map(|(&y, q)| f64::from(y) * q)
                .sum::<f64>();
        q.iter_mut()
            .zip(s)
            .for_each(|(q, &s)| *q += (alpha - beta) * f64::from(s));
    }
    q.iter().map(|&q| -q as f32).collect()
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
        let theta = lbfgs(&problem, vec![0.0; problem.parameters()]);
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
