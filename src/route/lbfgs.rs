//! Limited-memory BFGS with a backtracking (Armijo) line search, over a flat parameter
//! vector: the optimiser that trains the route head.

use std::collections::VecDeque;

/// Curvature pairs L-BFGS remembers.
const HISTORY: usize = 10;

/// A differentiable function of a flat parameter vector.
pub trait Objective {
    /// The value at `theta`, writing its gradient into `grad` (as long as `theta`).
    fn evaluate(&self, theta: &[f32], grad: &mut [f32]) -> f64;
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    /// Iterations at most.
    pub max_iterations: usize,
    /// ... or when no gradient entry is larger than this.
    pub gradient_tolerance: f64,
}

/// One remembered step: `s` (the move), `y` (the gradient's change) and `1 / (s·y)`.
type Pair = (Vec<f32>, Vec<f32>, f64);

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Minimises `objective` from `theta`; returns the last iterate.
pub fn minimize(objective: &impl Objective, mut theta: Vec<f32>, stopping: Stopping) -> Vec<f32> {
    let len = theta.len();
    let mut grad = vec![0.0f32; len];
    let mut loss = objective.evaluate(&theta, &mut grad);
    let mut history: VecDeque<Pair> = VecDeque::with_capacity(HISTORY);
    let mut next_grad = vec![0.0f32; len];
    let mut candidate = vec![0.0f32; len];
    for iteration in 0..stopping.max_iterations {
        let largest = grad.iter().fold(0.0f64, |m, g| m.max(f64::from(g.abs())));
        if largest < stopping.gradient_tolerance {
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
            let trial = objective.evaluate(&candidate, &mut next_grad);
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
fn two_loop(grad: &[f32], history: &VecDeque<Pair>) -> Vec<f32> {
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
