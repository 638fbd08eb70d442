//! Small vector kernels written so the compiler vectorises them: floating-point sums are
//! split over eight independent accumulators, since a single running sum is a dependency
//! chain the compiler may not reorder. `simd_fn!` compiles such a body once more for each
//! vector extension (AVX-512, AVX2+FMA) and picks the best one at runtime, since a portable
//! build may only assume SSE2.

use ndarray::{Array1, Array2, ArrayView2, s};

/// The widest vector extension the element-wise kernels may use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
    Base,
}

/// Detected once; `SEMROUTE_SIMD=base|avx2` caps it (for comparisons and tests).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("SEMROUTE_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            // Each level is checked for every extension its `simd_fn!` variant enables.
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 =
                avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl");
            if cap != "base" && cap != "avx2" && avx512 {
                return Level::Avx512;
            }
            if cap != "base" && avx2 {
                return Level::Avx2;
            }
        }
        let _ = cap;
        Level::Base
    })
}

/// Defines `fn $name(args) -> ret` that runs `$body(args)` compiled for the best `level()`.
/// `$body` must be `#[inline(always)]` (so it is compiled inside each variant).
#[macro_export]
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn medium($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                match $crate::kernels::vector::level() {
                    // SAFETY: `level()` reports a level only when this CPU has every
                    // extension the variant enables (avx512f, avx512vl, avx2, fma).
                    $crate::kernels::vector::Level::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::vector::Level::Avx2 => return unsafe { medium($($arg),*) },
                    $crate::kernels::vector::Level::Base => {}
                }
            }
            $body($($arg),*)
        }
    };
}

simd_fn! {
    /// Dot product (vectorised, see the module comment).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 => dot_body
}

/// The body of `dot`, for inlining into other vectorised kernels.
#[inline(always)]
pub fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of all elements, vectorised like `dot`.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of squared deviations from `mean`, vectorised like `dot`.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `matrix · vector` as one `dot` per row, for the engine's route matrices (`ndarray`'s own
/// matrix-vector product is a loop of dot products compiled for the baseline SSE2: twice as
/// slow on 150 routes x 384, see BENCHMARKS.md). Entries past the shorter of a row and
/// `vector` are ignored, as by `dot`.
pub fn dot_rows(matrix: ArrayView2<'_, f32>, vector: &[f32]) -> Array1<f32> {
    matrix
        .rows()
        .into_iter()
        .map(|row| match row.as_slice() {
            Some(row) => dot(row, vector),
            None => row.iter().zip(vector).map(|(x, y)| x * y).sum(),
        })
        .collect()
}

/// A `rows x cols` zero matrix whose first element sits on a 64-byte boundary (unless it is
/// empty), so that every row does when `cols` is a multiple of 16 (384 for the shipped
/// model): `dot_rows` over 150 x 384 rows that each straddle cache lines measured 18% slower
/// (BENCHMARKS.md). A clone is not aligned again.
pub fn aligned_zeros(rows: usize, cols: usize) -> Array2<f32> {
    const LANES: usize = 64 / size_of::<f32>();
    let cells = rows * cols;
    let storage = Array1::<f32>::zeros(cells + LANES);
    // `align_offset` may give up (usize::MAX): the matrix is then merely unaligned.
    let offset = storage.as_ptr().align_offset(64).min(LANES);
    storage
        .slice_move(s![offset..offset + cells])
        .into_shape_with_order((rows, cols))
        .unwrap_or_else(|_| Array2::zeros((rows, cols)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum_for_any_length() {
        for len in [0, 1, 7, 8, 9, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn dot_rows_takes_each_rows_dot_product_contiguous_or_not() {
        let matrix = ndarray::Array2::from_shape_fn((5, 19), |(r, c)| (r * 19 + c) as f32 * 0.1);
        let vector: Vec<f32> = (0..19).map(|i| (i as f32 * 0.3).cos()).collect();
        let naive: Vec<f32> = matrix
            .rows()
            .into_iter()
            .map(|row| row.iter().zip(&vector).map(|(x, y)| x * y).sum())
            .collect();
        for (a, b) in dot_rows(matrix.view(), &vector).iter().zip(&naive) {
            assert!((a - b).abs() < 1e-4);
        }
        let columns = matrix.t();
        let first_column: f32 = columns.row(0).iter().zip(&vector).map(|(x, y)| x * y).sum();
        assert!((dot_rows(columns, &vector)[0] - first_column).abs() < 1e-4);
    }

    #[test]
    fn aligned_matrices_start_on_a_cache_line() {
        for (rows, cols) in [(1, 1), (150, 384), (3, 7)] {
            let matrix = aligned_zeros(rows, cols);
            assert_eq!(matrix.dim(), (rows, cols));
            assert!(matrix.is_standard_layout() && matrix.iter().all(|&x| x == 0.0));
            assert_eq!(matrix.as_ptr() as usize % 64, 0, "{rows} x {cols}");
        }
    }

    #[test]
    fn sums_match_the_naive_ones() {
        for len in [0, 3, 8, 17, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let naive: f32 = a.iter().sum();
            assert!((sum(&a) - naive).abs() < 1e-4);
            let m = 0.1;
            let naive_sq: f32 = a.iter().map(|v| (v - m) * (v - m)).sum();
            assert!((sum_sq_dev(&a, m) - naive_sq).abs() < 1e-3);
        }
    }
}
