//! bf16 and f16 weights kept 16-bit, against f32 activations with f32 (or exact f64)
//! accumulation: half the bytes a decode streams from an HF checkpoint loaded at f32, and no
//! rounding of activations. In the block framework a "block" is 32 consecutive weights.
//!
//! Each product w·x is exact in f64 (8 or 11 significant bits times 24), so the f64 path sums
//! exact terms in order, as the 8-bit formats' exact path does.

use half::{bf16, f16};

pub const BLOCK: usize = 32;

/// 32 consecutive f32 activations (taken as they are).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockF32(pub [f32; BLOCK]);

impl BlockF32 {
    pub const ZERO: BlockF32 = BlockF32([0.0; BLOCK]);
}

/// Copies activations into blocks.
pub fn to_blocks(x: &[f32], out: &mut [BlockF32]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
        b.0.copy_from_slice(xs);
    }
}

/// A 16-bit weight type.
pub trait Half16: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Half16 for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Half16 for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Rounds f32 weights to 16 bits (for tests and in-memory matrices).
pub fn encode<H: Half16>(w: &[f32], out: &mut [[H; BLOCK]]) {
    for (ws, b) in w.chunks_exact(BLOCK).zip(out) {
        for (o, &v) in b.iter_mut().zip(ws) {
            *o = H::from_f32(v);
        }
    }
}

pub fn decode<H: Half16>(w: &[[H; BLOCK]], out: &mut [f32]) {
    for (b, o) in w.iter().zip(out.chunks_exact_mut(BLOCK)) {
        for (v, &h) in o.iter_mut().zip(b) {
            *v = h.to_f32();
        }
    }
}

/// w · x in f64, portable: every product exact, summed in order.
pub fn dot_exact<H: Half16>(w: &[[H; BLOCK]], x: &[BlockF32]) -> f64 {
    let mut sum = 0.0f64;
    for (bw, bx) in w.iter().zip(x) {
        for (h, &v) in bw.iter().zip(&bx.0) {
            sum += h.to_f32() as f64 * v as f64;
        }
    }
    sum
}

/// w · x in f32, portable, in the lane order of the AVX2 kernel: four accumulators of 8 lanes
/// (one per 8-weight group of a block, so that FMA latency does not serialize a row), added
/// pairwise, then the 8 lanes summed.
pub fn dot<H: Half16>(w: &[[H; BLOCK]], x: &[BlockF32]) -> f32 {
    let mut acc = [[0.0f32; 8]; 4];
    for (bw, bx) in w.iter().zip(x) {
        for (i, (h, &v)) in bw.iter().zip(&bx.0).enumerate() {
            acc[i / 8][i % 8] = h.to_f32().mul_add(v, acc[i / 8][i % 8]);
        }
    }
    let lanes: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    // As `simd::avx2::hsum`: halves, then pairs, then the last two.
    let s: [f32; 4] = std::array::from_fn(|i| lanes[i] + lanes[i + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Activation rows one weight row is multiplied with at once (4 accumulators each).
pub const TILE: usize = 2;

/// out[r] = w · xs[r] in f32 for up to [`TILE`] rows with AVX2: each 8 weights convert once
/// (bf16: widen and shift; f16: F16C) for every row. Lane for lane as [`dot`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_avx2<H: Widen>(w: &[[H; BLOCK]], xs: &[&[BlockF32]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    macro_rules! tile {
        ($r:literal) => {{
            let mut acc = [[_mm256_setzero_ps(); 4]; $r];
            for (b, bw) in w.iter().enumerate() {
                for q in 0..BLOCK / 8 {
                    let wv = H::widen(bw.as_ptr().add(8 * q));
                    for r in 0..$r {
                        let xv = _mm256_loadu_ps(xs[r][b].0.as_ptr().add(8 * q));
                        acc[r][q] = _mm256_fmadd_ps(wv, xv, acc[r][q]);
                    }
                }
            }
            for r in 0..$r {
                let [a0, a1, a2, a3] = acc[r];
                out[r] = crate::simd::avx2::hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            }
        }};
    }
    match xs.len() {
        1 => tile!(1),
        _ => tile!(2),
    }
}

/// [`dot_rows_avx2`] in f64: products exact, summed in 4 f64 lanes (within 1e-12 relative of
/// [`dot_exact`], and the same whatever the batch).
///
/// # Safety
/// As [`dot_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_exact_avx2<H: Widen>(w: &[[H; BLOCK]], xs: &[&[BlockF32]], out: &mut [f64]) {
    use std::arch::x86_64::*;
    for (r, x) in xs.iter().enumerate() {
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for (bw, bx) in w.iter().zip(x.iter()) {
            for q in 0..BLOCK / 8 {
                let wv = H::widen(bw.as_ptr().add(8 * q));
                let xv = _mm256_loadu_ps(bx.0.as_ptr().add(8 * q));
                let (w0, w1) =
                    (_mm256_cvtps_pd(_mm256_castps256_ps128(wv)), _mm256_cvtps_pd(_mm256_extractf128_ps(wv, 1)));
                let (x0, x1) =
                    (_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)));
                lo = _mm256_fmadd_pd(w0, x0, lo);
                hi = _mm256_fmadd_pd(w1, x1, hi);
            }
        }
        out[r] = crate::simd::avx2::hsum_pd(_mm256_add_pd(lo, hi));
    }
}

/// A 16-bit type AVX2 widens to f32, 8 at a time.
pub trait Widen: Half16 {
    /// # Safety
    /// AVX2 and F16C; 8 values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn widen(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Widen for bf16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn widen(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32.
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())), 16))
    }
}

impl Widen for f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn widen(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_values as values;

    fn check<H: Widen>() {
        for blocks in [1, 3, 18] {
            let k = blocks * BLOCK;
            let mut w = vec![[H::from_f32(0.0); BLOCK]; blocks];
            encode(&values(k, 5), &mut w);
            let xs: Vec<Vec<BlockF32>> = (0..TILE as u32)
                .map(|r| {
                    let mut b = vec![BlockF32::ZERO; blocks];
                    to_blocks(&values(k, 9 + r), &mut b);
                    b
                })
                .collect();
            let mut deq = vec![0.0; k];
            decode(&w, &mut deq);
            for x in &xs {
                let flat: Vec<f32> = x.iter().flat_map(|b| b.0).collect();
                let want: f64 = deq.iter().zip(&flat).map(|(&a, &b)| a as f64 * b as f64).sum();
                assert!((dot_exact(&w, x) - want).abs() <= 1e-9, "{blocks} blocks");
                assert!((dot(&w, x) as f64 - want).abs() <= 1e-4, "{blocks} blocks");
            }
            #[cfg(target_arch = "x86_64")]
            if crate::simd::has_avx2_fma_f16c() {
                for rows in 1..=TILE {
                    let tile: Vec<&[BlockF32]> = xs[..rows].iter().map(Vec::as_slice).collect();
                    let mut out = vec![f32::NAN; rows];
                    // SAFETY: features checked.
                    unsafe { dot_rows_avx2(&w, &tile, &mut out) };
                    let mut exact = vec![f64::NAN; rows];
                    // SAFETY: as above.
                    unsafe { dot_rows_exact_avx2(&w, &tile, &mut exact) };
                    for (r, (o, e)) in out.iter().zip(&exact).enumerate() {
                        assert_eq!(*o, dot(&w, &xs[r]), "{blocks} blocks, {rows} rows: AVX2 vs portable");
                        let want = dot_exact(&w, &xs[r]);
                        assert!((e - want).abs() <= 1e-12 * want.abs().max(1.0), "{blocks} blocks: {e} vs {want}");
                    }
                }
            } else {
                eprintln!("SKIP: this CPU has no AVX2+FMA+F16C");
            }
        }
    }

    #[test]
    fn bf16_and_f16_dots_match_the_dequantized_sum_and_the_avx2_kernel_the_portable_one() {
        check::<bf16>();
        check::<f16>();
    }
}
