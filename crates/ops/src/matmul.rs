//! out[m×n] = x[m×k] · wᵀ, with w a torch Linear weight [n×k] (row j is output j's weights).
//!
//! Decode steps have a handful of rows and are bound by reading w from memory once, so small m
//! gets a streaming kernel: threads own contiguous ranges of w's rows and dot each with every x
//! row (AVX2+FMA when the CPU has it). Prefill has hundreds of rows and is compute-bound: that
//! goes to the `gemm` crate's blocked kernels.

use rayon::prelude::*;

/// Largest m handled by the streaming kernel (measured: `cargo bench -p shardline-ops`).
const STREAM_MAX_M: usize = 8;
/// x rows processed per pass over a w row.
const ROWS_PER_PASS: usize = 4;

pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n, "matmul_nt: shapes");
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
    w.par_chunks(chunk * k).enumerate().for_each(|(c, w_chunk)| {
        let j0 = c * chunk;
        let mut acc = [0.0f32; ROWS_PER_PASS];
        for (jj, w_row) in w_chunk.chunks_exact(k).enumerate() {
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(ROWS_PER_PASS);
                dot_rows(&x[i0 * k..(i0 + rows) * k], rows, w_row, &mut acc);
                for (r, &v) in acc[..rows].iter().enumerate() {
                    // SAFETY: (i0 + r, j0 + jj) is inside out and owned by this chunk.
                    unsafe { *dst.get().add((i0 + r) * n + j0 + jj) = v };
                }
                i0 += rows;
            }
        }
    });
}

/// acc[r] = x_r · w_row for the `rows` (≤ 4) rows of `x`.
#[inline]
fn dot_rows(x: &[f32], rows: usize, w_row: &[f32], acc: &mut [f32; ROWS_PER_PASS]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { avx2::dot_rows(x, rows, w_row, acc) };
            return;
        }
    }
    portable_dot_rows(x, rows, w_row, acc);
}

fn portable_dot_rows(x: &[f32], rows: usize, w_row: &[f32], acc: &mut [f32; ROWS_PER_PASS]) {
    let k = w_row.len();
    for (r, a) in acc.iter_mut().enumerate().take(rows) {
        let xr = &x[r * k..(r + 1) * k];
        // Eight independent partial sums let the compiler vectorize without reassociating.
        let mut lanes = [0.0f32; 8];
        let (xc, xt) = xr.split_at(k - k % 8);
        let (wc, wt) = w_row.split_at(k - k % 8);
        for (xv, wv) in xc.chunks_exact(8).zip(wc.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += xv[l] * wv[l];
            }
        }
        *a = lanes.iter().sum::<f32>() + xt.iter().zip(wt).map(|(p, q)| p * q).sum::<f32>();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::ROWS_PER_PASS;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        _mm_cvtss_f32(s)
    }

    /// Two 8-lane accumulators per x row; w is loaded once per 16 elements for all rows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(x: &[f32], rows: usize, w_row: &[f32], acc: &mut [f32; ROWS_PER_PASS]) {
        let k = w_row.len();
        let body = k - k % 16;
        let wp = w_row.as_ptr();
        let xp = x.as_ptr();
        let mut a0 = [_mm256_setzero_ps(); ROWS_PER_PASS];
        let mut a1 = [_mm256_setzero_ps(); ROWS_PER_PASS];
        let mut p = 0;
        while p < body {
            let w0 = _mm256_loadu_ps(wp.add(p));
            let w1 = _mm256_loadu_ps(wp.add(p + 8));
            for r in 0..rows {
                let xr = xp.add(r * k + p);
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, a0[r]);
                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), w1, a1[r]);
            }
            p += 16;
        }
        for r in 0..rows {
            let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
            for q in body..k {
                s += *xp.add(r * k + q) * *wp.add(q);
            }
            acc[r] = s;
        }
    }
}
