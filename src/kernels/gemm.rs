//! Linear layers for the native CPU encoder: `y = x·Wᵀ + b` for a few to a few thousand
//! rows. Weights are packed once at load into panels of 48 output columns (`[k][48]`
//! contiguous), so a kernel streams each weight exactly once per block of rows and never
//! re-packs. The float32 kernel is chosen at runtime: AVX-512, AVX2+FMA, or portable Rust;
//! all three compute the same thing and are tested against each other. The optional bfloat16
//! path packs weights as bf16 pairs (`[k/2][48][2]`) for AVX512_BF16's `vdpbf16ps`: half the
//! bytes and twice the multiply-adds per instruction, accumulating in f32.

use super::team::Team;

/// Output columns per packed panel.
pub const PANEL: usize = 48;
/// Multiply-accumulates below which a layer is not worth splitting between two threads
/// (a hand-over through `Team` costs a few µs).
const PARALLEL_MIN_MACS: usize = 1 << 19;

/// The kernel families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaKind {
    Avx512,
    Avx2,
    Portable,
}

/// The instruction set a kernel uses: a token that only detection mints (the field is
/// private), so safe code can never ask for instructions this CPU lacks. The portable
/// kernel runs anywhere and may be asked for by name.
///
/// ```compile_fail
/// use semroute::kernels::gemm::{Isa, IsaKind};
/// let forged = Isa(IsaKind::Avx512); // refused: the field is private
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Isa(IsaKind);

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As the kind alone: cache keys embed this text.
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl Isa {
    /// The best kernel this CPU can run.
    pub fn detect() -> Isa {
        Isa::available()
            .into_iter()
            .next()
            .unwrap_or(Isa::portable())
    }

    /// The kernel in plain Rust, which every CPU runs.
    pub const fn portable() -> Isa {
        Isa(IsaKind::Portable)
    }

    pub fn kind(self) -> IsaKind {
        self.0
    }

    /// Every kernel this CPU can run, best first (the portable one always). Each is checked
    /// for every extension its `#[target_feature]` enables.
    pub fn available() -> Vec<Isa> {
        let mut isas = Vec::with_capacity(3);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                isas.push(Isa(IsaKind::Avx512));
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa(IsaKind::Avx2));
            }
        }
        isas.push(Isa::portable());
        isas
    }
}

/// Whether this CPU can run the bfloat16 kernel.
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds to the nearest bfloat16 (ties to even); NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

enum Packed {
    /// `panels × k × PANEL` floats; columns past `n` are zero.
    F32(Vec<f32>),
    /// `panels × k/2 × PANEL × 2` bf16 values (k padded to even).
    Bf16(Vec<u16>),
}

/// A dense layer with its weight packed for the kernels.
pub struct Linear {
    k: usize,
    n: usize,
    packed: Packed,
    /// Bias padded to whole panels.
    bias: Vec<f32>,
}

impl Linear {
    /// `weight` is `[n][k]` row-major (PyTorch's layout), `bias` has `n` values.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Option<Linear> {
        Linear::check(weight, bias, n, k)?;
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0.0f32; panels * k * PANEL];
        for (col, row) in weight.chunks_exact(k).enumerate() {
            let (p, j) = (col / PANEL, col % PANEL);
            let base = p * k * PANEL;
            for (kk, &w) in row.iter().enumerate() {
                packed[base + kk * PANEL + j] = w;
            }
        }
        Some(Linear {
            k,
            n,
            packed: Packed::F32(packed),
            bias: Linear::pad_bias(bias, panels),
        })
    }

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

    fn check(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Option<()> {
        (weight.len() == n * k && bias.len() == n && n > 0 && k > 0).then_some(())
    }

    fn pad_bias(bias: &[f32], panels: usize) -> Vec<f32> {
        let mut padded = vec![0.0f32; panels * PANEL];
        padded[..bias.len()].copy_from_slice(bias);
        padded
    }

    pub fn is_bf16(&self) -> bool {
        matches!(self.packed, Packed::Bf16(_))
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `y[m][n] = x[m][k]·Wᵀ + b`. Panics never: mismatched lengths leave `y` untouched
    /// and return false. With a `team`, a large enough layer is shared by its two threads.
    pub fn forward(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        team: Option<&Team>,
    ) -> bool {
        if x.len() != m * self.k || y.len() != m * self.n {
            return false;
        }
        // The bf16 kernel takes the rows as bf16 pairs, converted once here.
        let pairs = match self.packed {
            Packed::Bf16(_) => bf16_pairs(x, m, self.k),
            Packed::F32(_) => Vec::new(),
        };
        let input = match self.packed {
            Packed::Bf16(_) => Input::Bf16(&pairs),
            Packed::F32(_) => Input::F32(x),
        };
        let panels = self.n.div_ceil(PANEL);
        let team = team.filter(|_| m * self.n * self.k >= PARALLEL_MIN_MACS && panels >= 2);
        if let Some(team) = team {
            let half = panels / 2;
            let out = SharedOut(y.as_mut_ptr());
            team.run(|| self.panels(isa, input, m, 0..half, &out), &|| {
                self.panels(isa, input, m, half..panels, &out)
            });
        } else {
            let out = SharedOut(y.as_mut_ptr());
            self.panels(isa, input, m, 0..panels, &out);
        }
        true
    }

    /// Computes the output columns of `panels` for all `m` rows.
    fn panels(
        &self,
        isa: Isa,
        x: Input,
        m: usize,
        panels: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let rows_per_tile = match (isa.kind(), x) {
            (_, Input::Bf16(_)) | (IsaKind::Avx512 | IsaKind::Portable, _) => 8,
            (IsaKind::Avx2, _) => 4,
        };
        let pairs = self.k.div_ceil(2);
        let mut tile = [0.0f32; 8 * PANEL];
        for p in panels {
            let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
            let col0 = p * PANEL;
            let width = PANEL.min(self.n - col0);
            let mut r0 = 0;
            while r0 < m {
                let mr = rows_per_tile.min(m - r0);
                match (&self.packed, x) {
                    (Packed::F32(packed), Input::F32(x)) => {
                        let panel = &packed[p * self.k * PANEL..(p + 1) * self.k * PANEL];
                        let rows = &x[r0 * self.k..(r0 + mr) * self.k];
                        tile_dispatch(isa, rows, mr, self.k, panel, bias, &mut tile);
                    }
                    (Packed::Bf16(packed), Input::Bf16(x)) => {
                        let panel = &packed[p * pairs * PANEL * 2..(p + 1) * pairs * PANEL * 2];
                        let rows = &x[r0 * pairs..(r0 + mr) * pairs];
                        tile_bf16(rows, mr, pairs, panel, bias, &mut tile);
                    }
                    // `forward` pairs the input with the packing; nothing else is reachable.
                    _ => return,
                }
                for r in 0..mr {
                    let src = &tile[r * PANEL..r * PANEL + width];
                    // SAFETY: each call owns a disjoint set of panels, hence of columns
                    // [col0, col0 + width) of every row; `forward` checked y's length.
                    unsafe {
                        let dst = out.0.add((r0 + r) * self.n + col0);
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, width);
                    }
                }
                r0 += mr;
            }
        }
    }
}

/// A layer's input, in the form its kernel takes.
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    /// Each row as k/2 bf16 pairs, the first element in the low half.
    Bf16(&'a [u32]),
}

fn bf16_pairs(x: &[f32], m: usize, k: usize) -> Vec<u32> {
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

fn tile_bf16(
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

/// The output buffer, shared by the two halves of a split layer (they write disjoint columns).
struct SharedOut(*mut f32);
// SAFETY: see `Linear::panels`: concurrent writers never touch the same element.
unsafe impl Sync for SharedOut {}

/// Computes `tile[r][0..48] = bias + Σ_k rows[r][k] · panel[k][0..48]` for `mr` rows.
fn tile_dispatch(
    isa: Isa,
    rows: &[f32],
    mr: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind AVX-512 is only minted by detection, after checking
        // avx512f, the one extension `tile_avx512` enables.
        IsaKind::Avx512 => unsafe { x86::tile_avx512(rows, mr, k, panel, bias, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        IsaKind::Avx2 => unsafe { x86::tile_avx2(rows, mr, k, panel, bias, tile) },
        _ => tile_portable(rows, mr, k, panel, bias, tile),
    }
}

fn tile_portable(
    rows: &[f32],
    mr: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32],
    tile: &mut [f32; 8 * PANEL],
) {
    for r in 0..mr {
        let acc = &mut tile[r * PANEL..(r + 1) * PANEL];
        acc.copy_from_slice(bias);
        let row = &rows[r * k..(r + 1) * k];
        for (kk, &a) in row.iter().enumerate() {
            let w = &panel[kk * PANEL..(kk + 1) * PANEL];
            for (o, &wv) in acc.iter_mut().zip(w) {
                *o += a * wv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], b: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut s = b[c] as f64;
                for kk in 0..k {
                    s += x[r * k + kk] as f64 * w[c * k + kk] as f64;
                }
                y[r * n + c] = s as f32;
            }
        }
        y
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_reference_for_odd_shapes() {
        // Row counts around the tile sizes, widths that are and are not whole panels.
        for &(m, n, k) in &[
            (1, 48, 5),
            (3, 50, 17),
            (8, 96, 384),
            (9, 384, 64),
            (14, 1152, 384),
            (33, 100, 7),
            (70, 1536, 384),
        ] {
            let w = data(n * k, 1);
            let b = data(n, 2);
            let x = data(m * k, 3);
            let expected = reference(&w, &b, &x, m, n, k);
            let layer = Linear::new(&w, &b, n, k).unwrap();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                let team = (m % 2 == 0).then(Team::new).flatten();
                assert!(layer.forward(isa, &x, m, &mut y, team.as_ref()));
                for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-3 * (1.0 + e.abs()),
                        "{isa:?} m{m} n{n} k{k} at {i}: {a} vs {e}"
                    );
                }
            }
        }
    }

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
            assert!(layer.forward(Isa::detect(), &x, m, &mut y, Team::new().as_ref()));
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

    #[test]
    fn mismatched_shapes_are_refused_not_panicked() {
        assert!(Linear::new(&[1.0; 6], &[0.0; 2], 3, 2).is_none());
        let layer = Linear::new(&[1.0; 6], &[0.0; 3], 3, 2).unwrap();
        let mut y = vec![0.0; 3];
        assert!(!layer.forward(Isa::portable(), &[1.0; 3], 1, &mut y, None));
    }

    #[test]
    fn detection_always_offers_the_portable_kernel() {
        assert_eq!(Isa::available().last(), Some(&Isa::portable()));
    }
}
