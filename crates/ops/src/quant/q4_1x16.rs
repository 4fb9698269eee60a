//! Q4_1 weights regrouped for SIMD at load: the blocks of 16 consecutive rows are interleaved,
//! so that one vector lane holds one row. A 64-byte line then carries 4 bytes (8 weights) of
//! each of the 16 rows, one VNNI instruction (or two AVX2 ones) multiplies them by the same 4
//! activation bytes broadcast to every lane, and after 8 such steps each lane holds its row's
//! integer block sum: no horizontal sums, no per-block scale broadcasts. The 16 rows' scales sit
//! side by side and convert 16 at a time. That is about 8× fewer instructions per weight than
//! the row-at-a-time kernel in [`super::q4_1`], whose GGUF layout it is built from (llama.cpp
//! repacks its Q4_0 the same way for its AVX-512 and AMX paths). Same bytes as the file.
//!
//! Every SIMD level and the portable loop take the same f32 (or f64) steps per lane in the same
//! order, on exact integer sums, so they agree bit for bit; and a lane's result depends only on
//! its own row and activation row, so results do not change with the batch or the TP shard.

use half::f16;

use super::lanes::{by_rows, level_dots, Level};
use super::q4_1::{BlockQ4_1, BLOCK};

/// Rows interleaved in one group.
pub const ROWS: usize = 16;

/// Activation rows that share each loaded weight line.
pub const TILE: usize = 4;

/// One block (32 weights) of each of 16 rows: 320 bytes, five cache lines, like 16 GGUF blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct BlockQ4_1x16 {
    pub d: [f16; ROWS],
    pub m: [f16; ROWS],
    /// qs[s][4j..4j + 4] = row j's GGUF qs[4s..4s + 4]: low nibbles are weights 4s..4s + 4,
    /// high nibbles weights 16 + 4s..16 + 4s + 4.
    pub qs: [[u8; 64]; 4],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1x16>() == ROWS * std::mem::size_of::<BlockQ4_1>());

/// A Q8_1 activation block with its two scales (f16 values, as ggml rounds them) held as f32,
/// so that kernels broadcast them straight from memory.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1F {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; BLOCK],
}

impl BlockQ8_1F {
    pub const ZERO: BlockQ8_1F = BlockQ8_1F { d: 0.0, s: 0.0, qs: [0; BLOCK] };
}

/// Quantizes activations as ggml's quantize_row_q8_1 (see [`super::q4_1::quantize_q8_1`]).
pub fn quantize_q8_1f(x: &[f32], out: &mut [BlockQ8_1F]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
        let (d, sum) = crate::quant::quantize_block_8bit(xs, &mut b.qs);
        b.d = f16::from_f32(d).to_f32();
        b.s = f16::from_f32(sum as f32 * d).to_f32();
    }
}

/// Interleaves `rows` (a multiple of 16) rows of `blocks_per_row` GGUF blocks each.
pub fn interleave(w: &[BlockQ4_1], rows: usize, blocks_per_row: usize, out: &mut [BlockQ4_1x16]) {
    assert!(rows.is_multiple_of(ROWS) && w.len() == rows * blocks_per_row && out.len() * ROWS == w.len());
    for (g, group) in out.chunks_exact_mut(blocks_per_row).enumerate() {
        for (b, o) in group.iter_mut().enumerate() {
            for j in 0..ROWS {
                let src = &w[(g * ROWS + j) * blocks_per_row + b];
                o.d[j] = src.d;
                o.m[j] = src.m;
                for s in 0..4 {
                    o.qs[s][4 * j..4 * j + 4].copy_from_slice(&src.qs[4 * s..4 * s + 4]);
                }
            }
        }
    }
}

/// Row j of group block `b` back in GGUF's block form.
pub fn row_block(b: &BlockQ4_1x16, j: usize) -> BlockQ4_1 {
    let mut qs = [0u8; BLOCK / 2];
    for s in 0..4 {
        qs[4 * s..4 * s + 4].copy_from_slice(&b.qs[s][4 * j..4 * j + 4]);
    }
    BlockQ4_1 { d: b.d[j], m: b.m[j], qs }
}

/// Σ q_w·q_x of row j over one block, exactly.
fn int_dot(b: &BlockQ4_1x16, j: usize, x: &BlockQ8_1F) -> i32 {
    let mut acc = 0;
    for s in 0..4 {
        for i in 0..4 {
            let q = b.qs[s][4 * j + i];
            acc += (q & 0x0F) as i32 * x.qs[4 * s + i] as i32 + (q >> 4) as i32 * x.qs[16 + 4 * s + i] as i32;
        }
    }
    acc
}

/// One group's 16 dots with one activation row in f32, portable: per block,
/// acc = fma(d_w·d_x, Σq, acc), then acc = fma(m_w, s_x, acc), which every SIMD form repeats.
pub fn dot_portable(w: &[BlockQ4_1x16], x: &[BlockQ8_1F], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate().take(ROWS) {
        let mut acc = 0.0f32;
        for (b, bx) in w.iter().zip(x) {
            acc = (b.d[j].to_f32() * bx.d).mul_add(int_dot(b, j, bx) as f32, acc);
            acc = b.m[j].to_f32().mul_add(bx.s, acc);
        }
        *o = acc;
    }
}

/// [`dot_portable`] in f64: each block's term d_w·d_x·Σq + m_w·s_x has an exact product (f16
/// times f16 values, times an integer) and is added to the row's sum in block order, as
/// [`super::q4_1::dot_portable`] does.
pub fn dot_portable_exact(w: &[BlockQ4_1x16], x: &[BlockQ8_1F], out: &mut [f64]) {
    for (j, o) in out.iter_mut().enumerate().take(ROWS) {
        let mut acc = 0.0f64;
        for (b, bx) in w.iter().zip(x) {
            let t =
                ((b.d[j].to_f32() * bx.d) as f64).mul_add(int_dot(b, j, bx) as f64, (b.m[j].to_f32() * bx.s) as f64);
            acc += t;
        }
        *o = acc;
    }
}

level_dots!(
    /// out[r·16 + j] = row j of the group · xs[r], for up to [`TILE`] activation rows, in f32.
    dot_rows, f32, dot_portable, BlockQ4_1x16, BlockQ8_1F
);
level_dots!(
    /// [`dot_rows`] in f64, every block's term exact.
    dot_rows_exact, f64, dot_portable_exact, BlockQ4_1x16, BlockQ8_1F
);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1x16, BlockQ8_1F, ROWS};
    use crate::quant::lanes::x4;
    /// R activation rows against one group: per block, 4 lines of weights, each unpacked once
    /// into low and high nibbles and multiplied by every row's 4 broadcast activation bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile<A: crate::quant::lanes::avx512::Acc, const R: usize>(
        w: &[BlockQ4_1x16],
        xs: &[&[BlockQ8_1F]],
        out: &mut [A],
    ) {
        let xs: &[&[BlockQ8_1F]; R] = xs.try_into().expect("R rows");
        let nibble = _mm512_set1_epi8(0x0F);
        let mut acc = [A::zero(); R];
        for (b, blk) in w.iter().enumerate() {
            // Two integer sums per row (low and high nibbles) halve the dependent chain.
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for s in 0..4 {
                let v = _mm512_load_si512(blk.qs[s].as_ptr().cast());
                let (ql, qh) = (_mm512_and_si512(v, nibble), _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
                for r in 0..R {
                    let x = &xs[r][b];
                    lo[r] = _mm512_dpbusd_epi32(lo[r], ql, _mm512_set1_epi32(x4(&x.qs, 4 * s)));
                    hi[r] = _mm512_dpbusd_epi32(hi[r], qh, _mm512_set1_epi32(x4(&x.qs, 16 + 4 * s)));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_load_si256(blk.d.as_ptr().cast()));
            let mw = _mm512_cvtph_ps(_mm256_load_si256(blk.m.as_ptr().cast()));
            for r in 0..R {
                let x = &xs[r][b];
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(x.d));
                acc[r] = A::add_with_min(acc[r], d, _mm512_add_epi32(lo[r], hi[r]), mw, _mm512_set1_ps(x.s));
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

    use super::{BlockQ4_1x16, BlockQ8_1F, ROWS};
    use crate::quant::lanes::x4;
    /// As avx512's tile, each line in two halves of 8 rows. maddubs sums two products into an
    /// i16; the 8 of a block per lane stay below 8·2·15·127 = 30480, so i16 holds them and one
    /// madd per block widens to i32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // indices over register arrays read as the math does
    pub(super) unsafe fn tile<A: crate::quant::lanes::avx2::Acc, const R: usize>(
        w: &[BlockQ4_1x16],
        xs: &[&[BlockQ8_1F]],
        out: &mut [A],
    ) {
        let xs: &[&[BlockQ8_1F]; R] = xs.try_into().expect("R rows");
        let (nibble, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
        let mut acc = [[A::zero(); 2]; R];
        for (b, blk) in w.iter().enumerate() {
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for s in 0..4 {
                for h in 0..2 {
                    let v = _mm256_load_si256(blk.qs[s].as_ptr().add(32 * h).cast());
                    let (ql, qh) = (_mm256_and_si256(v, nibble), _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
                    for r in 0..R {
                        let x = &xs[r][b];
                        let pl = _mm256_maddubs_epi16(ql, _mm256_set1_epi32(x4(&x.qs, 4 * s)));
                        let ph = _mm256_maddubs_epi16(qh, _mm256_set1_epi32(x4(&x.qs, 16 + 4 * s)));
                        sums[r][h] = _mm256_add_epi16(sums[r][h], _mm256_add_epi16(pl, ph));
                    }
                }
            }
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_load_si128(blk.d.as_ptr().add(8 * h).cast()));
                let mw = _mm256_cvtph_ps(_mm_load_si128(blk.m.as_ptr().add(8 * h).cast()));
                for r in 0..R {
                    let x = &xs[r][b];
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(x.d));
                    let isum = _mm256_madd_epi16(sums[r][h], ones);
                    acc[r][h] = A::add_with_min(acc[r][h], d, isum, mw, _mm256_set1_ps(x.s));
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
    use crate::quant::q4_1::{dot_portable as gguf_dot, quantize_q4_1, BlockQ8_1};

    use crate::quant::test_values as values;

    fn group(blocks: usize, seed: u32) -> (Vec<BlockQ4_1>, Vec<BlockQ4_1x16>) {
        let w = values(ROWS * blocks * BLOCK, seed);
        let mut q = vec![BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }; ROWS * blocks];
        quantize_q4_1(&w, &mut q);
        let zero = BlockQ4_1x16 { d: [f16::ZERO; ROWS], m: [f16::ZERO; ROWS], qs: [[0; 64]; 4] };
        let mut g = vec![zero; blocks];
        interleave(&q, ROWS, blocks, &mut g);
        (q, g)
    }

    #[test]
    fn interleaving_keeps_every_row_block() {
        let (q, g) = group(3, 5);
        for j in 0..ROWS {
            for b in 0..3 {
                assert_eq!(row_block(&g[b], j), q[j * 3 + b]);
            }
        }
    }

    #[test]
    fn every_level_matches_the_gguf_reference_and_the_others_bit_for_bit() {
        for blocks in [1, 2, 18, 48] {
            let (q, g) = group(blocks, 7);
            let xv: Vec<Vec<f32>> = (0..TILE as u32).map(|r| values(blocks * BLOCK, 11 + r)).collect();
            let xq: Vec<Vec<BlockQ8_1F>> = xv
                .iter()
                .map(|x| {
                    let mut b = vec![BlockQ8_1F::ZERO; blocks];
                    quantize_q8_1f(x, &mut b);
                    b
                })
                .collect();
            // The exact sums equal the GGUF-layout reference's on the same quantized activations.
            let mut want = vec![0.0f64; TILE * ROWS];
            for (r, x) in xv.iter().enumerate() {
                let mut x8 = vec![BlockQ8_1::ZERO; blocks];
                crate::quant::q4_1::quantize_q8_1(x, &mut x8);
                for j in 0..ROWS {
                    want[r * ROWS + j] = gguf_dot(&q[j * blocks..(j + 1) * blocks], &x8);
                }
            }
            let (mut fast0, mut exact0) = (vec![0.0f32; TILE * ROWS], vec![0.0f64; TILE * ROWS]);
            let all: Vec<&[BlockQ8_1F]> = xq.iter().map(Vec::as_slice).collect();
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

    #[test]
    fn the_simd_levels_this_cpu_has_are_tested() {
        let levels = Level::available();
        if !levels.contains(&Level::Avx512Vnni) {
            eprintln!("SKIP: this CPU has no AVX-512 VNNI; tested {levels:?}");
        }
        assert!(levels.contains(&Level::Portable));
    }
}
