//! The float32 tile kernels for x86-64: AVX-512 and AVX2+FMA, each computing what
//! `tile_portable` does (add a block of k's products to a tile of partial sums), for as many
//! rows at once as their registers hold.

use super::PANEL;
use std::arch::x86_64::*;

/// AVX-512: up to 8 rows × 48 columns in 24 accumulators.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_avx512(
    rows: &[f32],
    stride: usize,
    mr: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    // SAFETY: the caller guarantees AVX-512 and the slice sizes.
    unsafe {
        match mr {
            1 => avx512_rows::<1>(rows, stride, kc, panel, tile),
            2 => avx512_rows::<2>(rows, stride, kc, panel, tile),
            3 => avx512_rows::<3>(rows, stride, kc, panel, tile),
            4 => avx512_rows::<4>(rows, stride, kc, panel, tile),
            5 => avx512_rows::<5>(rows, stride, kc, panel, tile),
            6 => avx512_rows::<6>(rows, stride, kc, panel, tile),
            7 => avx512_rows::<7>(rows, stride, kc, panel, tile),
            _ => avx512_rows::<8>(rows, stride, kc, panel, tile),
        }
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_rows<const MR: usize>(
    rows: &[f32],
    stride: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    debug_assert!(rows.len() > (MR - 1) * stride + kc - 1 && panel.len() >= kc * PANEL);
    debug_assert!(tile.len() >= MR * PANEL);
    // SAFETY (whole body): the caller passes MR rows of kc floats `stride` apart, a panel
    // block of kc × 48 floats and MR × 48 partial sums; every access stays inside them.
    unsafe {
        let t = tile.as_mut_ptr();
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            let row = t.add(r * PANEL);
            *a = [
                _mm512_loadu_ps(row),
                _mm512_loadu_ps(row.add(16)),
                _mm512_loadu_ps(row.add(32)),
            ];
        }
        let x = rows.as_ptr();
        let mut w = panel.as_ptr();
        for kk in 0..kc {
            let w0 = _mm512_loadu_ps(w);
            let w1 = _mm512_loadu_ps(w.add(16));
            let w2 = _mm512_loadu_ps(w.add(32));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * stride + kk));
                a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
                a[2] = _mm512_fmadd_ps(xv, w2, a[2]);
            }
            w = w.add(PANEL);
        }
        let out = t;
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * PANEL), a[0]);
            _mm512_storeu_ps(out.add(r * PANEL + 16), a[1]);
            _mm512_storeu_ps(out.add(r * PANEL + 32), a[2]);
        }
    }
}

/// AVX2 + FMA: up to 4 rows × 16 columns at a time (8 accumulators; with 12, as 4 rows × 24
/// columns once were, LLVM spilled one to the stack and every step waited on it), three
/// passes over a panel.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_avx2(
    rows: &[f32],
    stride: usize,
    mr: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    for third in 0..3 {
        let col = third * 16;
        // SAFETY: the caller guarantees AVX2+FMA and the slice sizes.
        unsafe {
            match mr {
                1 => avx2_rows::<1>(rows, stride, kc, panel, tile, col),
                2 => avx2_rows::<2>(rows, stride, kc, panel, tile, col),
                3 => avx2_rows::<3>(rows, stride, kc, panel, tile, col),
                _ => avx2_rows::<4>(rows, stride, kc, panel, tile, col),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_rows<const MR: usize>(
    rows: &[f32],
    stride: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
    col: usize,
) {
    debug_assert!(rows.len() > (MR - 1) * stride + kc - 1 && panel.len() >= kc * PANEL);
    debug_assert!(tile.len() >= MR * PANEL && col + 16 <= PANEL);
    // SAFETY (whole body): as in `avx512_rows`, with columns [col, col + 16) of the panel.
    unsafe {
        let t = tile.as_mut_ptr().add(col);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            let row = t.add(r * PANEL);
            *a = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
        }
        let x = rows.as_ptr();
        let mut w = panel.as_ptr().add(col);
        for kk in 0..kc {
            let w0 = _mm256_loadu_ps(w);
            let w1 = _mm256_loadu_ps(w.add(8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(*x.add(r * stride + kk));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
            w = w.add(PANEL);
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(t.add(r * PANEL), a[0]);
            _mm256_storeu_ps(t.add(r * PANEL + 8), a[1]);
        }
    }
}
