//! GGUF's Q4_1 weights (the default model's format) against Q8_1 activations, as llama.cpp
//! pairs them. candle's Q4_1 dot product is scalar only, so this one has its own AVX2 kernel
//! beside the portable one (which is also its reference for bit-level agreement).
//!
//! Q4_1 block (20 bytes, 32 weights): scale d and minimum m (f16), then 16 bytes of nibbles:
//! byte j holds weight j (low nibble) and weight j + 16 (high nibble); w = d·q + m.
//! Q8_1 block (36 bytes, 32 activations): scale d, s = d·Σq (f16), 32 signed bytes; x ≈ d·q.
//! So one block's dot is d_w·d_x·Σ q_w·q_x + m_w·s.

use half::f16;

pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; BLOCK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; BLOCK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl BlockQ8_1 {
    pub const ZERO: BlockQ8_1 = BlockQ8_1 { d: f16::ZERO, s: f16::ZERO, qs: [0; BLOCK] };
}

/// Quantizes activations `x` (a multiple of 32 long) into `out`, as ggml's quantize_row_q8_1.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
        let (d, sum) = crate::quant::quantize_block_8bit(xs, &mut b.qs);
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
}

/// Quantizes weights `w` (a multiple of 32 long) to Q4_1, as ggml's quantize_row_q4_1.
pub fn quantize_q4_1(w: &[f32], out: &mut [BlockQ4_1]) {
    for (ws, b) in w.chunks_exact(BLOCK).zip(out) {
        let (min, max) = ws.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        for j in 0..BLOCK / 2 {
            let lo = (((ws[j] - min) * id + 0.5) as u8).min(15);
            let hi = (((ws[j + BLOCK / 2] - min) * id + 0.5) as u8).min(15);
            b.qs[j] = lo | (hi << 4);
        }
    }
}

pub fn dequantize_q4_1(w: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in w.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..BLOCK / 2 {
            o[j] = d * (b.qs[j] & 0x0F) as f32 + m;
            o[j + BLOCK / 2] = d * (b.qs[j] >> 4) as f32 + m;
        }
    }
}

/// Σ over blocks of w·x, portable. Each block's term is exact in f64 (f16 scales, integer
/// dot), and the sum is kept in f64: see the module `quant` on why. (Also the reference the
/// f32 kernels are checked against.)
pub fn dot_portable(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f64 {
    let mut sum = 0.0f64;
    for (bw, bx) in w.iter().zip(x) {
        let mut acc = 0i32;
        for j in 0..BLOCK / 2 {
            acc += (bw.qs[j] & 0x0F) as i32 * bx.qs[j] as i32;
            acc += (bw.qs[j] >> 4) as i32 * bx.qs[j + BLOCK / 2] as i32;
        }
        sum += (bw.d.to_f32() * bx.d.to_f32()) as f64 * acc as f64 + (bw.m.to_f32() * bx.s.to_f32()) as f64;
    }
    sum
}

/// Activation rows one weight row is multiplied with at once.
pub const TILE: usize = 4;

/// out[r] = w · x_r for up to [`TILE`] activation rows with AVX2: each weight block's nibbles
/// are unpacked once for all rows; each row takes 32 products in two instructions (maddubs,
/// madd), and the block's integer sum times its scales joins an f32 accumulator. Scales
/// convert with F16C in registers.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `xs.len()` ≤ TILE = `out.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_avx2(w: &[BlockQ4_1], xs: &[&[BlockQ8_1]], out: &mut [f32]) {
    crate::quant::dispatch_tile!(dot_tile_avx2, w, xs, out)
}

/// [`dot_rows_avx2`] with f64 accumulators, in which every block's term is exact (about twice
/// the instructions per block).
///
/// # Safety
/// As [`dot_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_exact_avx2(w: &[BlockQ4_1], xs: &[&[BlockQ8_1]], out: &mut [f64]) {
    crate::quant::dispatch_tile!(dot_tile_exact_avx2, w, xs, out)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_1};

    /// A block's 32 weights as bytes 0..15: low nibbles are weights 0..16, high nibbles
    /// 16..32, the halves of one 256-bit vector.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn unpack(bw: &BlockQ4_1) -> __m256i {
        // SAFETY: qs is 16 bytes.
        let packed = unsafe { _mm_loadu_si128(bw.qs.as_ptr().cast()) };
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F))
    }

    /// The two f16 at the start of a block, as f32 lanes 0 and 1 ((d, m) or (d, s)).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn scales<T>(block: &T) -> __m128 {
        // SAFETY: both block types start with two f16.
        let bits = unsafe { std::ptr::read_unaligned((block as *const T).cast::<i32>()) };
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
    }

    /// Σ q_w·q_x over one block, as 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn products(q: __m256i, bx: &BlockQ8_1) -> __m256i {
        // SAFETY: qs is 32 bytes.
        let y = unsafe { _mm256_loadu_si256(bx.qs.as_ptr().cast()) };
        _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
    }
}

/// R activation rows sharing each unpacked weight block. Blocks go in pairs whose two terms
/// are summed before joining the row's accumulator, which halves the chain of dependent adds;
/// every row takes the same steps whatever R, so results do not depend on the batch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tile_avx2<const R: usize>(w: &[BlockQ4_1], xs: &[&[BlockQ8_1]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let xs: &[&[BlockQ8_1]; R] = xs.try_into().expect("R rows");
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 1 accumulates m_w·s_x.
    let mut mins = [_mm_setzero_ps(); R];
    let pairs = w.len() / 2;
    for p in 0..pairs {
        let (b0, b1) = (2 * p, 2 * p + 1);
        let (q0, q1) = (avx2::unpack(&w[b0]), avx2::unpack(&w[b1]));
        let (dm0, dm1) = (avx2::scales(&w[b0]), avx2::scales(&w[b1]));
        for r in 0..R {
            // (d_w·d_x, m_w·s_x) of each block.
            let s0 = _mm_mul_ps(dm0, avx2::scales(&xs[r][b0]));
            let s1 = _mm_mul_ps(dm1, avx2::scales(&xs[r][b1]));
            let p1 = _mm256_cvtepi32_ps(avx2::products(q1, &xs[r][b1]));
            let p0 = _mm256_cvtepi32_ps(avx2::products(q0, &xs[r][b0]));
            let t = _mm256_fmadd_ps(_mm256_broadcastss_ps(s0), p0, _mm256_mul_ps(_mm256_broadcastss_ps(s1), p1));
            acc[r] = _mm256_add_ps(acc[r], t);
            mins[r] = _mm_add_ps(mins[r], _mm_add_ps(s0, s1));
        }
    }
    if w.len() % 2 == 1 {
        let b = w.len() - 1;
        let (q, dm) = (avx2::unpack(&w[b]), avx2::scales(&w[b]));
        for r in 0..R {
            let s = _mm_mul_ps(dm, avx2::scales(&xs[r][b]));
            let p = _mm256_cvtepi32_ps(avx2::products(q, &xs[r][b]));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_broadcastss_ps(s), p));
            mins[r] = _mm_add_ps(mins[r], s);
        }
    }
    for r in 0..R {
        // SAFETY: this function's features include hsum's.
        out[r] = unsafe { crate::simd::avx2::hsum(acc[r]) } + _mm_cvtss_f32(_mm_shuffle_ps(mins[r], mins[r], 1));
    }
}

/// [`dot_tile_avx2`] in f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tile_exact_avx2<const R: usize>(w: &[BlockQ4_1], xs: &[&[BlockQ8_1]], out: &mut [f64]) {
    use crate::simd::avx2::i32x8_to_f64x4;
    use std::arch::x86_64::*;
    let xs: &[&[BlockQ8_1]; R] = xs.try_into().expect("R rows");
    let mut acc = [_mm256_setzero_pd(); R];
    // Lane 1 accumulates m_w·s_x.
    let mut mins = [_mm_setzero_pd(); R];
    // (d_w·d_x, m_w·s_x): products of two f16, exact in f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scales(dm: __m128, bx: &BlockQ8_1) -> __m128d {
        _mm_cvtps_pd(_mm_mul_ps(dm, avx2::scales(bx)))
    }
    let pairs = w.len() / 2;
    for p in 0..pairs {
        let (b0, b1) = (2 * p, 2 * p + 1);
        let (q0, q1) = (avx2::unpack(&w[b0]), avx2::unpack(&w[b1]));
        let (dm0, dm1) = (avx2::scales(&w[b0]), avx2::scales(&w[b1]));
        for r in 0..R {
            let (s0, s1) = (scales(dm0, &xs[r][b0]), scales(dm1, &xs[r][b1]));
            let t1 = _mm256_mul_pd(_mm256_broadcastsd_pd(s1), i32x8_to_f64x4(avx2::products(q1, &xs[r][b1])));
            let t = _mm256_fmadd_pd(_mm256_broadcastsd_pd(s0), i32x8_to_f64x4(avx2::products(q0, &xs[r][b0])), t1);
            acc[r] = _mm256_add_pd(acc[r], t);
            mins[r] = _mm_add_pd(mins[r], _mm_add_pd(s0, s1));
        }
    }
    if w.len() % 2 == 1 {
        let b = w.len() - 1;
        let (q, dm) = (avx2::unpack(&w[b]), avx2::scales(&w[b]));
        for r in 0..R {
            let s = scales(dm, &xs[r][b]);
            acc[r] = _mm256_add_pd(
                acc[r],
                _mm256_mul_pd(_mm256_broadcastsd_pd(s), i32x8_to_f64x4(avx2::products(q, &xs[r][b]))),
            );
            mins[r] = _mm_add_pd(mins[r], s);
        }
    }
    for r in 0..R {
        out[r] = crate::simd::avx2::hsum_pd(acc[r]) + _mm_cvtsd_f64(_mm_unpackhi_pd(mins[r], mins[r]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quant::test_values as values;

    #[test]
    fn quantizing_round_trips_within_half_a_step() {
        let w = values(4 * BLOCK, 1);
        let mut q = vec![BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }; 4];
        quantize_q4_1(&w, &mut q);
        let mut back = vec![0.0; w.len()];
        dequantize_q4_1(&q, &mut back);
        for (b, blk) in q.iter().enumerate() {
            let step = blk.d.to_f32();
            for i in b * BLOCK..(b + 1) * BLOCK {
                assert!((back[i] - w[i]).abs() <= step * 0.5 + 2e-3, "{i}: {} vs {}", back[i], w[i]);
            }
        }
    }

    #[test]
    fn the_avx2_dots_match_the_portable_one() {
        if !crate::simd::has_avx2_fma_f16c() {
            eprintln!("SKIP: this CPU has no AVX2+FMA+F16C");
            return;
        }
        for blocks in [1, 2, 5, 18, 48] {
            let (w, x) = (values(blocks * BLOCK, 7), values(blocks * BLOCK, 9));
            let mut qw = vec![BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }; blocks];
            let mut qx = vec![BlockQ8_1::ZERO; blocks];
            quantize_q4_1(&w, &mut qw);
            quantize_q8_1(&x, &mut qx);
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
