//! The element types the kernels are instantiated for, and the one rounding rule they share.
//!
//! Kernels compute in f32 and round to the storage type only where HF transformers rounds (a
//! value stored in a bf16 tensor). Rounding is to nearest, ties to even, both here (`half`) and
//! on the GPU (`__float2bfloat16_rn`, `__float2half_rn`), so a CPU reference and a kernel agree on
//! every rounding step and differ only by f32 summation order.

use std::fmt::Debug;

use half::{bf16, f16};

mod sealed {
    /// Only the three types kernels/*.cu instantiates may be used.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// An element type with a kernel instantiation: `rms_norm_f32`, `rms_norm_bf16`, `rms_norm_f16`.
pub trait KernelDType: sealed::Sealed + Copy + Default + Debug + PartialEq + Send + Sync + 'static {
    /// Suffix of the kernel's `extern "C"` name.
    const SUFFIX: &'static str;
    /// Position in [`SUFFIXES`] (and in per-dtype function tables).
    const INDEX: usize;
    fn to_f32(self) -> f32;
    /// Round to nearest, ties to even.
    fn from_f32(v: f32) -> Self;
}

/// Every instantiated suffix, in [`KernelDType::INDEX`] order.
pub const SUFFIXES: [&str; 3] = [f32::SUFFIX, bf16::SUFFIX, f16::SUFFIX];

impl KernelDType for f32 {
    const SUFFIX: &'static str = "f32";
    const INDEX: usize = 0;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl KernelDType for bf16 {
    const SUFFIX: &'static str = "bf16";
    const INDEX: usize = 1;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl KernelDType for f16 {
    const SUFFIX: &'static str = "f16";
    const INDEX: usize = 2;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// The f32 value a kernel keeps after storing `v` as `T` (identity for f32).
pub fn round<T: KernelDType>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// `v` converted element by element (rounded when `T` is narrower).
pub fn convert<T: KernelDType>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// `v` widened to f32.
pub fn widen<T: KernelDType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to nearest even on f32 bits, written out independently of `half`: the rule CUDA's
    /// `__float2bfloat16_rn` documents.
    fn bf16_rne(v: f32) -> f32 {
        let b = v.to_bits();
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
        f32::from_bits(rounded)
    }

    /// xorshift64*: deterministic bit patterns without a dependency.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn bf16_rounding_is_round_to_nearest_even() {
        let mut s = 7u64;
        for _ in 0..200_000 {
            let v = f32::from_bits((next(&mut s) >> 32) as u32);
            if v.is_finite() && bf16_rne(v).is_finite() {
                assert_eq!(round::<bf16>(v).to_bits(), bf16_rne(v).to_bits(), "{v:e}");
            }
        }
        // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to the even one (1);
        // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(round::<bf16>(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(round::<bf16>(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round::<bf16>(-(1.0 + 3.0 * 2f32.powi(-8))), -(1.0 + 2f32.powi(-6)));
        assert_eq!(round::<bf16>(f32::MAX), f32::INFINITY, "overflow rounds up to inf");
    }

    #[test]
    fn f16_rounding_is_round_to_nearest_even_with_subnormals() {
        // Ties around 1 (f16 keeps 10 mantissa bits): 1 + 2^-11 → 1, 1 + 3·2^-11 → 1 + 2^-9.
        assert_eq!(round::<f16>(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(round::<f16>(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9));
        assert_eq!(round::<f16>(65504.0), 65504.0, "largest finite f16");
        assert_eq!(round::<f16>(65519.0), 65504.0, "below the midpoint to the next binade");
        assert_eq!(round::<f16>(65520.0), f32::INFINITY, "the midpoint ties away to inf (even)");
        // Subnormals: the smallest is 2^-24; half of it is a tie and goes to 0 (even).
        assert_eq!(round::<f16>(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(round::<f16>(2f32.powi(-25)), 0.0);
        assert_eq!(round::<f16>(3.0 * 2f32.powi(-25)), 2.0 * 2f32.powi(-24));
        assert_eq!(round::<f32>(0.1), 0.1);
    }

    #[test]
    fn suffixes_follow_the_index() {
        assert_eq!(SUFFIXES[f32::INDEX], "f32");
        assert_eq!(SUFFIXES[bf16::INDEX], "bf16");
        assert_eq!(SUFFIXES[f16::INDEX], "f16");
    }
}
