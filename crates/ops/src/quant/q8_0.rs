//! GGUF's Q8_0 weights (the default model's embeddings and tied LM head) against Q8_0
//! activations. candle's dot converts each block's f16 scales through a library call, which
//! costs as much as the arithmetic at these sizes, so this one converts in registers and
//! shares each weight block between several activation rows.
//!
//! Q8_0 block (34 bytes, 32 values): scale d (f16), then 32 signed bytes; v = d·q.

use half::f16;

pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; BLOCK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    pub const ZERO: BlockQ8_0 = BlockQ8_0 { d: f16::ZERO, qs: [0; BLOCK] };
}

/// Quantizes `x` (a multiple of 32 long), as ggml's quantize_row_q8_0.
pub fn quantize(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
        let (d, _) = crate::quant::quantize_block_8bit(xs, &mut b.qs);
        b.d = f16::from_f32(d);
    }
}

pub fn dequantize(w: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in w.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = b.d.to_f32();
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = d * q as f32;
        }
    }
}

/// Σ over blocks of w·x, portable; each block's term is exact in f64, the sum kept in f64.
pub fn dot_portable(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(bw, bx)| {
            let acc: i32 = bw.qs.iter().zip(&bx.qs).map(|(&a, &b)| a as i32 * b as i32).sum();
            (bw.d.to_f32() * bx.d.to_f32()) as f64 * acc as f64
        })
        .sum()
}

/// Activation rows one weight row is multiplied with at once.
pub const TILE: usize = 4;

/// out[r] = w · x_r for up to [`TILE`] rows with AVX2. maddubs multiplies unsigned by signed
/// bytes, so each product is taken as |w|·(x with w's sign), as ggml does; block sums join f32
/// accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `xs.len()` ≤ TILE = `out.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_avx2(w: &[BlockQ8_0], xs: &[&[BlockQ8_0]], out: &mut [f32]) {
    crate::quant::dispatch_tile!(dot_tile_avx2, w, xs, out)
}

/// [`dot_rows_avx2`] with f64 accumulators, in which every block's term is exact.
///
/// # Safety
/// As [`dot_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_exact_avx2(w: &[BlockQ8_0], xs: &[&[BlockQ8_0]], out: &mut [f64]) {
    crate::quant::dispatch_tile!(dot_tile_exact_avx2, w, xs, out)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BlockQ8_0;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn scale(b: &BlockQ8_0) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(b.d.to_bits() as i32))
    }

    /// (|w|, w) of a block, for the sign trick.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn load(b: &BlockQ8_0) -> (__m256i, __m256i) {
        // SAFETY: qs is 32 bytes.
        let q = unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) };
        (_mm256_sign_epi8(q, q), q)
    }

    /// Σ q_w·q_x over one block, as 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn products((abs_q, q): (__m256i, __m256i), bx: &BlockQ8_0) -> __m256i {
        // SAFETY: qs is 32 bytes.
        let y = _mm256_sign_epi8(unsafe { _mm256_loadu_si256(bx.qs.as_ptr().cast()) }, q);
        _mm256_madd_epi16(_mm256_maddubs_epi16(abs_q, y), _mm256_set1_epi16(1))
    }

    /// d_w·d_x (exact in f32) in 8 f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn scales_ps(dw: __m128, bx: &BlockQ8_0) -> __m256 {
        _mm256_broadcastss_ps(_mm_mul_ss(dw, scale(bx)))
    }

    /// d_w·d_x (exact in f32) in 4 f64 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn scales(dw: __m128, bx: &BlockQ8_0) -> __m256d {
        _mm256_broadcastsd_pd(_mm_cvtps_pd(_mm_mul_ss(dw, scale(bx))))
    }
}

/// R activation rows sharing each weight block; blocks in pairs summed before joining the
/// row's accumulator (half the chain of dependent adds), the same steps for every R.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tile_avx2<const R: usize>(w: &[BlockQ8_0], xs: &[&[BlockQ8_0]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let xs: &[&[BlockQ8_0]; R] = xs.try_into().expect("R rows");
    let mut acc = [_mm256_setzero_ps(); R];
    for p in 0..w.len() / 2 {
        let (b0, b1) = (2 * p, 2 * p + 1);
        let (q0, q1) = (avx2::load(&w[b0]), avx2::load(&w[b1]));
        let (d0, d1) = (avx2::scale(&w[b0]), avx2::scale(&w[b1]));
        for r in 0..R {
            let p1 = _mm256_cvtepi32_ps(avx2::products(q1, &xs[r][b1]));
            let p0 = _mm256_cvtepi32_ps(avx2::products(q0, &xs[r][b0]));
            let t1 = _mm256_mul_ps(avx2::scales_ps(d1, &xs[r][b1]), p1);
            acc[r] = _mm256_add_ps(acc[r], _mm256_fmadd_ps(avx2::scales_ps(d0, &xs[r][b0]), p0, t1));
        }
    }
    if w.len() % 2 == 1 {
        let b = w.len() - 1;
        let (q, d) = (avx2::load(&w[b]), avx2::scale(&w[b]));
        for r in 0..R {
            let p = _mm256_cvtepi32_ps(avx2::products(q, &xs[r][b]));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(avx2::scales_ps(d, &xs[r][b]), p));
        }
    }
    for r in 0..R {
        // SAFETY: this function's features include hsum's.
        out[r] = unsafe { crate::simd::avx2::hsum(acc[r]) };
    }
}

/// [`dot_tile_avx2`] in f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tile_exact_avx2<const R: usize>(w: &[BlockQ8_0], xs: &[&[BlockQ8_0]], out: &mut [f64]) {
    use crate::simd::avx2::i32x8_to_f64x4;
    use std::arch::x86_64::*;
    let xs: &[&[BlockQ8_0]; R] = xs.try_into().expect("R rows");
    let mut acc = [_mm256_setzero_pd(); R];
    for p in 0..w.len() / 2 {
        let (b0, b1) = (2 * p, 2 * p + 1);
        let (q0, q1) = (avx2::load(&w[b0]), avx2::load(&w[b1]));
        let (d0, d1) = (avx2::scale(&w[b0]), avx2::scale(&w[b1]));
        for r in 0..R {
            let t1 = _mm256_mul_pd(avx2::scales(d1, &xs[r][b1]), i32x8_to_f64x4(avx2::products(q1, &xs[r][b1])));
            let t = _mm256_fmadd_pd(avx2::scales(d0, &xs[r][b0]), i32x8_to_f64x4(avx2::products(q0, &xs[r][b0])), t1);
            acc[r] = _mm256_add_pd(acc[r], t);
        }
    }
    if w.len() % 2 == 1 {
        let b = w.len() - 1;
        let (q, d) = (avx2::load(&w[b]), avx2::scale(&w[b]));
        for r in 0..R {
            acc[r] = _mm256_add_pd(
                acc[r],
                _mm256_mul_pd(avx2::scales(d, &xs[r][b]), i32x8_to_f64x4(avx2::products(q, &xs[r][b]))),
            );
        }
    }
    for r in 0..R {
        out[r] = crate::simd::avx2::hsum_pd(acc[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx2_dots_match_the_portable_one() {
        if !crate::simd::has_avx2_fma_f16c() {
            eprintln!("SKIP: this CPU has no AVX2+FMA+F16C");
            return;
        }
        for blocks in [1, 3, 18, 48] {
            let n = blocks * BLOCK;
            // -128 cannot come out of quantizing, but a file may hold it: include it.
            let w: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02).collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.03).collect();
            let (mut qw, mut qx) = (vec![BlockQ8_0::ZERO; blocks], vec![BlockQ8_0::ZERO; blocks]);
            quantize(&w, &mut qw);
            quantize(&x, &mut qx);
            qw[0].qs[3] = -128;
            let want = dot_portable(&qw, &qx);
            for rows in 1..=TILE {
                let xs = vec![qx.as_slice(); rows];
                let (mut exact, mut fast) = (vec![f64::NAN; rows], vec![f32::NAN; rows]);
                // SAFETY: features checked above; rows ≤ TILE.
                unsafe { dot_rows_exact_avx2(&qw, &xs, &mut exact) };
                // SAFETY: as above.
                unsafe { dot_rows_avx2(&qw, &xs, &mut fast) };
                for (e, f) in exact.into_iter().zip(fast) {
                    assert!(
                        (e - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "{blocks} blocks, {rows} rows: {e} vs {want}"
                    );
                    let f = f as f64;
                    assert!(
                        (f - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{blocks} blocks, {rows} rows: {f} vs {want}"
                    );
                }
            }
        }
    }
}
