//! The instruction set a kernel may use, detected once from the CPU: the unforgeable [`Isa`]
//! token that the f32 kernels are chosen by, its int8 counterpart, and whether the bfloat16
//! kernel can run.

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
/// use semroute::kernels::isa::{Isa, IsaKind};
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

/// The integer (int8) kernel families, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kind {
    /// AVX512-VNNI: `vpdpwssd` on 512-bit registers, multiply and add in one instruction.
    Avx512Vnni,
    /// AVX-VNNI: `vpdpwssd` on 256-bit registers.
    AvxVnni,
    /// AVX2: `vpmaddwd`, then an add.
    Avx2,
    /// Plain Rust, any CPU (slow: for reference and tests).
    Portable,
}

/// The int8 kernel a layer uses: like [`Isa`], only detection mints the SIMD kinds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Int8Isa(Int8Kind);

impl std::fmt::Debug for Int8Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl Int8Isa {
    /// The best int8 kernel this CPU runs, or `None` where only the portable one would
    /// (then int8 is no faster than float32, and the encoder falls back to it).
    pub fn detect() -> Option<Int8Isa> {
        Int8Isa::available()
            .into_iter()
            .find(|isa| isa.0 != Int8Kind::Portable)
    }

    pub const fn portable() -> Int8Isa {
        Int8Isa(Int8Kind::Portable)
    }

    pub fn kind(self) -> Int8Kind {
        self.0
    }

    /// Every int8 kernel this CPU can run, best first (the portable one always). Each is
    /// checked for every extension its `#[target_feature]` enables.
    pub fn available() -> Vec<Int8Isa> {
        let mut isas = Vec::with_capacity(4);
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                isas.push(Int8Isa(Int8Kind::Avx512Vnni));
            }
            if avx2 && is_x86_feature_detected!("avxvnni") {
                isas.push(Int8Isa(Int8Kind::AvxVnni));
            }
            if avx2 {
                isas.push(Int8Isa(Int8Kind::Avx2));
            }
        }
        isas.push(Int8Isa::portable());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_always_offers_the_portable_kernel() {
        assert_eq!(Isa::available().last(), Some(&Isa::portable()));
        assert_eq!(Int8Isa::available().last(), Some(&Int8Isa::portable()));
        assert_ne!(Int8Isa::detect(), Some(Int8Isa::portable()));
    }
}
