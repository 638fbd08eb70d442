//! The int8 path of a linear layer: weights quantized per output column (symmetric, ±127)
//! once at load and packed as `[k/4][16][4]` bytes, each row of activations quantized per
//! token at run time, products summed exactly in i32 and scaled back to f32 once per output.
//! Every kernel computes the same integer sums, so all of them give bit-identical results
//! (the tests check this against the portable one).
//!
//! Activations keep 12 bits (±2047, as i16), not 8: with 8-bit activations (`vpmaddubsw` /
//! `vpdpbusd`) all-MiniLM-L6-v2's worst cosine to sentence-transformers on the shared
//! fixtures was 0.9857, with 12 bits it is 0.996 (weights alone cost 0.9965). The kernels
//! sign-extend the int8 weights as they load them and multiply pairs with `vpmaddwd`
//! (AVX2) or `vpdpwssd` (AVX-VNNI, AVX512-VNNI): the same multiplies per instruction as the
//! byte forms, since those need a second instruction to widen their 16-bit sums.

#[cfg(target_arch = "x86_64")]
mod x86;

use super::{Linear, Packed, SharedOut};
use crate::kernels::isa::{Int8Isa, Int8Kind};

/// Output columns per packed int8 panel: one 512-bit register of i32 sums.
pub const PANEL_I8: usize = 16;
/// Most rows one kernel call takes.
const ROWS: usize = 8;
/// Largest activation magnitude after quantization (12 bits).
const ACT_MAX: f32 = 2047.0;
/// Widest input a layer may have: 2047 × 127 × 8192 / 2 still fits an i32 half-sum.
const MAX_K: usize = 8192;
/// i32 sums per row of a kernel's tile.
const TILE_ROW: usize = PANEL_I8;

/// A layer's weights in int8, with what it takes to scale the sums back.
pub(super) struct Int8Weights {
    /// `panels × k4/4 × 16 × 4` values; k is padded to `k4`, a multiple of 4, with zeros.
    packed: Vec<i8>,
    /// Per output column (padded to whole panels): weight = scale × quantized value.
    scales: Vec<f32>,
    isa: Int8Isa,
}

impl Int8Weights {
    pub(super) fn isa(&self) -> Int8Isa {
        self.isa
    }

    /// Bytes held (a quarter of the f32 packing plus 4 bytes a column).
    pub(super) fn bytes(&self) -> usize {
        self.packed.len() + 4 * self.scales.len()
    }
}

/// `k` rounded up to a whole number of 4-byte groups.
fn k4(k: usize) -> usize {
    k.div_ceil(4) * 4
}

impl Linear {
    /// The same layer with int8 weights, run by `isa`'s kernel (`None` past 8,192 inputs,
    /// where the sums could overflow).
    pub fn new_int8(
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        isa: Int8Isa,
    ) -> Option<Linear> {
        Linear::check(weight, bias, n, k)?;
        if k > MAX_K {
            return None;
        }
        let panels = n.div_ceil(PANEL_I8);
        let kp = k4(k);
        let mut packed = vec![0i8; panels * kp * PANEL_I8];
        let mut scales = vec![0.0f32; panels * PANEL_I8];
        for (col, row) in weight.chunks_exact(k).enumerate() {
            let max = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            let scale = if max > 0.0 && max.is_finite() {
                max / 127.0
            } else {
                0.0
            };
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            scales[col] = scale;
            let (p, j) = (col / PANEL_I8, col % PANEL_I8);
            let base = p * kp * PANEL_I8;
            for (kk, &w) in row.iter().enumerate() {
                let q = (w * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                packed[base + (kk / 4) * PANEL_I8 * 4 + j * 4 + kk % 4] = q;
            }
        }
        let mut padded_bias = vec![0.0f32; panels * PANEL_I8];
        padded_bias[..n].copy_from_slice(bias);
        Some(Linear {
            k,
            n,
            packed: Packed::Int8(Int8Weights {
                packed,
                scales,
                isa,
            }),
            bias: padded_bias,
        })
    }

    /// The int8 weights as bytes, for the quantized-weights cache (`None` for other layers).
    pub fn int8_bytes(&self) -> Option<Vec<u8>> {
        let Packed::Int8(w) = &self.packed else {
            return None;
        };
        let mut out = Vec::with_capacity(16 + w.bytes() + 4 * self.bias.len());
        out.extend((self.n as u64).to_le_bytes());
        out.extend((self.k as u64).to_le_bytes());
        out.extend(w.packed.iter().map(|&q| q as u8));
        for v in w.scales.iter().chain(&self.bias) {
            out.extend(v.to_le_bytes());
        }
        Some(out)
    }

    /// The length of `int8_bytes` for a layer of `n` outputs and `k` inputs.
    pub fn int8_bytes_len(n: usize, k: usize) -> usize {
        let cols = n.div_ceil(PANEL_I8) * PANEL_I8;
        16 + cols * k4(k) + 8 * cols
    }

    /// Reads back what `int8_bytes` wrote for a layer of `n × k`; `None` if it does not fit
    /// or holds a scale or bias that is not finite.
    pub fn from_int8_bytes(bytes: &[u8], n: usize, k: usize, isa: Int8Isa) -> Option<Linear> {
        let panels = n.div_ceil(PANEL_I8);
        let (cols, packed_len) = (panels * PANEL_I8, panels * k4(k) * PANEL_I8);
        if k > MAX_K
            || bytes.len() != 16 + packed_len + 8 * cols
            || bytes[..8] != (n as u64).to_le_bytes()
            || bytes[8..16] != (k as u64).to_le_bytes()
        {
            return None;
        }
        let (packed, rest) = bytes[16..].split_at(packed_len);
        let floats: Vec<f32> = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !floats.iter().all(|v| v.is_finite()) {
            return None;
        }
        let (scales, bias) = floats.split_at(cols);
        Some(Linear {
            k,
            n,
            packed: Packed::Int8(Int8Weights {
                packed: packed.iter().map(|&b| b as i8).collect(),
                scales: scales.to_vec(),
                isa,
            }),
            bias: bias.to_vec(),
        })
    }

    /// Output columns of int8 `panels` for all `m` quantized rows: `y = scale_row ×
    /// scale_col × Σ q_row·q_col + bias`, then `epilogue` on each row's columns.
    pub(super) fn panels_int8(
        &self,
        w: &Int8Weights,
        rows: &QuantizedRows,
        panels: std::ops::Range<usize>,
        out: &SharedOut,
        epilogue: Option<fn(&mut [f32])>,
    ) {
        let kp = k4(self.k);
        let mut sums = [0i32; ROWS * TILE_ROW];
        let mut tile = [0.0f32; ROWS * PANEL_I8];
        for p in panels {
            let col0 = p * PANEL_I8;
            let width = PANEL_I8.min(self.n - col0);
            let panel = &w.packed[p * kp * PANEL_I8..(p + 1) * kp * PANEL_I8];
            let mut r0 = 0;
            while r0 < rows.m {
                let mr = ROWS.min(rows.m - r0);
                let q = &rows.q[r0 * kp..(r0 + mr) * kp];
                tile_int8(w.isa, q, mr, kp, panel, &mut sums);
                for r in 0..mr {
                    let row_scale = rows.scales[r0 + r];
                    let dst = &mut tile[r * PANEL_I8..(r + 1) * PANEL_I8];
                    let src = &sums[r * TILE_ROW..(r + 1) * TILE_ROW];
                    let scales = &w.scales[col0..col0 + PANEL_I8];
                    let bias = &self.bias[col0..col0 + PANEL_I8];
                    for (((t, &sum), &scale), &b) in dst.iter_mut().zip(src).zip(scales).zip(bias) {
                        *t = sum as f32 * (row_scale * scale) + b;
                    }
                }
                // One call for the whole tile: the epilogue (GELU) vectorises over it.
                if let Some(f) = epilogue {
                    f(&mut tile[..mr * PANEL_I8]);
                }
                for r in 0..mr {
                    // SAFETY: each call owns a disjoint set of panels, hence of columns
                    // [col0, col0 + width) of every row; `forward` checked y's length.
                    unsafe {
                        let dst = out.0.add((r0 + r) * self.n + col0);
                        std::ptr::copy_nonoverlapping(tile[r * PANEL_I8..].as_ptr(), dst, width);
                    }
                }
                r0 += mr;
            }
        }
    }
}

/// Rows of activations quantized per token for the int8 kernels.
pub(super) struct QuantizedRows {
    /// `m × k4` values within ±2047, each row padded with zeros.
    q: Vec<i16>,
    /// Per row: activation = scale × quantized value.
    scales: Vec<f32>,
    m: usize,
}

/// Quantizes each of the `m` rows of `x` (`k` floats each) to ±2047 by its largest
/// magnitude.
pub(super) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let kp = k4(k);
    let mut q = vec![0i16; m * kp];
    let mut scales = vec![0.0f32; m];
    for ((row, dst), scale) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(kp))
        .zip(&mut scales)
    {
        *scale = quantize_row(row, &mut dst[..k]);
    }
    QuantizedRows { q, scales, m }
}

crate::simd_fn! {
    /// Writes `row` in `q` (symmetric, by its largest magnitude); returns the scale.
    fn quantize_row(row: &[f32], q: &mut [i16]) -> f32 => quantize_row_body
}

#[inline(always)]
fn quantize_row_body(row: &[f32], q: &mut [i16]) -> f32 {
    // Eight running maxima written as compare-and-select, which vectorises (`f32::max`,
    // with its NaN rule, does not).
    let mut lanes = [0.0f32; 8];
    let blocks = row.chunks_exact(8);
    let tail = blocks
        .remainder()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    for block in blocks {
        for (m, v) in lanes.iter_mut().zip(block) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let max = lanes.iter().fold(tail, |m, &v| m.max(v));
    if !(max > 0.0 && max.is_finite()) {
        q.fill(0);
        return 0.0;
    }
    let inv = ACT_MAX / max;
    for (d, &v) in q.iter_mut().zip(row) {
        *d = (v * inv).round_ties_even() as i32 as i16;
    }
    max / ACT_MAX
}

/// `sums[r][j] = Σ_k rows[r][k] · panel[k][j]` for `mr` rows and the panel's 16 columns.
fn tile_int8(
    isa: Int8Isa,
    rows: &[i16],
    mr: usize,
    kp: usize,
    panel: &[i8],
    sums: &mut [i32; ROWS * TILE_ROW],
) {
    debug_assert!(rows.len() >= mr * kp && panel.len() >= kp * PANEL_I8 && mr <= ROWS);
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Int8Isa` of this kind is only minted by detection, after checking
        // avx512f, avx512bw, avx512vnni and avx2, which `tile_avx512_vnni` enables.
        Int8Kind::Avx512Vnni => unsafe { x86::tile_avx512_vnni(rows, mr, kp, panel, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avxvnni and avx2.
        Int8Kind::AvxVnni => unsafe { x86::tile_avx_vnni(rows, mr, kp, panel, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2.
        Int8Kind::Avx2 => unsafe { x86::tile_avx2(rows, mr, kp, panel, sums) },
        _ => tile_portable(rows, mr, kp, panel, sums),
    }
}

fn tile_portable(
    rows: &[i16],
    mr: usize,
    kp: usize,
    panel: &[i8],
    sums: &mut [i32; ROWS * TILE_ROW],
) {
    for r in 0..mr {
        let row = &rows[r * kp..(r + 1) * kp];
        for j in 0..PANEL_I8 {
            sums[r * TILE_ROW + j] = row
                .iter()
                .enumerate()
                .map(|(kk, &a)| a as i32 * panel[(kk / 4) * PANEL_I8 * 4 + j * 4 + kk % 4] as i32)
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{data, reference};
    use super::*;
    use crate::kernels::isa::Isa;
    use crate::kernels::team::Team;

    #[test]
    fn every_int8_kernel_gives_the_portable_kernels_exact_result() {
        for &(m, n, k) in &[
            (1, 16, 4),
            (3, 50, 17),
            (8, 96, 384),
            (9, 384, 64),
            (13, 1152, 384),
            (21, 384, 1536),
        ] {
            let (w, b, x) = (data(n * k, 1), data(n, 2), data(m * k, 3));
            let portable = Linear::new_int8(&w, &b, n, k, Int8Isa::portable()).unwrap();
            let mut expected = vec![f32::NAN; m * n];
            assert!(portable.forward(Isa::portable(), &x, m, &mut expected, None, None));
            for isa in Int8Isa::available() {
                let layer = Linear::new_int8(&w, &b, n, k, isa).unwrap();
                for threads in [1, 3] {
                    let team = Team::new(threads);
                    let mut y = vec![f32::NAN; m * n];
                    assert!(layer.forward(Isa::portable(), &x, m, &mut y, team.as_ref(), None));
                    assert!(
                        y.iter()
                            .zip(&expected)
                            .all(|(a, e)| a.to_bits() == e.to_bits()),
                        "{isa:?} with {threads} threads differs at m{m} n{n} k{k}"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_stays_close_to_float32() {
        // Quantization error: about 1/127 of each row's and column's largest value.
        let (m, n, k) = (5, 384, 384);
        let (w, b, x) = (data(n * k, 4), data(n, 5), data(m * k, 6));
        let expected = reference(&w, &b, &x, m, n, k);
        let isa = Int8Isa::detect().unwrap_or(Int8Isa::portable());
        let layer = Linear::new_int8(&w, &b, n, k, isa).unwrap();
        let mut y = vec![0.0; m * n];
        assert!(layer.forward(Isa::portable(), &x, m, &mut y, None, None));
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (sum, n) = v.fold((0.0f64, 0), |(s, n), x| (s + (x * x) as f64, n + 1));
            (sum / n as f64).sqrt()
        };
        let error = rms(&mut y.iter().zip(&expected).map(|(a, e)| a - e));
        let size = rms(&mut expected.iter().copied());
        // Outputs are sums of 384 products (rms ~6.5); each product is off by ~1/254 of a
        // value's range, so the error is about 1% of the outputs at most.
        assert!(
            error / size < 0.01,
            "rms error {error} against outputs of rms {size}"
        );
    }

    #[test]
    fn int8_weights_survive_their_byte_form() {
        let (n, k) = (40, 10);
        let (w, b, x) = (data(n * k, 7), data(n, 8), data(3 * k, 9));
        let isa = Int8Isa::portable();
        let layer = Linear::new_int8(&w, &b, n, k, isa).unwrap();
        let bytes = layer.int8_bytes().unwrap();
        let again = Linear::from_int8_bytes(&bytes, n, k, isa).unwrap();
        assert!(Linear::from_int8_bytes(&bytes, n + 1, k, isa).is_none());
        assert!(Linear::from_int8_bytes(&bytes[1..], n, k, isa).is_none());
        let (mut y1, mut y2) = (vec![0.0; 3 * n], vec![1.0; 3 * n]);
        assert!(layer.forward(Isa::portable(), &x, 3, &mut y1, None, None));
        assert!(again.forward(Isa::portable(), &x, 3, &mut y2, None, None));
        assert_eq!(y1, y2);
        assert_eq!(bytes.len(), Linear::int8_bytes_len(n, k));
        let mut poisoned = bytes.clone();
        let at = bytes.len() - 4;
        poisoned[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Linear::from_int8_bytes(&poisoned, n, k, isa).is_none());
    }

    #[test]
    fn a_zero_row_or_column_quantizes_to_zero_not_nan() {
        let (n, k) = (2, 4);
        let w = [0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 3.0, 0.5];
        let layer = Linear::new_int8(&w, &[0.5, 0.0], n, k, Int8Isa::portable()).unwrap();
        let mut y = vec![f32::NAN; 4];
        let x = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        assert!(layer.forward(Isa::portable(), &x, 2, &mut y, None, None));
        assert_eq!(y[0], 0.5);
        assert_eq!(y[1], 0.0);
        assert!((y[3] - 2.5).abs() < 0.05, "{y:?}");
    }
}
