//! The int8 tile kernels for x86-64, each computing exactly what `tile_portable` does: the
//! panel's int8 weights are sign-extended to i16 as they are loaded (`vpmovsxbw`), then
//! multiplied by the rows' 12-bit activations in pairs and summed into i32: `vpmaddwd` and an
//! add on AVX2, `vpdpwssd` (both in one) on AVX-VNNI and AVX512-VNNI. A 4-byte group of a
//! column's weights meets 4 activations broadcast as one 64-bit value, so each i32 lane
//! holds one column's sum over half of each group, and the halves are added at the end.

use super::{PANEL_I8, ROWS, TILE_ROW};
use std::arch::x86_64::*;

/// Row `r`'s 4 activations of group `g`, as one 64-bit value to broadcast.
///
/// # Safety
/// `rows` must hold at least `(r + 1) × kp` values and `4g + 4 <= kp`.
#[inline(always)]
unsafe fn group(rows: *const i16, kp: usize, r: usize, g: usize) -> i64 {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::read_unaligned(rows.add(r * kp + 4 * g).cast::<i64>()) }
}

/// Defines the kernel `$tile` (rows two at a time × 16 columns: 8 accumulators and 4
/// widened weight registers) on `$name::<MR>`, `MR` rows with 256-bit registers, where
/// `$madd(acc, x, w)` adds the pair products of `x` and `w` to `acc`. One kernel per
/// instruction set, not one with a flag: a function that enables AVX-VNNI may have its
/// `vpmaddwd` + add fused into `vpdpwssd`.
macro_rules! rows_256 {
    ($(#[$doc:meta])* $tile:ident, $name:ident, $features:literal, $madd:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(
            rows: &[i16],
            mr: usize,
            kp: usize,
            panel: &[i8],
            sums: &mut [i32; ROWS * TILE_ROW],
        ) {
            let mut r0 = 0;
            while r0 < mr {
                let (rows_here, out) = (&rows[r0 * kp..], &mut sums[r0 * TILE_ROW..]);
                // SAFETY: the caller guarantees the features; `rows_here` holds `mr - r0`
                // rows of kp values.
                unsafe {
                    if mr - r0 == 1 {
                        $name::<1>(rows_here, kp, panel, out);
                    } else {
                        $name::<2>(rows_here, kp, panel, out);
                    }
                }
                r0 += 2;
            }
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $name<const MR: usize>(rows: &[i16], kp: usize, panel: &[i8], out: &mut [i32]) {
            debug_assert!(rows.len() >= MR * kp && panel.len() >= kp * PANEL_I8);
            debug_assert!(out.len() >= MR * TILE_ROW);
            // SAFETY (whole body): MR rows of kp values, a panel of kp × 16 bytes and MR × 16
            // sums; every access below stays inside them.
            unsafe {
                let mut acc = [[_mm256_setzero_si256(); 4]; MR];
                let x = rows.as_ptr();
                let mut w = panel.as_ptr();
                for g in 0..kp / 4 {
                    // Columns 4i..4i+4, four weights each.
                    let wv = [
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.cast())),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(16).cast())),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(32).cast())),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(48).cast())),
                    ];
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_set1_epi64x(group(x, kp, r, g));
                        for (ai, wi) in a.iter_mut().zip(&wv) {
                            *ai = $madd(*ai, xv, *wi);
                        }
                    }
                    w = w.add(PANEL_I8 * 4);
                }
                // Each register holds four columns' two half-sums, in 128-bit lanes of two
                // columns: adding neighbours and reordering 64-bit pieces gives 8 columns.
                let o = out.as_mut_ptr();
                for (r, a) in acc.iter().enumerate() {
                    let low = _mm256_permute4x64_epi64::<0xd8>(_mm256_hadd_epi32(a[0], a[1]));
                    let high = _mm256_permute4x64_epi64::<0xd8>(_mm256_hadd_epi32(a[2], a[3]));
                    _mm256_storeu_si256(o.add(r * TILE_ROW).cast(), low);
                    _mm256_storeu_si256(o.add(r * TILE_ROW + 8).cast(), high);
                }
            }
        }
    };
}

rows_256!(
    /// AVX2: `vpmaddwd`, then an add.
    tile_avx2,
    avx2_rows,
    "avx2",
    |acc, x, w| _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))
);
rows_256!(
    /// AVX-VNNI: `vpdpwssd`, the multiply and the add in one instruction.
    tile_avx_vnni,
    avx_vnni_rows,
    "avx2,avxvnni",
    |acc, x, w| _mm256_dpwssd_avx_epi32(acc, x, w)
);

/// Runs `$kernel::<MR>` for the row count `mr` (1 to 8).
macro_rules! by_rows {
    ($kernel:ident, $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            _ => $kernel::<8>($($arg),*),
        }
    };
}

/// AVX512-VNNI: up to 8 rows × 16 columns, two registers per row.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile_avx512_vnni(
    rows: &[i16],
    mr: usize,
    kp: usize,
    panel: &[i8],
    sums: &mut [i32; ROWS * TILE_ROW],
) {
    // SAFETY: the caller guarantees AVX512-VNNI and the sizes.
    unsafe { by_rows!(avx512_rows, mr, rows, kp, panel, sums) }
}

#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn avx512_rows<const MR: usize>(
    rows: &[i16],
    kp: usize,
    panel: &[i8],
    sums: &mut [i32; ROWS * TILE_ROW],
) {
    debug_assert!(rows.len() >= MR * kp && panel.len() >= kp * PANEL_I8 && MR <= ROWS);
    // SAFETY (whole body): as in `avx2_rows`.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        let x = rows.as_ptr();
        let mut w = panel.as_ptr();
        for g in 0..kp / 4 {
            // Columns 8i..8i+8, four weights each.
            let w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.cast()));
            let w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.add(32).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi64(group(x, kp, r, g));
                a[0] = _mm512_dpwssd_epi32(a[0], xv, w0);
                a[1] = _mm512_dpwssd_epi32(a[1], xv, w1);
            }
            w = w.add(PANEL_I8 * 4);
        }
        // Each 64-bit lane holds one column's two half-sums: add them in its low half and
        // keep the low halves.
        let o = sums.as_mut_ptr();
        let whole =
            |a: __m512i| _mm512_cvtepi64_epi32(_mm512_add_epi32(a, _mm512_srli_epi64::<32>(a)));
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_si256(o.add(r * TILE_ROW).cast(), whole(a[0]));
            _mm256_storeu_si256(o.add(r * TILE_ROW + 8).cast(), whole(a[1]));
        }
    }
}
