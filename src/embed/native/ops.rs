//! The element-wise parts of the native BERT forward: layer norm, exact (erf) GELU with a
//! vectorisable rational erf, and softmax attention over one sequence.

use crate::kernels::vector::{dot_body as dot, sum, sum_sq_dev};
use crate::simd_fn;

simd_fn! {
    /// `x = γ·(x − mean)/√(var + ε) + β` on each row of `hidden` floats.
    pub fn layer_norm(x: &mut [f32], hidden: usize, gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_body
}

simd_fn! {
    /// `x += y`, element-wise.
    pub fn add_assign(x: &mut [f32], y: &[f32]) => add_assign_body
}

simd_fn! {
    /// GELU in its exact form, `x·(1 + erf(x/√2))/2`, as BERT was trained with.
    pub fn gelu(x: &mut [f32]) => gelu_body
}

simd_fn! {
    /// Multi-head self-attention for one sequence of `len` tokens. `qkv` holds, per token,
    /// `[q | k | v]` (each `heads × head_dim`); the context is written to `out`
    /// (`len × hidden`). All tokens are real (sequences are packed, never padded), so there
    /// is no mask.
    pub fn attention(qkv: &[f32], len: usize, heads: usize, head_dim: usize, out: &mut [f32], scores: &mut Vec<f32>) => attention_body
}

#[inline(always)]
fn layer_norm_body(x: &mut [f32], hidden: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(hidden) {
        let mean = sum(row) / hidden as f32;
        let var = sum_sq_dev(row, mean) / hidden as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

#[inline(always)]
fn add_assign_body(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf for f32 as a rational function of x (no exp, no branches, so loops over it
/// vectorise); absolute error below 1e-6 on all of f32 (checked in the tests).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // Beyond ±4, erf is ±1 to f32 precision.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_6e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let p = p * x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

#[inline(always)]
fn attention_body(
    qkv: &[f32],
    len: usize,
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    scores.clear();
    scores.resize(len, 0.0);
    for h in 0..heads {
        let q_off = h * head_dim;
        let k_off = hidden + h * head_dim;
        let v_off = 2 * hidden + h * head_dim;
        for i in 0..len {
            let q = &qkv[i * stride + q_off..i * stride + q_off + head_dim];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let k = &qkv[j * stride + k_off..j * stride + k_off + head_dim];
                *s = dot(q, k) * scale;
                max = max.max(*s);
            }
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            let inv = 1.0 / total;
            let ctx = &mut out[i * hidden + h * head_dim..i * hidden + (h + 1) * head_dim];
            ctx.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let v = &qkv[j * stride + v_off..j * stride + v_off + head_dim];
                let p = p * inv;
                for (c, &vv) in ctx.iter_mut().zip(v) {
                    *c += p * vv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (exact enough for |x| <= 5).
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 400.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_accurate_everywhere() {
        let mut worst = 0.0f64;
        let mut x = -6.0f64;
        while x <= 6.0 {
            let err = (erf(x as f32) as f64 - erf_reference(x)).abs();
            worst = worst.max(err);
            x += 0.001;
        }
        assert!(worst < 1e-6, "max |erf error| {worst}");
        assert!((erf(f32::INFINITY) - 1.0).abs() < 1e-6);
        assert!((erf(f32::NEG_INFINITY) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 1e-12);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn attention_over_one_token_returns_its_value() {
        // One token, one head of size 2: softmax over a single score is 1.
        let qkv = [0.3, -0.1, 0.5, 0.2, 7.0, -3.0];
        let mut out = vec![0.0; 2];
        attention(&qkv, 1, 1, 2, &mut out, &mut Vec::new());
        assert_eq!(out, [7.0, -3.0]);
    }

    #[test]
    fn attention_weights_values_by_softmax() {
        // Two tokens, one head of size 1; q·k scores are 0 and ln(3) for token 0.
        let ln3 = 3.0f32.ln();
        let qkv = [1.0, 0.0, 10.0, 1.0, ln3, 20.0];
        let mut out = vec![0.0; 2];
        attention(&qkv, 2, 1, 1, &mut out, &mut Vec::new());
        assert!(
            (out[0] - (0.25 * 10.0 + 0.75 * 20.0)).abs() < 1e-4,
            "{out:?}"
        );
    }
}
