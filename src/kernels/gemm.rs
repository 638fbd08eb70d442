//! Linear layers for the native CPU encoder: `y = x·Wᵀ + b` for a few to a few thousand
//! rows. Weights are packed once at load into panels of 48 output columns (`[k][48]`
//! contiguous), so a kernel streams each weight exactly once per block of rows and never
//! re-packs. The float32 kernel is chosen at runtime by the detected [`Isa`]: AVX-512,
//! AVX2+FMA (in `x86`), or portable Rust; all three compute the same thing and are tested
//! against each other. The optional bfloat16 path is in `bf16`.

mod bf16;
mod int8;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use super::isa::{Int8Isa, Int8Kind, Isa, IsaKind, bf16_supported};
pub use bf16::to_bf16;
pub use int8::PANEL_I8;

use super::team::Team;
use bf16::{bf16_pairs, tile_bf16};
use int8::{Int8Weights, quantize_rows};

/// Output columns per packed panel.
pub const PANEL: usize = 48;
/// Values of k per block of a panel in the f32 kernels: 128 × 48 floats is 24 KB, which
/// stays in a 32 KB L1 cache while every row tile passes over it.
const K_BLOCK: usize = 128;
/// Multiply-accumulates a thread must have for a layer to be split further (a part handed
/// to a helper through `Team` costs about a microsecond; a part this size takes ~15).
const PART_MIN_MACS: usize = 1 << 18;

enum Packed {
    /// `panels × k × PANEL` floats; columns past `n` are zero.
    F32(Vec<f32>),
    /// `panels × k/2 × PANEL × 2` bf16 values (k padded to even).
    Bf16(Vec<u16>),
    /// Panels of `PANEL_I8` columns, see `int8`.
    Int8(Int8Weights),
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

    /// The int8 kernel, for int8 layers.
    pub fn int8_isa(&self) -> Option<Int8Isa> {
        match &self.packed {
            Packed::Int8(w) => Some(w.isa()),
            _ => None,
        }
    }

    /// Bytes the packed weights take.
    pub fn weight_bytes(&self) -> usize {
        match &self.packed {
            Packed::F32(w) => 4 * w.len(),
            Packed::Bf16(w) => 2 * w.len(),
            Packed::Int8(w) => w.bytes(),
        }
    }

    /// Output columns per panel of this layer's packing.
    fn panel_width(&self) -> usize {
        match self.packed {
            Packed::Int8(_) => PANEL_I8,
            _ => PANEL,
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `y[m][n] = epilogue(x[m][k]·Wᵀ + b)`. Panics never: mismatched lengths leave `y`
    /// untouched and return false. With a `team`, a large enough layer is split by output
    /// columns among as many of its threads as have enough work each; every output is
    /// computed the same way whatever the split, so results do not depend on it.
    pub fn forward(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        team: Option<&Team>,
        epilogue: Option<fn(&mut [f32])>,
    ) -> bool {
        if x.len() != m * self.k || y.len() != m * self.n {
            return false;
        }
        // The bf16 and int8 kernels take the rows converted, once, here.
        let (pairs, quantized) = match self.packed {
            Packed::Bf16(_) => (bf16_pairs(x, m, self.k), None),
            Packed::Int8(_) => (Vec::new(), Some(quantize_rows(x, m, self.k))),
            Packed::F32(_) => (Vec::new(), None),
        };
        let input = match (&self.packed, &quantized) {
            (Packed::Bf16(_), _) => Input::Bf16(&pairs),
            (Packed::Int8(_), Some(rows)) => Input::Int8(rows),
            _ => Input::F32(x),
        };
        let panels = self.n.div_ceil(self.panel_width());
        let parts = team.map_or(1, |team| {
            let by_work = (m * self.n * self.k / PART_MIN_MACS).max(1);
            team.threads().min(panels).min(by_work)
        });
        let out = SharedOut(y.as_mut_ptr());
        let part = |i: usize| {
            let range = panels * i / parts..panels * (i + 1) / parts;
            self.panels(isa, input, m, range, &out, epilogue);
        };
        match team {
            Some(team) if parts > 1 => team.run(parts, &part),
            _ => part(0),
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
        epilogue: Option<fn(&mut [f32])>,
    ) {
        if let (Packed::Int8(w), Input::Int8(rows)) = (&self.packed, x) {
            self.panels_int8(w, rows, panels, out, epilogue);
            return;
        }
        match (&self.packed, x) {
            (Packed::F32(packed), Input::F32(x)) => {
                self.panels_f32(isa, packed, x, m, panels, out, epilogue)
            }
            (Packed::Bf16(packed), Input::Bf16(x)) => {
                self.panels_bf16(packed, x, m, panels, out, epilogue)
            }
            // `forward` pairs the input with the packing; nothing else is reachable.
            _ => {}
        }
    }

    /// The f32 columns of `panels`, blocked along k: each block of `K_BLOCK` weights of a
    /// panel (24 KB) stays in L1 while every row tile passes over it, the partial sums
    /// kept in `partial`. The sums are added in the same order as without blocks (stored
    /// and reloaded exactly), so the result does not depend on the blocking.
    #[allow(clippy::too_many_arguments)]
    fn panels_f32(
        &self,
        isa: Isa,
        packed: &[f32],
        x: &[f32],
        m: usize,
        panels: std::ops::Range<usize>,
        out: &SharedOut,
        epilogue: Option<fn(&mut [f32])>,
    ) {
        let rows_per_tile = match isa.kind() {
            IsaKind::Avx512 | IsaKind::Portable => 8,
            IsaKind::Avx2 => 4,
        };
        let k = self.k;
        let mut partial = vec![0.0f32; m * PANEL];
        for p in panels {
            let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
            partial
                .chunks_exact_mut(PANEL)
                .for_each(|row| row.copy_from_slice(bias));
            let panel = &packed[p * k * PANEL..(p + 1) * k * PANEL];
            for k0 in (0..k).step_by(K_BLOCK) {
                let kc = K_BLOCK.min(k - k0);
                let block = &panel[k0 * PANEL..(k0 + kc) * PANEL];
                let mut r0 = 0;
                while r0 < m {
                    let mr = rows_per_tile.min(m - r0);
                    let rows = &x[r0 * k + k0..(r0 + mr - 1) * k + k0 + kc];
                    let tile = &mut partial[r0 * PANEL..(r0 + mr) * PANEL];
                    tile_dispatch(isa, rows, k, mr, kc, block, tile);
                    r0 += mr;
                }
            }
            if let Some(f) = epilogue {
                f(&mut partial);
            }
            self.copy_out(&partial, m, p, out);
        }
    }

    /// Copies the `m` rows of panel `p`'s columns from `tile` (rows of `PANEL`) into `out`.
    fn copy_out(&self, tile: &[f32], m: usize, p: usize, out: &SharedOut) {
        let col0 = p * PANEL;
        let width = PANEL.min(self.n - col0);
        for (r, src) in tile.chunks_exact(PANEL).take(m).enumerate() {
            // SAFETY: each call owns a disjoint set of panels, hence of columns
            // [col0, col0 + width) of every row; `forward` checked y's length.
            unsafe {
                let dst = out.0.add(r * self.n + col0);
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst, width);
            }
        }
    }

    /// The bf16 columns of `panels` (AVX512_BF16 CPUs only).
    fn panels_bf16(
        &self,
        packed: &[u16],
        x: &[u32],
        m: usize,
        panels: std::ops::Range<usize>,
        out: &SharedOut,
        epilogue: Option<fn(&mut [f32])>,
    ) {
        let pairs = self.k.div_ceil(2);
        let mut partial = vec![0.0f32; m * PANEL];
        let mut tile = [0.0f32; 8 * PANEL];
        for p in panels {
            let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
            let panel = &packed[p * pairs * PANEL * 2..(p + 1) * pairs * PANEL * 2];
            let mut r0 = 0;
            while r0 < m {
                let mr = 8.min(m - r0);
                let rows = &x[r0 * pairs..(r0 + mr) * pairs];
                tile_bf16(rows, mr, pairs, panel, bias, &mut tile);
                partial[r0 * PANEL..(r0 + mr) * PANEL].copy_from_slice(&tile[..mr * PANEL]);
                r0 += mr;
            }
            if let Some(f) = epilogue {
                f(&mut partial);
            }
            self.copy_out(&partial, m, p, out);
        }
    }
}

/// A layer's input, in the form its kernel takes.
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    /// Each row as k/2 bf16 pairs, the first element in the low half.
    Bf16(&'a [u32]),
    /// Each row quantized to int8.
    Int8(&'a int8::QuantizedRows),
}

/// The output buffer, shared by the two halves of a split layer (they write disjoint columns).
struct SharedOut(*mut f32);
// SAFETY: see `Linear::panels`: concurrent writers never touch the same element.
unsafe impl Sync for SharedOut {}

/// Adds `Σ_k rows[r][k] · panel[k][0..48]` over `kc` values of k to `tile[r][0..48]` for `mr`
/// rows; row r starts at `rows[r * stride]`.
fn tile_dispatch(
    isa: Isa,
    rows: &[f32],
    stride: usize,
    mr: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    debug_assert!(rows.len() > (mr - 1) * stride + kc - 1 && panel.len() >= kc * PANEL);
    debug_assert!(tile.len() >= mr * PANEL);
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind AVX-512 is only minted by detection, after checking
        // avx512f, the one extension `tile_avx512` enables.
        IsaKind::Avx512 => unsafe { x86::tile_avx512(rows, stride, mr, kc, panel, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        IsaKind::Avx2 => unsafe { x86::tile_avx2(rows, stride, mr, kc, panel, tile) },
        _ => tile_portable(rows, stride, mr, kc, panel, tile),
    }
}

fn tile_portable(
    rows: &[f32],
    stride: usize,
    mr: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    for r in 0..mr {
        let acc = &mut tile[r * PANEL..(r + 1) * PANEL];
        let row = &rows[r * stride..r * stride + kc];
        for (kk, &a) in row.iter().enumerate() {
            let w = &panel[kk * PANEL..(kk + 1) * PANEL];
            for (o, &wv) in acc.iter_mut().zip(w) {
                *o += a * wv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y = x·Wᵀ + b` computed in f64, the slow obvious way.
    pub(super) fn reference(
        w: &[f32],
        b: &[f32],
        x: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
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

    pub(super) fn data(len: usize, seed: u32) -> Vec<f32> {
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
            (5, 60, 300),
            (70, 1536, 384),
        ] {
            let w = data(n * k, 1);
            let b = data(n, 2);
            let x = data(m * k, 3);
            let expected = reference(&w, &b, &x, m, n, k);
            let layer = Linear::new(&w, &b, n, k).unwrap();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                let team = Team::new(m % 4);
                assert!(layer.forward(isa, &x, m, &mut y, team.as_ref(), None));
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
    fn mismatched_shapes_are_refused_not_panicked() {
        assert!(Linear::new(&[1.0; 6], &[0.0; 2], 3, 2).is_none());
        let layer = Linear::new(&[1.0; 6], &[0.0; 3], 3, 2).unwrap();
        let mut y = vec![0.0; 3];
        assert!(!layer.forward(Isa::portable(), &[1.0; 3], 1, &mut y, None, None));
    }
}
