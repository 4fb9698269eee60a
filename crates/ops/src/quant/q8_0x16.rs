//! Q8_0 weights regrouped for SIMD at load, as [`super::q4_1x16`] regroups Q4_1: the blocks of
//! 16 consecutive rows interleaved in 4-byte steps, one row per vector lane, the 16 scales side
//! by side. Same bytes as the file (34 per row and block).
//!
//! VNNI multiplies unsigned by signed bytes, and both Q8_0 operands are signed. The AVX-512
//! kernel flips each weight byte's sign bit (w + 128, unsigned) and subtracts 128·Σq_x, which
//! the activation block carries; the AVX2 one takes |w| times x with w's sign, as ggml does.
//! Both give the exact integer sum, so every level agrees with the portable loop bit for bit.

use half::f16;

use super::lanes::{by_rows, level_dots, Level};
use super::q8_0::{BlockQ8_0, BLOCK};

/// Rows interleaved in one group.
pub const ROWS: usize = 16;

/// Activation rows that share each loaded weight line.
pub const TILE: usize = 4;

/// One block (32 weights) of each of 16 rows: 544 bytes, like 16 GGUF blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct BlockQ8_0x16 {
    pub d: [f16; ROWS],
    /// qs[s][4j..4j + 4] = row j's GGUF qs[4s..4s + 4].
    pub qs: [[i8; 64]; 8],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0x16>() == ROWS * std::mem::size_of::<BlockQ8_0>());

impl BlockQ8_0x16 {
    pub const ZERO: BlockQ8_0x16 = BlockQ8_0x16 { d: [f16::ZERO; ROWS], qs: [[0; 64]; 8] };
}

/// A Q8_0 activation block with its scale (an f16 value, as ggml rounds it) held as f32, and
/// 128·Σq for the unsigned-weight VNNI kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0F {
    pub d: f32,
    pub bias: i32,
    pub qs: [i8; BLOCK],
}

impl BlockQ8_0F {
    pub const ZERO: BlockQ8_0F = BlockQ8_0F { d: 0.0, bias: 0, qs: [0; BLOCK] };
}

/// Quantizes activations as ggml's quantize_row_q8_0 (see [`super::q8_0::quantize`]).
pub fn quantize_q8_0f(x: &[f32], out: &mut [BlockQ8_0F]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
        let (d, sum) = crate::quant::quantize_block_8bit(xs, &mut b.qs);
        b.d = f16::from_f32(d).to_f32();
        b.bias = 128 * sum;
    }
}

/// Interleaves `rows` (a multiple of 16) rows of `blocks_per_row` GGUF blocks each.
pub fn interleave(w: &[BlockQ8_0], rows: usize, blocks_per_row: usize, out: &mut [BlockQ8_0x16]) {
    assert!(rows.is_multiple_of(ROWS) && w.len() == rows * blocks_per_row && out.len() * ROWS == w.len());
    for (g, group) in out.chunks_exact_mut(blocks_per_row).enumerate() {
        for (b, o) in group.iter_mut().enumerate() {
            for j in 0..ROWS {
                let src = &w[(g * ROWS + j) * blocks_per_row + b];
                o.d[j] = src.d;
                for s in 0..8 {
                    o.qs[s][4 * j..4 * j + 4].copy_from_slice(&src.qs[4 * s..4 * s + 4]);
                }
            }
        }
    }
}

/// Row j of group block `b` back in GGUF's block form.
pub fn row_block(b: &BlockQ8_0x16, j: usize) -> BlockQ8_0 {
    let mut qs = [0i8; BLOCK];
    for s in 0..8 {
        qs[4 * s..4 * s + 4].copy_from_slice(&b.qs[s][4 * j..4 * j + 4]);
    }
    BlockQ8_0 { d: b.d[j], qs }
}

/// Σ q_w·q_x of row j over one block, exactly.
fn int_dot(b: &BlockQ8_0x16, j: usize, x: &BlockQ8_0F) -> i32 {
    (0..BLOCK).map(|i| b.qs[i / 4][4 * j + i % 4] as i32 * x.qs[i] as i32).sum()
}

/// One group's 16 dots with one activation row in f32, portable: per block,
/// acc = fma(d_w·d_x, Σq, acc), which every SIMD form repeats.
pub fn dot_portable(w: &[BlockQ8_0x16], x: &[BlockQ8_0F], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate().take(ROWS) {
        *o = w
            .iter()
            .zip(x)
            .fold(0.0f32, |acc, (b, bx)| (b.d[j].to_f32() * bx.d).mul_add(int_dot(b, j, bx) as f32, acc));
    }
}

/// [`dot_portable`] in f64: each block's term is exact, added in block order, as
/// [`super::q8_0::dot_portable`] does.
pub fn dot_portable_exact(w: &[BlockQ8_0x16], x: &[BlockQ8_0F], out: &mut [f64]) {
    for (j, o) in out.iter_mut().enumerate().take(ROWS) {
        *o = w
            .iter()
            .zip(x)
            .fold(0.0f64, |acc, (b, bx)| acc + (b.d[j].to_f32() * bx.d) as f64 * int_dot(b, j, bx) as f64);
    }
}

level_dots!(
    /// out[r·16 + j] = row j of the group · xs[r], for up to [`TILE`] activation rows, in f32.
    dot_rows, f32, dot_portable, BlockQ8_0x16, BlockQ8_0F
);
level_dots!(
    /// [`dot_rows`] in f64, every block's term exact.
    dot_rows_exact, f64, dot_portable_exact, BlockQ8_0x16, BlockQ8_0F
);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockQ8_0F, BlockQ8_0x16, ROWS};
    use crate::quant::lanes::{avx512::Acc, x4};

    /// R activation rows against one group: per block, 8 lines of weights made unsigned once
    /// and multiplied by every row's 4 broadcast activation bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile<A: Acc, const R: usize>(w: &[BlockQ8_0x16], xs: &[&[BlockQ8_0F]], out: &mut [A]) {
        let xs: &[&[BlockQ8_0F]; R] = xs.try_into().expect("R rows");
        let sign = _mm512_set1_epi8(i8::MIN);
        let mut acc = [A::zero(); R];
        for (b, blk) in w.iter().enumerate() {
            // Two integer sums per row halve the dependent chain.
            let mut even = [_mm512_setzero_si512(); R];
            let mut odd = [_mm512_setzero_si512(); R];
            for s in (0..8).step_by(2) {
                let v0 = _mm512_xor_si512(_mm512_loadu_si512(blk.qs[s].as_ptr().cast()), sign);
                let v1 = _mm512_xor_si512(_mm512_loadu_si512(blk.qs[s + 1].as_ptr().cast()), sign);
                for r in 0..R {
                    let x = &xs[r][b].qs;
                    even[r] = _mm512_dpbusd_epi32(even[r], v0, _mm512_set1_epi32(x4(x, 4 * s)));
                    odd[r] = _mm512_dpbusd_epi32(odd[r], v1, _mm512_set1_epi32(x4(x, 4 * s + 4)));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_load_si256(blk.d.as_ptr().cast()));
            for r in 0..R {
                let x = &xs[r][b];
                let isum = _mm512_sub_epi32(_mm512_add_epi32(even[r], odd[r]), _mm512_set1_epi32(x.bias));
                acc[r] = A::add(acc[r], _mm512_mul_ps(dw, _mm512_set1_ps(x.d)), isum);
            }
        }
        for r in 0..R {
            A::store(acc[r], &mut out[r * ROWS..(r + 1) * ROWS]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8_0F, BlockQ8_0x16, ROWS};
    use crate::quant::lanes::{avx2::Acc, x4};

    /// As avx512's tile, each line in two halves of 8 rows; products as |w| times x with w's
    /// sign (maddubs: unsigned by signed), widened to i32 every step (two steps' i16 pair sums
    /// could overflow).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // indices over register arrays read as the math does
    pub(super) unsafe fn tile<A: Acc, const R: usize>(w: &[BlockQ8_0x16], xs: &[&[BlockQ8_0F]], out: &mut [A]) {
        let xs: &[&[BlockQ8_0F]; R] = xs.try_into().expect("R rows");
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[A::zero(); 2]; R];
        for (b, blk) in w.iter().enumerate() {
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for s in 0..8 {
                for h in 0..2 {
                    let v = _mm256_load_si256(blk.qs[s].as_ptr().add(32 * h).cast());
                    let magnitude = _mm256_abs_epi8(v);
                    for r in 0..R {
                        let x = _mm256_set1_epi32(x4(&xs[r][b].qs, 4 * s));
                        let p = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, v));
                        sums[r][h] = _mm256_add_epi32(sums[r][h], _mm256_madd_epi16(p, ones));
                    }
                }
            }
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_load_si128(blk.d.as_ptr().add(8 * h).cast()));
                for r in 0..R {
                    acc[r][h] = A::add(acc[r][h], _mm256_mul_ps(dw, _mm256_set1_ps(xs[r][b].d)), sums[r][h]);
                }
            }
        }
        for r in 0..R {
            for h in 0..2 {
                A::store(acc[r][h], &mut out[r * ROWS + 8 * h..r * ROWS + 8 * h + 8]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q8_0::{dot_portable as gguf_dot, quantize};

    use crate::quant::test_values as values;

    #[test]
    fn every_level_matches_the_gguf_reference_and_the_others_bit_for_bit() {
        for blocks in [1, 2, 18, 48] {
            let mut q = vec![BlockQ8_0::ZERO; ROWS * blocks];
            quantize(&values(ROWS * blocks * BLOCK, 3), &mut q);
            // Extreme weights too: -128 is a valid Q8_0 byte though ggml never writes it.
            q[0].qs[0] = -128;
            q[1].qs[5] = 127;
            let mut g = vec![BlockQ8_0x16::ZERO; blocks];
            interleave(&q, ROWS, blocks, &mut g);
            for j in 0..ROWS {
                assert_eq!(row_block(&g[0], j), q[j * blocks]);
            }
            let xv: Vec<Vec<f32>> = (0..TILE as u32).map(|r| values(blocks * BLOCK, 21 + r)).collect();
            let xq: Vec<Vec<BlockQ8_0F>> = xv
                .iter()
                .map(|x| {
                    let mut b = vec![BlockQ8_0F::ZERO; blocks];
                    quantize_q8_0f(x, &mut b);
                    b
                })
                .collect();
            let mut want = vec![0.0f64; TILE * ROWS];
            for (r, x) in xv.iter().enumerate() {
                let mut x8 = vec![BlockQ8_0::ZERO; blocks];
                quantize(x, &mut x8);
                for j in 0..ROWS {
                    want[r * ROWS + j] = gguf_dot(&q[j * blocks..(j + 1) * blocks], &x8);
                }
            }
            let all: Vec<&[BlockQ8_0F]> = xq.iter().map(Vec::as_slice).collect();
            let (mut fast0, mut exact0) = (vec![0.0f32; TILE * ROWS], vec![0.0f64; TILE * ROWS]);
            dot_rows(Level::Portable, &g, &all, &mut fast0);
            dot_rows_exact(Level::Portable, &g, &all, &mut exact0);
            assert_eq!(exact0, want, "{blocks} blocks: exact portable vs GGUF reference");
            for (f, e) in fast0.iter().zip(&exact0) {
                assert!((*f as f64 - e).abs() <= 1e-5 * e.abs().max(1.0), "{blocks} blocks: {f} vs {e}");
            }
            for level in Level::available() {
                for rows in 1..=TILE {
                    let (mut fast, mut exact) = (vec![0.0f32; TILE * ROWS], vec![0.0f64; TILE * ROWS]);
                    dot_rows(level, &g, &all[..rows], &mut fast);
                    dot_rows_exact(level, &g, &all[..rows], &mut exact);
                    let n = rows * ROWS;
                    assert_eq!(fast[..n], fast0[..n], "{level:?}, {blocks} blocks, {rows} rows (f32)");
                    assert_eq!(exact[..n], exact0[..n], "{level:?}, {blocks} blocks, {rows} rows (f64)");
                }
            }
        }
    }
}
