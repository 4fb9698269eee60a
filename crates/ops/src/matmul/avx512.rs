//! AVX-512F register tiles (16 lanes). With 32 vector registers a tile holds 8 x rows × 3 w
//! rows: 24 accumulators + 3 w vectors + 1 x vector, so per 16 elements 11 loads feed 24 FMAs
//! and the two FMA pipes, not the load ports, set the pace. The k tail is one masked step, so
//! any k works without a scalar loop.

use std::arch::x86_64::*;

use super::{Tile, W_ROWS, X_ROWS_MAX};

/// x rows per tile on this path.
pub const X_ROWS: usize = 8;
const _: () = assert!(X_ROWS <= X_ROWS_MAX);

/// tile[r][c] = x_r · w_c for `rows` ≤ 8 x rows and `cols` ≤ 3 w rows of length k, through a
/// tile sized at compile time so the accumulators stay in registers.
#[target_feature(enable = "avx512f,avx512vl")]
pub unsafe fn tile(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, out: &mut Tile) {
    debug_assert!(rows <= X_ROWS && cols <= W_ROWS);
    debug_assert!(x.len() >= rows * k && w.len() >= cols * k);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    match cols {
        3 => by_rows::<3>(xp, rows, wp, k, out),
        2 => by_rows::<2>(xp, rows, wp, k, out),
        _ => by_rows::<1>(xp, rows, wp, k, out),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn by_rows<const C: usize>(x: *const f32, rows: usize, w: *const f32, k: usize, out: &mut Tile) {
    match rows {
        8 if C == 3 => tile_8x3(x, w, k, out),
        8 => fixed::<8, C>(x, w, k, out),
        7 => fixed::<7, C>(x, w, k, out),
        6 => fixed::<6, C>(x, w, k, out),
        5 => fixed::<5, C>(x, w, k, out),
        4 => fixed::<4, C>(x, w, k, out),
        3 => fixed::<3, C>(x, w, k, out),
        2 => fixed::<2, C>(x, w, k, out),
        _ => fixed::<1, C>(x, w, k, out),
    }
}

/// R×C dot products of length k. Every lane accumulates the elements p ≡ lane (mod 16) and the
/// lanes are summed once at the end, whatever R and C are, so a row's result does not depend
/// on which other rows share its tile.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn fixed<const R: usize, const C: usize>(x: *const f32, w: *const f32, k: usize, out: &mut Tile) {
    const { assert!(R <= X_ROWS && C <= W_ROWS) };
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let body = k - k % 16;
    // As on the AVX2 path: the next tile's C rows are one contiguous block; prefetch it at C×
    // the pace we walk this one (C cache lines per 16-element step).
    let next = w.wrapping_add(C * k);
    let mut p = 0;
    while p < body {
        for line in 0..C {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * C + 16 * line) as *const i8);
        }
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(c * k + p));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(r * k + p));
            for (c, v) in a.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(xv, wv[c], *v);
            }
        }
        p += 16;
    }
    if p < k {
        // Masked-off lanes load as 0.0 and so add nothing.
        let mask: __mmask16 = ((1u32 << (k - p)) - 1) as __mmask16;
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, w.add(c * k + p));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(mask, x.add(r * k + p));
            for (c, v) in a.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(xv, wv[c], *v);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            out[r][c] = _mm512_reduce_add_ps(*v);
        }
    }
}

/// One 16-element step of the 8×3 tile: 3 w loads, then per x row one load and 3 FMAs.
macro_rules! step_8x3 {
    ($load:expr, $x:expr, $w:expr, $k:expr, $p:expr, $acc:ident) => {{
        let w0 = $load($w.add($p));
        let w1 = $load($w.add($k + $p));
        let w2 = $load($w.add(2 * $k + $p));
        step_8x3!(@rows $load, $x, $k, $p, w0, w1, w2, $acc, 0 1 2 3 4 5 6 7);
    }};
    (@rows $load:expr, $x:expr, $k:expr, $p:expr, $w0:ident, $w1:ident, $w2:ident, $acc:ident, $($r:literal)*) => {
        $(
            let xv = $load($x.add($r * $k + $p));
            $acc[$r][0] = _mm512_fmadd_ps(xv, $w0, $acc[$r][0]);
            $acc[$r][1] = _mm512_fmadd_ps(xv, $w1, $acc[$r][1]);
            $acc[$r][2] = _mm512_fmadd_ps(xv, $w2, $acc[$r][2]);
        )*
    };
}

/// The full tile, unrolled by hand: written with loops, LLVM keeps the 24 accumulators in
/// zmm0–15 and spills the rest (seen in the disassembly), which cost a third of the speed.
/// Same summation order as [`fixed`].
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn tile_8x3(x: *const f32, w: *const f32, k: usize, out: &mut Tile) {
    let mut acc = [[_mm512_setzero_ps(); 3]; 8];
    let body = k - k % 16;
    let next = w.wrapping_add(3 * k);
    let load = |ptr: *const f32| _mm512_loadu_ps(ptr);
    let mut p = 0;
    while p < body {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * 3) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * 3 + 16) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * 3 + 32) as *const i8);
        step_8x3!(load, x, w, k, p, acc);
        p += 16;
    }
    if p < k {
        let mask: __mmask16 = ((1u32 << (k - p)) - 1) as __mmask16;
        let load = |ptr: *const f32| _mm512_maskz_loadu_ps(mask, ptr);
        step_8x3!(load, x, w, k, p, acc);
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            out[r][c] = _mm512_reduce_add_ps(*v);
        }
    }
}
