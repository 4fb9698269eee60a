//! out[m×n] = x[m×k] · wᵀ, with w a torch Linear weight [n×k] (row j is output j's weights).
//!
//! Decode steps have a handful of rows and are bound by reading w from memory once, so small m
//! gets a streaming kernel: threads own contiguous ranges of w's rows and compute register tiles
//! of up to 4 x rows × 3 w rows (AVX2+FMA when the CPU has it), which keeps both FMA pipes fed
//! once m > 2 makes the work compute-heavy. Large m (prefill) is compute-bound and goes to the
//! `gemm` crate's blocked kernels.

use rayon::prelude::*;

use crate::simd::has_avx2_fma;

/// Largest m handled by the streaming kernel: on 2 Zen3 cores it beat gemm through m = 32 at
/// SmolLM2's shapes (gemm pulls ahead by m = 64; `cargo bench -p shardline-ops -- mlp_up`).
const STREAM_MAX_M: usize = 32;
/// x rows × w rows computed together in one register tile.
const X_ROWS: usize = 4;
const W_ROWS: usize = 3;
type Tile = [[f32; W_ROWS]; X_ROWS];
/// Up to this many x rows, w rows are streamed one at a time.
const NARROW_MAX_M: usize = 2;

/// out[m×n] = x[m×k] · w[n×k]ᵀ, all row-major; every element of `out` is written.
///
/// # Panics
/// If a slice length does not match its shape.
pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(
        x.len() == m * k && w.len() == n * k && out.len() == m * n,
        "matmul_nt: shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    if m <= STREAM_MAX_M {
        stream(x, m, k, w, n, out);
    } else {
        // SAFETY: the strides describe x as row-major [m×k], wᵀ as [k×n] read from w's rows and
        // out as row-major [m×n]; lengths were checked above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        }
    }
}

/// Pointer to `out` shared by threads that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only the columns of its own disjoint range of w rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn stream(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread balance load; each chunk is one contiguous stretch of w.
    let chunk = n.div_ceil(threads * 4).max(16);
    let dst = OutPtr(out.as_mut_ptr());
    let simd = has_avx2_fma();
    // With one or two x rows the kernel is memory-bound and one sequential w stream is what
    // the hardware prefetcher serves best; with more rows, tiling w rows saves loads (measured).
    let w_step = if m <= NARROW_MAX_M { 1 } else { W_ROWS };
    w.par_chunks(chunk * k)
        .enumerate()
        .for_each(|(c, w_chunk)| {
            let j0 = c * chunk;
            let rows_here = w_chunk.len() / k;
            let mut tile: Tile = [[0.0; W_ROWS]; X_ROWS];
            let mut jj = 0;
            while jj < rows_here {
                let cols = (rows_here - jj).min(w_step);
                let w_rows = &w_chunk[jj * k..(jj + cols) * k];
                let mut i0 = 0;
                while i0 < m {
                    let rows = (m - i0).min(X_ROWS);
                    let x_rows = &x[i0 * k..(i0 + rows) * k];
                    if simd {
                        // SAFETY: AVX2 and FMA were detected; the slices hold rows×k and cols×k.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx2::tile(x_rows, rows, w_rows, cols, k, &mut tile)
                        };
                    } else {
                        portable_tile(x_rows, rows, w_rows, cols, k, &mut tile);
                    }
                    for (r, t) in tile.iter().enumerate().take(rows) {
                        for (cc, &v) in t.iter().enumerate().take(cols) {
                            // SAFETY: (i0 + r, j0 + jj + cc) is inside out and owned by this chunk.
                            unsafe { *dst.get().add((i0 + r) * n + j0 + jj + cc) = v };
                        }
                    }
                    i0 += rows;
                }
                jj += cols;
            }
        });
}

/// tile[r][c] = x_r · w_c for `rows` x rows and `cols` w rows, each of length k.
fn portable_tile(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, tile: &mut Tile) {
    for (r, t) in tile.iter_mut().enumerate().take(rows) {
        for (c, v) in t.iter_mut().enumerate().take(cols) {
            *v = portable_dot(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
        }
    }
}

fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorize without reassociating.
    let mut lanes = [0.0f32; 8];
    let body = a.len() - a.len() % 8;
    for (av, bv) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += av[l] * bv[l];
        }
    }
    lanes.iter().sum::<f32>()
        + a[body..]
            .iter()
            .zip(&b[body..])
            .map(|(p, q)| p * q)
            .sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Tile, W_ROWS, X_ROWS};
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
    unsafe fn fixed<const R: usize, const C: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        out: &mut Tile,
    ) {
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
}

#[cfg(test)]
mod tests {
    //! The public tests only reach the tile kernel the CPU selects; here each is checked.
    use super::*;

    #[test]
    fn tile_kernels_match_naive_dots() {
        let mut seed = 3u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        for k in [1, 7, 8, 16, 33, 100] {
            let x: Vec<f32> = (0..X_ROWS * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..W_ROWS * k).map(|_| next()).collect();
            for rows in 1..=X_ROWS {
                for cols in 1..=W_ROWS {
                    let want = |r: usize, c: usize| -> f32 {
                        (0..k).map(|p| x[r * k + p] * w[c * k + p]).sum()
                    };
                    let mut tiles = vec![[[f32::NAN; W_ROWS]; X_ROWS]];
                    portable_tile(&x, rows, &w, cols, k, &mut tiles[0]);
                    #[cfg(target_arch = "x86_64")]
                    if has_avx2_fma() {
                        tiles.push([[f32::NAN; W_ROWS]; X_ROWS]);
                        // SAFETY: features detected; x and w hold X_ROWS·k and W_ROWS·k floats.
                        unsafe { avx2::tile(&x, rows, &w, cols, k, &mut tiles[1]) };
                    }
                    for t in &tiles {
                        for (r, tr) in t.iter().enumerate().take(rows) {
                            for (c, &v) in tr.iter().enumerate().take(cols) {
                                assert!(
                                    (v - want(r, c)).abs() < 1e-4,
                                    "k={k} {rows}x{cols} [{r}][{c}]"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
