//! AVX2 + FMA register tiles (8 lanes).
use std::arch::x86_64::*;

use super::{Tile, W_ROWS};

/// x rows per tile on this path.
const X_ROWS: usize = 4;
use crate::simd::avx2::hsum;

/// Dispatches to a register tile sized at compile time, so the accumulators stay in
/// registers (a runtime-sized loop would spill them to the stack).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, out: &mut Tile) {
    debug_assert!(x.len() >= rows * k && w.len() >= cols * k);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    match (rows, cols) {
        (4, 3) => fixed::<4, 3>(xp, wp, k, out),
        (4, 2) => fixed::<4, 2>(xp, wp, k, out),
        (4, _) => narrow::<4>(xp, wp, k, out),
        (3, 3) => fixed::<3, 3>(xp, wp, k, out),
        (3, 2) => fixed::<3, 2>(xp, wp, k, out),
        (3, _) => narrow::<3>(xp, wp, k, out),
        (2, 3) => fixed::<2, 3>(xp, wp, k, out),
        (2, 2) => fixed::<2, 2>(xp, wp, k, out),
        (2, _) => narrow::<2>(xp, wp, k, out),
        (_, 3) => fixed::<1, 3>(xp, wp, k, out),
        (_, 2) => fixed::<1, 2>(xp, wp, k, out),
        _ => narrow::<1>(xp, wp, k, out),
    }
}

/// R dot products with one w row, two accumulators per x row (16 elements a step) so the
/// FMA latency is hidden even for R = 1; w is read strictly sequentially.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow<const R: usize>(x: *const f32, w: *const f32, k: usize, out: &mut Tile) {
    const { assert!(R <= X_ROWS) };
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    let body = k - k % 16;
    let mut p = 0;
    while p < body {
        let w0 = _mm256_loadu_ps(w.add(p));
        let w1 = _mm256_loadu_ps(w.add(p + 8));
        for r in 0..R {
            let xr = x.add(r * k + p);
            a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, a0[r]);
            a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), w1, a1[r]);
        }
        p += 16;
    }
    for r in 0..R {
        let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
        for q in body..k {
            s += *x.add(r * k + q) * *w.add(q);
        }
        out[r][0] = s;
    }
}

/// R×C dot products of length k: per 8 elements, R + C loads feed R·C FMAs (4×3: 7 loads
/// for 12 FMAs, so Zen3's two load ports keep both FMA pipes busy).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fixed<const R: usize, const C: usize>(x: *const f32, w: *const f32, k: usize, out: &mut Tile) {
    const { assert!(R <= X_ROWS && C <= W_ROWS) };
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let body = k - k % 8;
    let mut p = 0;
    // The tile's C w rows are one contiguous block and the next tile reads the block after
    // it; prefetch that block at C× the pace we walk this one, so DRAM streams stay busy
    // even though the hardware prefetcher sees C interleaved streams.
    let next = w.wrapping_add(C * k);
    while p < body {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * C) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * C + 16) as *const i8);
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(w.add(c * k + p));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.add(r * k + p));
            for (c, v) in a.iter_mut().enumerate() {
                *v = _mm256_fmadd_ps(xv, wv[c], *v);
            }
        }
        p += 8;
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            let mut s = hsum(*v);
            for q in body..k {
                s += *x.add(r * k + q) * *w.add(c * k + q);
            }
            out[r][c] = s;
        }
    }
}
