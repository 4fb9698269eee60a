//! Row-wise kernels: RMSNorm, rotary embedding, SwiGLU, residual and bias adds. They are cheap
//! next to the matmuls; they only need to stay out of the way (no allocation, vectorizable loops).

use rayon::prelude::*;

/// Rows at or above this many elements in total are split across threads.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// LlamaRMSNorm per row of length `weight.len()`: x · rsqrt(mean(x²) + eps) · weight.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    assert!(n > 0 && x.len().is_multiple_of(n) && out.len() == x.len(), "rms_norm: shapes");
    let row = |(xr, or): (&[f32], &mut [f32])| {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / n as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    };
    if x.len() >= PAR_MIN_ELEMS {
        x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(row);
    } else {
        x.chunks(n).zip(out.chunks_mut(n)).for_each(row);
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
    let row = |(g, o): (&[f32], &mut [f32])| {
        let (gate, up) = g.split_at(inter);
        for ((o, &a), &b) in o.iter_mut().zip(gate).zip(up) {
            *o = a / (1.0 + (-a).exp()) * b;
        }
    };
    if out.len() >= PAR_MIN_ELEMS {
        gate_up.par_chunks(2 * inter).zip(out.par_chunks_mut(inter)).for_each(row);
    } else {
        gate_up.chunks(2 * inter).zip(out.chunks_mut(inter)).for_each(row);
    }
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
