//! out[m×n] = x[m×k] · wᵀ, with w a torch Linear weight [n×k] (row j is output j's weights).
//!
//! Decode steps have a handful of rows and are bound by reading w from memory once, so small m
//! gets a streaming kernel: threads own contiguous ranges of w's rows and compute register tiles
//! of up to 8 x rows × 3 w rows (AVX-512F, else 4 × 3 with AVX2+FMA), which keeps both FMA pipes
//! fed once m > 2 makes the work compute-heavy. Large m (prefill) is compute-bound and goes to
//! the `gemm` crate's blocked kernels.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::out_ptr::OutPtr;
use crate::simd::has_avx2_fma;

/// Largest m handled by the AVX2 streaming kernel: on 2 Zen3 cores it beat gemm through m = 32
/// at SmolLM2's shapes (gemm pulls ahead by m = 64; `cargo bench -p shardline-ops -- mlp_up`).
/// The AVX-512 kernel takes every m: with its w blocks in L2 it matched or beat gemm's
/// AVX-512 kernels even at m = 512 on a Zen 5 core (129 vs 103 GFLOP/s at k = 576, 98 vs 99
/// at k = 1536).
const STREAM_MAX_M: usize = 32;
/// Most x rows in one register tile (the AVX-512 path's; the others use 4).
const X_ROWS_MAX: usize = 8;
/// w rows in one register tile.
const W_ROWS: usize = 3;
type Tile = [[f32; W_ROWS]; X_ROWS_MAX];
/// Up to this many x rows, w rows are streamed one at a time.
const NARROW_MAX_M: usize = 2;
/// w rows per cache block: every x row group passes over a block before the next one starts,
/// so w comes from DRAM once and from L2 for the other groups (48 rows × k = 1536 is 288 KiB),
/// while one group's x rows stay in L1.
const W_BLOCK_ROWS: usize = 16 * W_ROWS;

/// The tile kernels this CPU runs, each a superset of the ones before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") && has_avx2_fma() {
            return Isa::Avx512;
        }
        if has_avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// x rows per register tile.
    fn x_rows(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 | Isa::Portable => 4,
        }
    }

    /// tile[r][c] = x_r · w_c for `rows` ≤ x_rows() x rows and `cols` ≤ 3 w rows.
    fn tile(self, x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, tile: &mut Tile) {
        debug_assert!(rows <= self.x_rows() && cols <= W_ROWS);
        match self {
            // SAFETY (both): the features were detected by `detect`; the slices hold rows×k
            // and cols×k floats.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::tile(x, rows, w, cols, k, tile) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::tile(x, rows, w, cols, k, tile) },
            _ => portable_tile(x, rows, w, cols, k, tile),
        }
    }
}

/// out[m×n] = x[m×k] · w[n×k]ᵀ, all row-major; every element of `out` is written.
///
/// # Panics
/// If a slice length does not match its shape.
pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n, "matmul_nt: shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    if m <= STREAM_MAX_M || Isa::detect() == Isa::Avx512 {
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

fn stream(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread balance load; each chunk is one contiguous stretch of w.
    let chunk = n.div_ceil(threads * 4).max(16);
    // SAFETY: every task writes only the columns of its own disjoint range of w rows, and all
    // finish before this function returns.
    let dst = unsafe { OutPtr::new(out) };
    // With one or two x rows the kernel is memory-bound and one sequential w stream is what
    // the hardware prefetcher serves best; with more rows, tiling w rows saves loads
    // (measured). The narrow stream runs at the widest ISA: on a 2-core Xeon (family 6 model
    // 167) f32 decode went 42.6–47.0 → 48.4–50.4 tok/s from AVX2 to AVX-512, though an earlier
    // machine had measured AVX2 ahead.
    let isa = Isa::detect();
    let (x_rows, w_step) = (isa.x_rows(), if m <= NARROW_MAX_M { 1 } else { W_ROWS });
    crate::team::for_each(n.div_ceil(chunk), |c| {
        let w_chunk = &w[c * chunk * k..((c + 1) * chunk * k).min(w.len())];
        let j0 = c * chunk;
        let rows_here = w_chunk.len() / k;
        let mut tile: Tile = [[0.0; W_ROWS]; X_ROWS_MAX];
        for b0 in (0..rows_here).step_by(W_BLOCK_ROWS) {
            let b1 = (b0 + W_BLOCK_ROWS).min(rows_here);
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(x_rows);
                let x_rows_here = &x[i0 * k..(i0 + rows) * k];
                let mut jj = b0;
                while jj < b1 {
                    let cols = (b1 - jj).min(w_step);
                    isa.tile(x_rows_here, rows, &w_chunk[jj * k..(jj + cols) * k], cols, k, &mut tile);
                    for (r, t) in tile.iter().enumerate().take(rows) {
                        for (cc, &v) in t.iter().enumerate().take(cols) {
                            // SAFETY: (i0 + r, j0 + jj + cc) is inside out and owned by this chunk.
                            unsafe { *dst.get().add((i0 + r) * n + j0 + jj + cc) = v };
                        }
                    }
                    jj += cols;
                }
                i0 += rows;
            }
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
    lanes.iter().sum::<f32>() + a[body..].iter().zip(&b[body..]).map(|(p, q)| p * q).sum::<f32>()
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
        let isas: Vec<Isa> =
            [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= Isa::detect()).collect();
        for k in [1, 7, 8, 15, 16, 17, 33, 100, 576] {
            let x: Vec<f32> = (0..X_ROWS_MAX * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..W_ROWS * k).map(|_| next()).collect();
            for &isa in &isas {
                for rows in 1..=isa.x_rows() {
                    for cols in 1..=W_ROWS {
                        let want = |r: usize, c: usize| -> f32 { (0..k).map(|p| x[r * k + p] * w[c * k + p]).sum() };
                        let mut tile = [[f32::NAN; W_ROWS]; X_ROWS_MAX];
                        isa.tile(&x[..rows * k], rows, &w[..cols * k], cols, k, &mut tile);
                        for (r, tr) in tile.iter().enumerate().take(rows) {
                            for (c, &v) in tr.iter().enumerate().take(cols) {
                                assert!((v - want(r, c)).abs() < 1e-3, "{isa:?} k={k} {rows}x{cols} [{r}][{c}]: {v}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_whatever_rows_share_its_tile() {
        // Batch invariance: x row 0's outputs may not depend on how many other rows are in
        // the batch, as long as the same kernel runs (m between 3 and STREAM_MAX_M).
        let (k, n) = (576, 50);
        let x: Vec<f32> = (0..STREAM_MAX_M * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01).collect();
        let row0 = |m: usize| {
            let mut out = vec![0.0; m * n];
            matmul_nt(&x[..m * k], m, k, &w, n, &mut out);
            out[..n].to_vec()
        };
        let first = row0(3);
        for m in 4..=STREAM_MAX_M {
            assert_eq!(row0(m), first, "m = {m}");
        }
    }
}
