//! Row-wise kernels: RMSNorm, rotary embedding, SwiGLU, residual and bias adds. They are cheap
//! next to the matmuls; they only need to stay out of the way (no allocation, vectorizable loops).
//! RMSNorm and SwiGLU get AVX2 paths: a serial f32 sum and a scalar libm exp per element made
//! them cost several milliseconds per layer at 512-row prefill.

use rayon::prelude::*;

use crate::simd::has_avx2_fma;

/// Rows at or above this many elements in total are split across threads.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// LlamaRMSNorm per row of length `weight.len()`: x · rsqrt(mean(x²) + eps) · weight.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    assert!(n > 0 && x.len().is_multiple_of(n) && out.len() == x.len(), "rms_norm: shapes");
    let simd = has_avx2_fma();
    let row = |(xr, or): (&[f32], &mut [f32])| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 and FMA were detected; the three slices have length n.
            return unsafe { avx2::rms_norm_row(xr, weight, eps, or) };
        }
        rms_norm_row(xr, weight, eps, or)
    };
    if x.len() >= PAR_MIN_ELEMS {
        x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(row);
    } else {
        x.chunks(n).zip(out.chunks_mut(n)).for_each(row);
    }
}

fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // Eight partial sums vectorize; a single f32 accumulator would be one serial chain.
    let mut lanes = [0.0f32; 8];
    let body = x.len() - x.len() % 8;
    for c in x[..body].chunks_exact(8) {
        for l in 0..8 {
            lanes[l] += c[l] * c[l];
        }
    }
    let ss = lanes.iter().sum::<f32>() + x[body..].iter().map(|v| v * v).sum::<f32>();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// Rotates `x` [T, num_heads, head_dim] in place by per-row angles: `cos`/`sin` are
/// [T, head_dim/2]. HF's rotate_half convention pairs dimension i with i + head_dim/2.
pub fn rope_rotate_half(x: &mut [f32], num_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let width = num_heads * head_dim;
    let rows = x.len() / width;
    assert!(x.len() == rows * width && cos.len() == rows * half && sin.len() == cos.len(), "rope: shapes");
    for (t, xr) in x.chunks_mut(width).enumerate() {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in xr.chunks_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

/// SwiGLU: each row of `gate_up` is [gate | up] (2 · inter wide); out = silu(gate) · up.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    assert!(inter > 0 && gate_up.len() == 2 * out.len() && out.len().is_multiple_of(inter), "silu_mul: shapes");
    let simd = has_avx2_fma();
    let row = |(g, o): (&[f32], &mut [f32])| {
        let (gate, up) = g.split_at(inter);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 and FMA were detected; gate, up and o all have length inter.
            return unsafe { avx2::silu_mul_row(gate, up, o) };
        }
        for ((o, &a), &b) in o.iter_mut().zip(gate).zip(up) {
            *o = silu(a) * b;
        }
    };
    if out.len() >= PAR_MIN_ELEMS {
        gate_up.par_chunks(2 * inter).zip(out.par_chunks_mut(inter)).for_each(row);
    } else {
        gate_up.chunks(2 * inter).zip(out.chunks_mut(inter)).for_each(row);
    }
}

#[inline]
fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// a += b.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "add_inplace: lengths");
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    assert!(!bias.is_empty() && x.len().is_multiple_of(bias.len()), "add_bias: shapes");
    for row in x.chunks_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::simd::avx2::{exp, hsum};

    /// Same arithmetic as `rms_norm_row` (x · inv, then · weight), 16 floats a step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let n = x.len();
        debug_assert!(weight.len() == n && out.len() == n);
        let (xp, wp, op) = (x.as_ptr(), weight.as_ptr(), out.as_mut_ptr());
        let body = n - n % 16;
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..body).step_by(16) {
            let (v0, v1) = (_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(xp.add(i + 8)));
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
        }
        let ss = hsum(_mm256_add_ps(a0, a1)) + x[body..].iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (ss / n as f32 + eps).sqrt();
        let vinv = _mm256_set1_ps(inv);
        let body8 = n - n % 8;
        for i in (0..body8).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(xp.add(i)), vinv);
            _mm256_storeu_ps(op.add(i), _mm256_mul_ps(_mm256_loadu_ps(wp.add(i)), v));
        }
        for i in body8..n {
            out[i] = weight[i] * (x[i] * inv);
        }
    }

    /// out = gate / (1 + exp(-gate)) · up, 8 lanes a step with a polynomial exp.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        debug_assert!(gate.len() == n && up.len() == n);
        let body = n - n % 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..body).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        for i in body..n {
            out[i] = super::silu(gate[i]) * up[i];
        }
    }
}
