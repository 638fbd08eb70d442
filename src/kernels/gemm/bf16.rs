//! The bfloat16 path of a linear layer, for CPUs with AVX512_BF16: weights packed as bf16
//! pairs (`[k/2][48][2]`) for `vdpbf16ps`, half the bytes and twice the multiply-adds per
//! instruction, accumulating in f32; rows converted to pairs once per call.

use super::{Linear, PANEL, Packed, bf16_supported};

/// Rounds to the nearest bfloat16 (ties to even); NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

impl Linear {
    /// The same layer with bfloat16 weights, for CPUs with AVX512_BF16 (see `bf16_supported`).
    pub fn new_bf16(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Option<Linear> {
        Linear::check(weight, bias, n, k)?;
        if !bf16_supported() {
            return None;
        }
        let panels = n.div_ceil(PANEL);
        let pairs = k.div_ceil(2);
        let mut packed = vec![0u16; panels * pairs * PANEL * 2];
        for (col, row) in weight.chunks_exact(k).enumerate() {
            let (p, j) = (col / PANEL, col % PANEL);
            let base = p * pairs * PANEL * 2;
            for (kk, &w) in row.iter().enumerate() {
                packed[base + (kk / 2) * PANEL * 2 + j * 2 + kk % 2] = to_bf16(w);
            }
        }
        Some(Linear {
            k,
            n,
            packed: Packed::Bf16(packed),
            bias: Linear::pad_bias(bias, panels),
        })
    }
}

/// Each row of `x` (`m` rows of `k`) as k/2 bf16 pairs, the first element in the low half.
pub(super) fn bf16_pairs(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; m * pairs];
    for (row, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(pairs)) {
        // Whole blocks of 32 values with the CPU's own rounding conversion.
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if bf16_supported() {
            // SAFETY: AVX-512 BF16 is present; `row` has k values and `dst` k/2 pairs.
            done = unsafe { x86::to_bf16_pairs(row, dst) };
        }
        for i in done / 2..pairs {
            let lo = to_bf16(row[2 * i]) as u32;
            let hi = row.get(2 * i + 1).map_or(0, |&v| to_bf16(v) as u32);
            dst[i] = lo | (hi << 16);
        }
    }
    out
}

/// Computes `tile[r][0..48] = bias + Σ_k rows[r][k] · panel[k][0..48]` from bf16 pairs.
pub(super) fn tile_bf16(
    rows: &[u32],
    mr: usize,
    pairs: usize,
    panel: &[u16],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() {
        // SAFETY: the CPU has AVX-512 BF16 (checked above); sizes come from `panels`.
        unsafe { x86::tile_bf16(rows, mr, pairs, panel, bias, tile) };
        return;
    }
    // Unreachable in practice: bf16 layers are only built where the kernel runs.
    let _ = (rows, mr, pairs, panel, bias);
    tile.fill(f32::NAN);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// Converts the leading whole blocks of 32 values of `row` into bf16 pairs (round to
    /// nearest even, as `to_bf16`); returns how many values were converted.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn to_bf16_pairs(row: &[f32], dst: &mut [u32]) -> usize {
        let blocks = (row.len() / 32).min(dst.len() / 16);
        // SAFETY: block b reads row[32b..32b+32] and writes dst[16b..16b+16], both in range.
        unsafe {
            for b in 0..blocks {
                let lo = _mm512_loadu_ps(row.as_ptr().add(32 * b));
                let hi = _mm512_loadu_ps(row.as_ptr().add(32 * b + 16));
                // The first operand fills the upper half: memory order is lo then hi.
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * b).cast(), packed);
            }
        }
        blocks * 32
    }

    /// AVX-512 BF16: up to 8 rows × 48 columns; each step takes two k values at once.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_bf16(
        rows: &[u32],
        mr: usize,
        pairs: usize,
        panel: &[u16],
        bias: &[f32],
        tile: &mut [f32; 8 * PANEL],
    ) {
        // SAFETY: the caller guarantees AVX-512 BF16 and the slice sizes.
        unsafe {
            match mr {
                1 => bf16_rows::<1>(rows, pairs, panel, bias, tile),
                2 => bf16_rows::<2>(rows, pairs, panel, bias, tile),
                3 => bf16_rows::<3>(rows, pairs, panel, bias, tile),
                4 => bf16_rows::<4>(rows, pairs, panel, bias, tile),
                5 => bf16_rows::<5>(rows, pairs, panel, bias, tile),
                6 => bf16_rows::<6>(rows, pairs, panel, bias, tile),
                7 => bf16_rows::<7>(rows, pairs, panel, bias, tile),
                _ => bf16_rows::<8>(rows, pairs, panel, bias, tile),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn bf16_rows<const MR: usize>(
        rows: &[u32],
        pairs: usize,
        panel: &[u16],
        bias: &[f32],
        tile: &mut [f32; 8 * PANEL],
    ) {
        debug_assert!(
            rows.len() >= MR * pairs && panel.len() >= pairs * PANEL * 2 && bias.len() >= PANEL
        );
        // SAFETY (whole body): MR rows of `pairs` u32, a panel of pairs × 96 bf16 and a
        // 48-float bias; every access below stays inside them.
        unsafe {
            let b = bias.as_ptr();
            let mut acc = [[
                _mm512_loadu_ps(b),
                _mm512_loadu_ps(b.add(16)),
                _mm512_loadu_ps(b.add(32)),
            ]; MR];
            let x = rows.as_ptr();
            let mut w = panel.as_ptr();
            for kp in 0..pairs {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(32).cast()));
                let w2: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(64).cast()));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*x.add(r * pairs + kp) as i32));
                    a[0] = _mm512_dpbf16_ps(a[0], xv, w0);
                    a[1] = _mm512_dpbf16_ps(a[1], xv, w1);
                    a[2] = _mm512_dpbf16_ps(a[2], xv, w2);
                }
                w = w.add(PANEL * 2);
            }
            let out = tile.as_mut_ptr();
            for (r, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * PANEL), a[0]);
                _mm512_storeu_ps(out.add(r * PANEL + 16), a[1]);
                _mm512_storeu_ps(out.add(r * PANEL + 32), a[2]);
            }
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
    fn the_bf16_kernel_matches_a_bf16_rounded_reference() {
        if !bf16_supported() {
            return;
        }
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| f32::from_bits((to_bf16(x) as u32) << 16))
                .collect()
        };
        for &(m, n, k) in &[
            (1, 48, 5),
            (3, 50, 17),
            (14, 1152, 384),
            (70, 1536, 384),
            (9, 384, 1536),
        ] {
            let w = data(n * k, 1);
            let b = data(n, 2);
            let x = data(m * k, 3);
            let expected = reference(&round(&w), &b, &round(&x), m, n, k);
            let layer = Linear::new_bf16(&w, &b, n, k).unwrap();
            assert!(layer.is_bf16());
            let mut y = vec![f32::NAN; m * n];
            assert!(layer.forward(Isa::detect(), &x, m, &mut y, Team::new(2).as_ref(), None));
            for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-3 * (1.0 + e.abs()),
                    "bf16 m{m} n{n} k{k} at {i}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-2.0), 0xc000);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    }
}
