//! The instruction set a kernel may use, detected once from the CPU: the unforgeable [`Isa`]
//! token that the f32 kernels are chosen by, and whether the bfloat16 kernel can run.

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
    }
}
