//! The float32 tile kernels for x86-64: AVX-512 and AVX2+FMA, each computing what
//! `tile_portable` does, for as many rows at once as their registers hold.

use super::PANEL;
use std::arch::x86_64::*;

/// AVX-512: up to 8 rows × 48 columns in 24 accumulators.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_avx512(
    rows: &[f32],
    mr: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    // SAFETY: the caller guarantees AVX-512 and the slice sizes.
    unsafe {
        match mr {
            1 => avx512_rows::<1>(rows, k, panel, bias, tile),
            2 => avx512_rows::<2>(rows, k, panel, bias, tile),
            3 => avx512_rows::<3>(rows, k, panel, bias, tile),
            4 => avx512_rows::<4>(rows, k, panel, bias, tile),
            5 => avx512_rows::<5>(rows, k, panel, bias, tile),
            6 => avx512_rows::<6>(rows, k, panel, bias, tile),
            7 => avx512_rows::<7>(rows, k, panel, bias, tile),
            _ => avx512_rows::<8>(rows, k, panel, bias, tile),
        }
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_rows<const MR: usize>(
    rows: &[f32],
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    debug_assert!(rows.len() >= MR * k && panel.len() >= k * PANEL && bias.len() >= PANEL);
    // SAFETY (whole body): the caller passes `rows` with MR rows of k floats, a panel of
    // k × 48 floats and a 48-float bias; every access below stays inside them.
    unsafe {
        let b = bias.as_ptr();
        let mut acc = [[
            _mm512_loadu_ps(b),
            _mm512_loadu_ps(b.add(16)),
            _mm512_loadu_ps(b.add(32)),
        ]; MR];
        let x = rows.as_ptr();
        let mut w = panel.as_ptr();
        for kk in 0..k {
            let w0 = _mm512_loadu_ps(w);
            let w1 = _mm512_loadu_ps(w.add(16));
            let w2 = _mm512_loadu_ps(w.add(32));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * k + kk));
                a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
                a[2] = _mm512_fmadd_ps(xv, w2, a[2]);
            }
            w = w.add(PANEL);
        }
        let out = tile.as_mut_ptr();
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * PANEL), a[0]);
            _mm512_storeu_ps(out.add(r * PANEL + 16), a[1]);
            _mm512_storeu_ps(out.add(r * PANEL + 32), a[2]);
        }
    }
}

/// AVX2 + FMA: up to 4 rows × 24 columns at a time (12 accumulators of 16 registers).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_avx2(
    rows: &[f32],
    mr: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    for half in 0..2 {
        // SAFETY: the caller guarantees AVX2+FMA and the slice sizes.
        unsafe {
            match mr {
                1 => avx2_rows::<1>(rows, k, panel, bias, tile, half * 24),
                2 => avx2_rows::<2>(rows, k, panel, bias, tile, half * 24),
                3 => avx2_rows::<3>(rows, k, panel, bias, tile, half * 24),
                _ => avx2_rows::<4>(rows, k, panel, bias, tile, half * 24),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_rows<const MR: usize>(
    rows: &[f32],
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
    col: usize,
) {
    debug_assert!(rows.len() >= MR * k && panel.len() >= k * PANEL && col + 24 <= PANEL);
    // SAFETY (whole body): as in `avx512_rows`, with columns [col, col + 24) of the panel.
    unsafe {
        let b = bias.as_ptr().add(col);
        let mut acc = [[
            _mm256_loadu_ps(b),
            _mm256_loadu_ps(b.add(8)),
            _mm256_loadu_ps(b.add(16)),
        ]; MR];
        let x = rows.as_ptr();
        let mut w = panel.as_ptr().add(col);
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(w);
            let w1 = _mm256_loadu_ps(w.add(8));
            let w2 = _mm256_loadu_ps(w.add(16));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(*x.add(r * k + kk));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                a[2] = _mm256_fmadd_ps(xv, w2, a[2]);
            }
            w = w.add(PANEL);
        }
        let out = tile.as_mut_ptr().add(col);
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * PANEL), a[0]);
            _mm256_storeu_ps(out.add(r * PANEL + 8), a[1]);
            _mm256_storeu_ps(out.add(r * PANEL + 16), a[2]);
        }
    }
}
