//! CPU references, llm.c style: one plain loop nest per kernel with exactly the kernel's
//! semantics (the same f32 arithmetic, the same points of rounding to the storage type, the same
//! split-K partials and merge), so each GPU kernel is checked against code a reader can verify
//! by eye, and these are in turn checked against `shardline_ops` (tests/reference.rs).
//!
//! Long sums (squares, dot products, softmax denominators) accumulate in f64: the order of a
//! GPU's f32 sum is not part of the semantics, and f64 keeps the reference nearest the exact
//! value. Shapes are checked by the functions the GPU launchers use; a bad shape panics here.

use crate::dtype::{round, KernelDType};
use crate::shape::{
    add_norm_dims, norm_dims, silu_dims, topk_dims, AttentionLens, AttentionShape, QkvShape, RopeLens, TopkLens,
};
use crate::split::{split_range, workspace_len, PARTIAL_HEADER};

/// HF LlamaRMSNorm on rows of `weight.len()`: y = x · rsqrt(mean(x²) + eps) in f32, rounded to
/// T, then multiplied by the weight and rounded again.
pub fn rms_norm<T: KernelDType>(x: &[T], weight: &[T], eps: f32) -> Vec<T> {
    let cols = norm_dims("rms_norm", x.len(), weight.len(), x.len()).expect("rms_norm reference").cols as usize;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let ss: f64 = row.iter().map(|v| (v.to_f32() as f64).powi(2)).sum();
        let inv = 1.0 / (ss as f32 / cols as f32 + eps).sqrt();
        for (v, w) in row.iter().zip(weight) {
            out.push(T::from_f32(round::<T>(v.to_f32() * inv) * w.to_f32()));
        }
    }
    out
}

/// residual = round(residual + delta) in place, then [`rms_norm`] of the new residual.
pub fn add_rms_norm<T: KernelDType>(residual: &mut [T], delta: &[T], weight: &[T], eps: f32) -> Vec<T> {
    add_norm_dims(residual.len(), delta.len(), weight.len(), residual.len()).expect("add_rms_norm reference");
    for (r, d) in residual.iter_mut().zip(delta) {
        *r = T::from_f32(r.to_f32() + d.to_f32());
    }
    rms_norm(residual, weight, eps)
}

/// SwiGLU as HF computes it in T: act = round(silu(gate)), out = round(act · up). Rows of
/// `gate_up` are `[gate | up]`, 2 · inter wide.
pub fn silu_mul<T: KernelDType>(gate_up: &[T], inter: usize) -> Vec<T> {
    silu_dims(gate_up.len(), inter, gate_up.len() / 2).expect("silu_mul reference");
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * inter) {
        let (gate, up) = row.split_at(inter);
        for (g, u) in gate.iter().zip(up) {
            let g = g.to_f32();
            out.push(T::from_f32(round::<T>(g / (1.0 + (-g).exp())) * u.to_f32()));
        }
    }
    out
}

/// The read-only inputs of [`rope_kv_write`].
pub struct RopeInputs<'a, T> {
    /// `[rows, (q_heads + 2 · kv_heads) · head_dim]`: q | k | v, head-major inside each.
    pub qkv: &'a [T],
    /// `[max_pos, head_dim]`: row p holds cos(p·θ_i) for i < head_dim/2, then sin(p·θ_i).
    pub cos_sin: &'a [f32],
    /// `[rows]` position of each row (selects its cos/sin row).
    pub positions: &'a [u32],
    /// `[rows]` KV-cache slot of each row; a slot past the cache (u32::MAX for padding) stores
    /// nothing.
    pub slots: &'a [u32],
}

/// HF rotate_half RoPE of a row's q and k heads, in f32, rounded once to T: q comes back as
/// `[rows, q_heads · head_dim]`; rotated k and plain v go to row `slots[r]` of the caches.
pub fn rope_kv_write<T: KernelDType>(
    shape: &QkvShape,
    inputs: &RopeInputs<T>,
    k_cache: &mut [T],
    v_cache: &mut [T],
) -> Vec<T> {
    let RopeInputs { qkv, cos_sin, positions, slots } = *inputs;
    let lens = RopeLens {
        qkv: qkv.len(),
        cos_sin: cos_sin.len(),
        positions: positions.len(),
        slots: slots.len(),
        q_out: positions.len() * shape.q_width(),
        k_cache: k_cache.len(),
        v_cache: v_cache.len(),
    };
    let dims = shape.rope_dims(&lens).expect("rope_kv_write reference");
    let (qh, kvh, hd) = (shape.num_q_heads, shape.num_kv_heads, shape.head_dim);
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let mut q_out = vec![T::default(); positions.len() * qw];
    for (r, x) in qkv.chunks(shape.qkv_width()).enumerate() {
        let pos = positions[r] as usize;
        assert!(pos < dims.max_pos as usize, "row {r}: position {pos} is outside the cos/sin table");
        let cs = &cos_sin[pos * hd..][..hd];
        for h in 0..qh {
            rotate_half(&x[h * hd..][..hd], cs, &mut q_out[r * qw + h * hd..][..hd]);
        }
        let slot = slots[r] as u64;
        if slot >= dims.num_slots {
            continue;
        }
        let dst = slot as usize * kvw;
        for h in 0..kvh {
            rotate_half(&x[(qh + h) * hd..][..hd], cs, &mut k_cache[dst + h * hd..][..hd]);
        }
        v_cache[dst..dst + kvw].copy_from_slice(&x[(qh + kvh) * hd..][..kvw]);
    }
    q_out
}

/// out[i] = a·c − b·s, out[i + half] = b·c + a·s with a = x[i], b = x[i + half].
fn rotate_half<T: KernelDType>(x: &[T], cos_sin: &[f32], out: &mut [T]) {
    let half = x.len() / 2;
    let (cos, sin) = cos_sin.split_at(half);
    for i in 0..half {
        let (a, b) = (x[i].to_f32(), x[i + half].to_f32());
        out[i] = T::from_f32(a * cos[i] - b * sin[i]);
        out[i + half] = T::from_f32(b * cos[i] + a * sin[i]);
    }
}

/// The read-only inputs of [`paged_attention`].
pub struct AttentionInputs<'a, T> {
    /// `[rows, q_heads, head_dim]`.
    pub q: &'a [T],
    /// `[num_slots, kv_heads · head_dim]` each.
    pub k_cache: &'a [T],
    pub v_cache: &'a [T],
    /// `[num_seqs, max_blocks]`.
    pub block_tables: &'a [u32],
    /// `[rows]` the sequence each query row belongs to.
    pub row_seq: &'a [u32],
    /// `[rows]` row r attends to keys 0..=`positions[r]` of its sequence.
    pub positions: &'a [u32],
    /// `[q_heads]` the KV head each q head reads (GQA, or any map an uneven TP shard needs).
    pub kv_head_of_q: &'a [u32],
}

/// Split-K partials as the GPU's workspace holds them,
/// `[rows, q_heads, num_splits, 2 + head_dim]`: per split the max m of its scores,
/// l = Σ exp(score − m) and acc = Σ exp(score − m) · v over the split's keys (see
/// [`crate::split_range`]). An empty split is (−inf, 0, 0…).
pub fn attention_partials<T: KernelDType>(shape: &AttentionShape, a: &AttentionInputs<T>) -> Vec<f32> {
    let (rows, qh, hd) = (a.row_seq.len(), shape.num_q_heads, shape.head_dim);
    let ns = shape.num_splits;
    let lens = AttentionLens {
        q: a.q.len(),
        k_cache: a.k_cache.len(),
        v_cache: a.v_cache.len(),
        block_tables: a.block_tables.len(),
        row_seq: rows,
        positions: a.positions.len(),
        kv_head_of_q: a.kv_head_of_q.len(),
        workspace: workspace_len(rows, qh, hd, ns),
        out: a.q.len(),
    };
    let dims = shape.dims(&lens).expect("paged_attention reference");
    let (w, bs, stride) = (shape.kv_width(), shape.block_size, PARTIAL_HEADER + hd);
    let mut parts = vec![0.0f32; rows * qh * ns * stride];
    for r in 0..rows {
        let seq = a.row_seq[r] as usize;
        assert!(seq < dims.num_seqs as usize, "row {r}: sequence {seq} has no block table");
        let table = &a.block_tables[seq * shape.max_blocks..][..shape.max_blocks];
        let visible = a.positions[r] as usize + 1;
        assert!(visible <= shape.max_blocks * bs, "row {r}: position {} is past its block table", visible - 1);
        let slot = |j: usize| {
            let s = table[j / bs] as usize * bs + j % bs;
            assert!((s as u64) < dims.num_slots, "row {r}: key {j} maps to slot {s}, outside the cache");
            s
        };
        for h in 0..qh {
            let kv = a.kv_head_of_q[h] as usize * hd;
            assert!(kv < w, "q head {h} maps to a KV head past {}", shape.num_kv_heads);
            let q = &a.q[(r * qh + h) * hd..][..hd];
            for split in 0..ns {
                let (k0, k1) = split_range(split, ns, shape.keys_per_split, visible);
                let scores: Vec<f32> = (k0..k1)
                    .map(|j| {
                        let k = &a.k_cache[slot(j) * w + kv..][..hd];
                        let dot: f64 = q.iter().zip(k).map(|(x, y)| x.to_f32() as f64 * y.to_f32() as f64).sum();
                        dot as f32 * shape.scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut l, mut acc) = (0.0f64, vec![0.0f64; hd]);
                for (j, &s) in (k0..k1).zip(&scores) {
                    let p = ((s - m) as f64).exp();
                    l += p;
                    for (o, v) in acc.iter_mut().zip(&a.v_cache[slot(j) * w + kv..][..hd]) {
                        *o += p * v.to_f32() as f64;
                    }
                }
                let part = &mut parts[((r * qh + h) * ns + split) * stride..][..stride];
                part[0] = m;
                part[1] = l as f32;
                for (o, x) in part[PARTIAL_HEADER..].iter_mut().zip(&acc) {
                    *o = *x as f32;
                }
            }
        }
    }
    parts
}

/// Combines each (row, head)'s split partials: with M the largest m, split s weighs
/// w = exp(m − M) (0 for an empty split, whose m is −inf: exp(−inf − (−inf)) would be NaN), and
/// out = Σ w·acc / Σ w·l, rounded to T (0 if no split saw a key).
pub fn attention_merge<T: KernelDType>(partials: &[f32], head_dim: usize, num_splits: usize) -> Vec<T> {
    let stride = PARTIAL_HEADER + head_dim;
    assert!(partials.len().is_multiple_of(num_splits * stride), "attention_merge reference: partials");
    let mut out = Vec::with_capacity(partials.len() / (num_splits * stride) * head_dim);
    for item in partials.chunks(num_splits * stride) {
        let m = item.chunks(stride).map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> =
            item.chunks(stride).map(|p| if p[0] == f32::NEG_INFINITY { 0.0 } else { (p[0] - m).exp() }).collect();
        let l: f32 = item.chunks(stride).zip(&weights).map(|(p, w)| p[1] * w).sum();
        for d in 0..head_dim {
            let acc: f32 = item.chunks(stride).zip(&weights).map(|(p, w)| p[PARTIAL_HEADER + d] * w).sum();
            out.push(T::from_f32(if l > 0.0 { acc / l } else { 0.0 }));
        }
    }
    out
}

/// softmax(scale · q·Kᵀ) · V over each row's visible keys, `[rows, q_heads, head_dim]`, computed
/// through the split-K partials and merge (one split is the plain softmax).
pub fn paged_attention<T: KernelDType>(shape: &AttentionShape, inputs: &AttentionInputs<T>) -> Vec<T> {
    attention_merge(&attention_partials(shape, inputs), shape.head_dim, shape.num_splits)
}

/// Candidates and statistics of [`logits_topk`], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// `[rows, k]` the chosen logits (NaN reported as −inf), best first.
    pub values: Vec<f32>,
    /// `[rows, k]` their vocabulary ids.
    pub ids: Vec<u32>,
    /// `[rows, 3]`: max logit, logsumexp of the logits, logsumexp of logits · inv_temperature.
    pub stats: Vec<f32>,
}

/// NaN ranks as −inf: never ahead of a real value.
fn key(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l
    }
}

/// The candidates' total order: value descending, lower id first on ties.
fn ranks_before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// max + ln Σ exp(v − max), −inf when every value is −inf.
fn log_sum_exp(values: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    (max as f64 + values.map(|v| ((v - max) as f64).exp()).sum::<f64>().ln()) as f32
}

/// The k best logits of each row by (value desc, id asc), NaN as −inf, found the way the kernel
/// does: k rounds of arg-max, each over the entries ranked after the previous pick.
pub fn logits_topk(logits: &[f32], inv_temperature: &[f32], k: usize) -> TopK {
    let rows = inv_temperature.len();
    let lens =
        TopkLens { logits: logits.len(), inv_temperature: rows, values: rows * k, ids: rows * k, stats: rows * 3 };
    let vocab = topk_dims(&lens, k).expect("logits_topk reference").vocab as usize;
    let mut top = TopK { values: Vec::new(), ids: Vec::new(), stats: Vec::new() };
    for (row, &inv_t) in logits.chunks(vocab.max(1)).zip(inv_temperature) {
        let mut prev: Option<(f32, u32)> = None;
        for _ in 0..k {
            let mut best: Option<(f32, u32)> = None;
            for (i, &l) in row.iter().enumerate() {
                let c = (key(l), i as u32);
                if prev.is_none_or(|p| ranks_before(p, c)) && best.is_none_or(|b| ranks_before(c, b)) {
                    best = Some(c);
                }
            }
            let (v, id) = best.expect("k ≤ vocab leaves a candidate every round");
            top.values.push(v);
            top.ids.push(id);
            prev = best;
        }
        let keys = row.iter().map(|&l| key(l));
        let max = keys.clone().fold(f32::NEG_INFINITY, f32::max);
        top.stats.extend([max, log_sum_exp(keys), log_sum_exp(row.iter().map(|&l| key(l * inv_t)))]);
    }
    top
}
