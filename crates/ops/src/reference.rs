//! Naive, obviously-correct versions of every kernel, in f64 where it helps: the ground truth
//! for tests and a baseline for benchmarks.

use crate::attention::{KvLayout, SeqSpan};

pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() as f32;
        }
    }
    out
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    x.chunks(n)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(weight).map(move |(&v, &w)| (v as f64 * inv * w as f64) as f32)
        })
        .collect()
}

pub fn rope_rotate_half(x: &[f32], num_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for t in 0..x.len() / (num_heads * head_dim) {
        for h in 0..num_heads {
            let base = (t * num_heads + h) * head_dim;
            for i in 0..half {
                let (c, s) = (cos[t * half + i], sin[t * half + i]);
                out[base + i] = x[base + i] * c - x[base + i + half] * s;
                out[base + i + half] = x[base + i + half] * c + x[base + i] * s;
            }
        }
    }
    out
}

pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * inter)
        .flat_map(|row| {
            (0..inter).map(move |i| {
                let g = row[i] as f64;
                (g / (1.0 + (-g).exp()) * row[inter + i] as f64) as f32
            })
        })
        .collect()
}

/// Attention computed from contiguous per-position K/V gathered through the block tables.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &[f32],
    num_q_heads: usize,
    kv_head_of_q: &[usize],
    spans: &[SeqSpan],
    layout: &KvLayout,
    k_cache: &[f32],
    v_cache: &[f32],
    scale: f32,
) -> Vec<f32> {
    let hd = layout.head_dim;
    let w = layout.num_kv_heads * hd;
    let mut out = vec![0.0f32; q.len()];
    for s in spans {
        let slot = |p: usize| s.block_table[p / layout.block_size] as usize * layout.block_size + p % layout.block_size;
        for r in 0..s.q_len {
            let row = s.q_start + r;
            let pos = s.context_len - s.q_len + r;
            for h in 0..num_q_heads {
                let kvh = kv_head_of_q[h];
                let qv = &q[(row * num_q_heads + h) * hd..][..hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        let kv = &k_cache[slot(p) * w + kvh * hd..][..hd];
                        qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (0..=pos).map(|p| exps[p] / sum * v_cache[slot(p) * w + kvh * hd + d] as f64).sum();
                    out[(row * num_q_heads + h) * hd + d] = acc as f32;
                }
            }
        }
    }
    out
}
