//! Matmuls over weights kept in GGUF's block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), as
//! llama.cpp runs them: each activation row is quantized once to the 8-bit blocks its weight
//! format pairs with (Q8_0, Q8_1 or Q8_K), and every output is an integer dot product of one
//! weight row with one activation row, scaled per block. Decode reads 4–8× fewer weight bytes
//! than f32, which is what bounds it.
//!
//! The K-quant block layouts and dot products are candle's (`k_quants`, AVX2 picked at run time).
//! The default model's formats have their own kernels: Q4_1 ([`q4_1`]), which candle only has in
//! scalar form, and Q8_0 ([`q8_0`]), whose candle dot spends as long converting f16 scales as
//! multiplying; both unpack a weight block once for several activation rows. Q4_1 matrices of
//! whole 16-row groups are regrouped at load ([`q4_1x16`]: one row per vector lane, AVX-512
//! VNNI or AVX2), which is 2× faster at one activation row and 4–5× at many. Threads own
//! contiguous ranges of weight rows, as in the f32 streaming kernel. A row's outputs depend on
//! that row alone, so results do not change with the batch.

/// Calls `$tile::<R>(w, xs, out)` with R = xs.len() (1 to 4): the row count is a constant in
/// each instance, so a tile kernel's accumulators stay in registers.
macro_rules! dispatch_tile {
    ($tile:ident, $w:expr, $xs:expr, $out:expr) => {
        match $xs.len() {
            1 => $tile::<1>($w, $xs, $out),
            2 => $tile::<2>($w, $xs, $out),
            3 => $tile::<3>($w, $xs, $out),
            _ => $tile::<4>($w, $xs, $out),
        }
    };
}
pub(crate) use dispatch_tile;

pub mod half16;
pub mod lanes;
mod matrix;
pub mod q4_1;
pub mod q4_1x16;
pub mod q8_0;
pub mod q8_0x16;

use std::marker::PhantomData;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ6K, GgmlType};

use matrix::{blocks, Blocks};
pub use matrix::{NotBlockAligned, QuantMatrix, QuantType, SharedBytes};

/// One block of 32 activations to 8 bits, as ggml's quantize_row_q8_0/q8_1: scale
/// d = max|x|/127 and q = round(x/d). Returns d (unrounded) and Σq.
pub(crate) fn quantize_block_8bit(xs: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = xs.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Deterministic pseudo-random values in [-1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// A weight block format with its activation format and dot product.
trait Format: Sync {
    type W: Sync;
    type A: Clone + Send + Sync;
    const ELEMS: usize;
    /// Activation rows `dot_rows` takes at once.
    const TILE: usize = 1;
    /// Weight rows one `W` row of blocks covers (interleaved layouts).
    const ROWS: usize = 1;
    fn zero() -> Self::A;
    fn quantize_x(x: &[f32], out: &mut [Self::A]);
    /// out[r·ROWS + j] = w_j · xs[r] for up to TILE rows (each k values long).
    fn dot_rows(k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f32]);
    /// `dot_rows` in f64, every block's term exact (see `matmul_nt_quant_f64`).
    fn dot_rows_exact(k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f64]);
}

/// A candle block format, with candle's dot product.
struct Candle<T>(PhantomData<T>);

impl<T: GgmlType> Format for Candle<T> {
    type W = T;
    type A = T::VecDotType;
    const ELEMS: usize = T::BLCK_SIZE;
    fn zero() -> Self::A {
        T::VecDotType::zeros()
    }
    fn quantize_x(x: &[f32], out: &mut [Self::A]) {
        T::VecDotType::from_float(x, out)
    }
    fn dot_rows(k: usize, w: &[T], xs: &[&[Self::A]], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = T::vec_dot(k, w, x);
        }
    }
    fn dot_rows_exact(k: usize, w: &[T], xs: &[&[Self::A]], out: &mut [f64]) {
        // candle's dots are f32: not exact, which K-quant files under TP live with.
        for (o, x) in out.iter_mut().zip(xs) {
            *o = T::vec_dot(k, w, x) as f64;
        }
    }
}

/// Whether our own row-at-a-time block kernels run their AVX2 forms, detected once (a dot
/// product is called per weight row, too often to ask the CPU each time). An AVX-512 VNNI form
/// of the row-at-a-time Q4_1 tile, two blocks per vector, measured no faster: its shuffles set
/// the pace. Interleaving 16 rows ([`q4_1x16`]) removed the shuffles instead.
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(crate::simd::has_avx2_fma_f16c)
}

/// Our own kernels: AVX2 where the CPU has it, else the portable dot.
macro_rules! own_format {
    ($name:ident, $module:ident, $w:ty, $a:ty, $quantize:path) => {
        struct $name;

        impl Format for $name {
            type W = $w;
            type A = $a;
            const ELEMS: usize = $module::BLOCK;
            const TILE: usize = $module::TILE;
            fn zero() -> Self::A {
                <$a>::ZERO
            }
            fn quantize_x(x: &[f32], out: &mut [Self::A]) {
                $quantize(x, out)
            }
            fn dot_rows(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f32]) {
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    // SAFETY: the features were detected; `run` passes at most TILE rows.
                    return unsafe { $module::dot_rows_avx2(w, xs, out) };
                }
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = $module::dot_portable(w, x) as f32;
                }
            }
            fn dot_rows_exact(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f64]) {
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    // SAFETY: as above.
                    return unsafe { $module::dot_rows_exact_avx2(w, xs, out) };
                }
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = $module::dot_portable(w, x);
                }
            }
        }
    };
}

own_format!(Q4_1, q4_1, q4_1::BlockQ4_1, q4_1::BlockQ8_1, q4_1::quantize_q8_1);
own_format!(Q8_0, q8_0, q8_0::BlockQ8_0, q8_0::BlockQ8_0, q8_0::quantize);

/// 16-bit weights with f32 activations ([`half16`]).
struct Half<H>(PhantomData<H>);

impl<H: half16::Widen> Format for Half<H> {
    type W = [H; half16::BLOCK];
    type A = half16::BlockF32;
    const ELEMS: usize = half16::BLOCK;
    const TILE: usize = half16::TILE;
    fn zero() -> Self::A {
        half16::BlockF32::ZERO
    }
    fn quantize_x(x: &[f32], out: &mut [Self::A]) {
        half16::to_blocks(x, out)
    }
    fn dot_rows(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the features were detected.
            return unsafe { half16::dot_rows_avx2(w, xs, out) };
        }
        for (o, x) in out.iter_mut().zip(xs) {
            *o = half16::dot(w, x);
        }
    }
    fn dot_rows_exact(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: as above.
            return unsafe { half16::dot_rows_exact_avx2(w, xs, out) };
        }
        for (o, x) in out.iter_mut().zip(xs) {
            *o = half16::dot_exact(w, x);
        }
    }
}

/// A row-interleaved format: `$module`'s kernels at the CPU's level.
macro_rules! interleaved_format {
    ($name:ident, $module:ident, $w:ty, $a:ty, $quantize:path) => {
        struct $name;

        impl Format for $name {
            type W = $w;
            type A = $a;
            const ELEMS: usize = 32;
            const TILE: usize = $module::TILE;
            const ROWS: usize = $module::ROWS;
            fn zero() -> Self::A {
                <$a>::ZERO
            }
            fn quantize_x(x: &[f32], out: &mut [Self::A]) {
                $quantize(x, out)
            }
            fn dot_rows(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f32]) {
                $module::dot_rows(lanes::Level::detect(), w, xs, out)
            }
            fn dot_rows_exact(_k: usize, w: &[Self::W], xs: &[&[Self::A]], out: &mut [f64]) {
                $module::dot_rows_exact(lanes::Level::detect(), w, xs, out)
            }
        }
    };
}

interleaved_format!(Q4_1x16, q4_1x16, q4_1x16::BlockQ4_1x16, q4_1x16::BlockQ8_1F, q4_1x16::quantize_q8_1f);
interleaved_format!(Q8_0x16, q8_0x16, q8_0x16::BlockQ8_0x16, q8_0x16::BlockQ8_0F, q8_0x16::quantize_q8_0f);

/// out[m×n] = x[m×k] · wᵀ for the rows of `parts` stacked in order (n = Σ rows, each with k
/// columns): a fused projection (q|k|v, gate|up) whose parts may differ in format.
///
/// # Panics
/// If a shape does not match.
pub fn matmul_nt_quant(x: &[f32], m: usize, k: usize, parts: &[QuantMatrix], out: &mut [f32]) {
    matmul(x, m, k, parts, out)
}

/// [`matmul_nt_quant`] in f64 with every block's term exact (Q8_0 and Q4_1; the K-quants' dots
/// are candle's, in f32), and so, in practice, their sum: a row-parallel layer's outputs, which
/// summed over tensor-parallel ranks in f64 and rounded to f32 once equal the single process's
/// bit for bit (it rounds the same exact sum). That matters because the next layer rounds
/// activations to 8 bits per block, a step function a last-bit difference can move. About
/// half the speed of the f32 path.
pub fn matmul_nt_quant_f64(x: &[f32], m: usize, k: usize, parts: &[QuantMatrix], out: &mut [f64]) {
    matmul(x, m, k, parts, out)
}

/// From this many activation rows, 16-bit weights are widened to f32 and multiplied by the f32
/// GEMM (260+ GFLOP/s on two cores, against under 100 for the row kernels): prefill. Those
/// rows' sums then follow the GEMM's order, as on the f32 path.
const HALF_GEMM_MIN_M: usize = 16;

/// An output element: f32 (fast f32 accumulation), or f64 (exact block terms, for sums that
/// must not depend on how the work was split).
trait Out: Copy + Default + Send + Sync + 'static {
    fn dot_rows<F: Format>(k: usize, w: &[F::W], xs: &[&[F::A]], out: &mut [Self]);

    /// Columns col0.. of out (row stride `stride`) = x · wᵀ through the f32 GEMM, w widened.
    fn widened_gemm(x: &[f32], m: usize, k: usize, w: &QuantMatrix, dst: Dst<Self>, stride: usize, col0: usize) {
        let mut part = vec![0.0f32; m * w.rows];
        crate::matmul::matmul_nt(x, m, k, &w.dequantize(), w.rows, &mut part);
        for (i, row) in part.chunks_exact(w.rows).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // SAFETY: (i, col0 + j) is inside out, and this part alone writes these columns.
                unsafe { *dst.at(i * stride + col0 + j) = Self::from_f32(v) };
            }
        }
    }

    fn from_f32(v: f32) -> Self;
}

impl Out for f32 {
    fn dot_rows<F: Format>(k: usize, w: &[F::W], xs: &[&[F::A]], out: &mut [f32]) {
        F::dot_rows(k, w, xs, out)
    }
    fn from_f32(v: f32) -> f32 {
        v
    }
}

impl Out for f64 {
    fn dot_rows<F: Format>(k: usize, w: &[F::W], xs: &[&[F::A]], out: &mut [f64]) {
        F::dot_rows_exact(k, w, xs, out)
    }
    fn from_f32(v: f32) -> f64 {
        v as f64
    }
}

/// The output's base pointer, shared by tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct Dst<O>(*mut O);
// SAFETY: only made in `matmul`, whose tasks write disjoint elements before it returns.
unsafe impl<O: Send> Send for Dst<O> {}
unsafe impl<O: Send> Sync for Dst<O> {}

impl<O> Dst<O> {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn at(self, i: usize) -> *mut O {
        // SAFETY: callers index inside the output.
        unsafe { self.0.add(i) }
    }
}

fn matmul<O: Out>(x: &[f32], m: usize, k: usize, parts: &[QuantMatrix], out: &mut [O]) {
    let n: usize = parts.iter().map(QuantMatrix::rows).sum();
    assert!(x.len() == m * k && out.len() == m * n, "matmul_nt_quant: shapes");
    assert!(parts.iter().all(|p| p.cols == k), "matmul_nt_quant: every part has k columns");
    if m == 0 || n == 0 {
        return;
    }
    // Each part writes its own columns; within a part each task its own rows of w.
    let dst = Dst(out.as_mut_ptr());
    let mut col0 = 0;
    for p in parts {
        if matches!(p.ty, QuantType::BF16 | QuantType::F16) && m >= HALF_GEMM_MIN_M {
            O::widened_gemm(x, m, k, p, dst, n, col0);
            col0 += p.rows;
            continue;
        }
        let run = match p.ty {
            QuantType::Q8_0 if matches!(p.blocks, Blocks::Q8_0x16(_)) => run::<Q8_0x16, O>,
            QuantType::Q8_0 => run::<Q8_0, O>,
            QuantType::Q4_0 => run::<Candle<BlockQ4_0>, O>,
            QuantType::Q4_1 if matches!(p.blocks, Blocks::Q4_1x16(_)) => run::<Q4_1x16, O>,
            QuantType::Q4_1 => run::<Q4_1, O>,
            QuantType::Q4K => run::<Candle<BlockQ4K>, O>,
            QuantType::Q5K => run::<Candle<BlockQ5K>, O>,
            QuantType::Q6K => run::<Candle<BlockQ6K>, O>,
            QuantType::BF16 => run::<Half<half::bf16>, O>,
            QuantType::F16 => run::<Half<half::f16>, O>,
        };
        run(x, m, k, p, dst, n, col0);
        col0 += p.rows;
    }
}

/// Writes out[i·stride + col0 + j] = x_i · w_j for every row i of x and j of `w`.
fn run<F: Format, O: Out>(x: &[f32], m: usize, k: usize, w: &QuantMatrix, dst: Dst<O>, stride: usize, col0: usize) {
    let blocks_per_row = k / F::ELEMS;
    let mut xq = vec![F::zero(); m * blocks_per_row];
    for (xr, qr) in x.chunks_exact(k).zip(xq.chunks_exact_mut(blocks_per_row)) {
        F::quantize_x(xr, qr);
    }
    let wb: &[F::W] = blocks(w.bytes());
    let units = w.rows / F::ROWS;
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread balance load; each is one contiguous stretch of w.
    let chunk = units.div_ceil(threads * 4).max(4usize.div_ceil(F::ROWS));
    let x_rows: Vec<&[F::A]> = xq.chunks_exact(blocks_per_row).collect();
    let chunk_blocks = chunk * blocks_per_row;
    crate::team::for_each(wb.len().div_ceil(chunk_blocks), |c| {
        let w_chunk = &wb[c * chunk_blocks..((c + 1) * chunk_blocks).min(wb.len())];
        let mut dots = [O::default(); MAX_TILE_OUTPUTS];
        for (u, w_unit) in w_chunk.chunks_exact(blocks_per_row).enumerate() {
            let j0 = col0 + (c * chunk + u) * F::ROWS;
            for (t, tile) in x_rows.chunks(F::TILE).enumerate() {
                O::dot_rows::<F>(k, w_unit, tile, &mut dots[..tile.len() * F::ROWS]);
                for r in 0..tile.len() {
                    for l in 0..F::ROWS {
                        // SAFETY: (row, j0 + l) is inside out and j0 + l belongs to this task alone.
                        unsafe { *dst.at((t * F::TILE + r) * stride + j0 + l) = dots[r * F::ROWS + l] };
                    }
                }
            }
        }
    });
}

/// The most outputs one `dot_rows` call writes (TILE × ROWS of any format).
const MAX_TILE_OUTPUTS: usize = q4_1x16::TILE * q4_1x16::ROWS;

#[cfg(test)]
mod tests {
    //! candle's formats pick their SIMD dot product at run time; each is checked here against
    //! its portable one (`vec_dot_unopt`). Q4_1's kernels are checked in `q4_1`.
    use super::*;

    fn check<T: GgmlType>(ty: QuantType) {
        let k = 3 * ty.block_elems();
        let w: Vec<f32> = (0..k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021).collect();
        let q = QuantMatrix::quantize(ty, 1, k, &w).unwrap();
        let mut xq = vec![T::VecDotType::zeros(); k / T::BLCK_SIZE];
        T::VecDotType::from_float(&x, &mut xq);
        let wb: &[T] = blocks(q.bytes());
        let (fast, portable) = (T::vec_dot(k, wb, &xq), T::vec_dot_unopt(k, wb, &xq));
        assert!((fast - portable).abs() <= 1e-4 * portable.abs().max(1.0), "{ty}: {fast} vs {portable}");
    }

    #[test]
    fn simd_dots_match_the_portable_ones() {
        check::<BlockQ4_0>(QuantType::Q4_0);
        check::<BlockQ4K>(QuantType::Q4K);
        check::<BlockQ5K>(QuantType::Q5K);
        check::<BlockQ6K>(QuantType::Q6K);
    }
}
