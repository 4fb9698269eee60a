//! Paged attention over a block-table KV cache (PagedAttention, Kwon et al. 2023), for ragged
//! batches mixing prefill chunks and decodes.
//!
//! A layer's K (and V) cache is [num_blocks, block_size, num_kv_heads, head_dim]; position p of
//! a sequence lives in block `block_table[p / block_size]` at offset `p % block_size`, i.e. in
//! slot `block * block_size + offset`.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Floats per cached token (all KV heads).
    pub fn token_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// One sequence's rows of a batch: rows `q_start..q_start + q_len` are its last `q_len`
/// positions, so row i sits at position `context_len - q_len + i` and sees positions up to it.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpan<'a> {
    pub q_start: usize,
    pub q_len: usize,
    pub context_len: usize,
    pub block_table: &'a [u32],
}

impl SeqSpan<'_> {
    fn slot(&self, pos: usize, block_size: usize) -> usize {
        self.block_table[pos / block_size] as usize * block_size + pos % block_size
    }
}

/// Stores k/v rows [T, num_kv_heads, head_dim] at their slots.
pub fn write_kv(k: &[f32], v: &[f32], slots: &[u32], layout: &KvLayout, k_cache: &mut [f32], v_cache: &mut [f32]) {
    let w = layout.token_width();
    assert!(k.len() == slots.len() * w && v.len() == k.len(), "write_kv: shapes");
    for (t, &slot) in slots.iter().enumerate() {
        let dst = slot as usize * w;
        assert!(dst + w <= k_cache.len() && k_cache.len() == v_cache.len(), "write_kv: slot {slot} outside the cache");
        k_cache[dst..dst + w].copy_from_slice(&k[t * w..(t + 1) * w]);
        v_cache[dst..dst + w].copy_from_slice(&v[t * w..(t + 1) * w]);
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each work item writes only its own (row, head) slices of `out`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Query rows per work item: enough to amortize scheduling, few enough to balance a prefill.
const ROWS_PER_ITEM: usize = 16;
/// Spans with at least this many query rows use the GEMM formulation.
const GEMM_MIN_ROWS: usize = 32;

#[derive(Default)]
struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

/// Head `h` of one span as S = Q·Kᵀ (gemm), causal softmax, O = S·V (gemm, written in place).
///
/// # Safety
/// `out` must point to a [T, q_width] buffer of which this call alone writes head `h` of the
/// span's rows.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_gemm(
    q: &[f32],
    q_width: usize,
    s: &SeqSpan,
    h: usize,
    kv_head: usize,
    layout: &KvLayout,
    k_cache: &[f32],
    v_cache: &[f32],
    scale: f32,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let (hd, ctx, rows) = (layout.head_dim, s.context_len, s.q_len);
    let w = layout.token_width();
    // Gather this KV head's context into contiguous [ctx, hd] matrices.
    for (buf, cache) in [(&mut scratch.keys, k_cache), (&mut scratch.values, v_cache)] {
        buf.clear();
        for p in 0..ctx {
            let base = s.slot(p, layout.block_size) * w + kv_head * hd;
            buf.extend_from_slice(&cache[base..base + hd]);
        }
    }
    scratch.scores.clear();
    scratch.scores.resize(rows * ctx, 0.0);
    let q0 = q.as_ptr().add(s.q_start * q_width + h * hd);
    gemm::gemm(
        rows, ctx, hd,
        scratch.scores.as_mut_ptr(), 1, ctx as isize, false,
        q0, 1, q_width as isize,
        scratch.keys.as_ptr(), hd as isize, 1,
        0.0, scale, false, false, false, gemm::Parallelism::None,
    );
    for (r, row) in scratch.scores.chunks_mut(ctx).enumerate() {
        let visible = ctx - rows + r + 1;
        let max = row[..visible].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in &mut row[..visible] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row[..visible].iter_mut().for_each(|v| *v *= inv);
        row[visible..].fill(0.0);
    }
    gemm::gemm(
        rows, hd, ctx,
        out.add(s.q_start * q_width + h * hd), 1, q_width as isize, false,
        scratch.scores.as_ptr(), 1, ctx as isize,
        scratch.values.as_ptr(), 1, hd as isize,
        0.0, 1.0, false, false, false, gemm::Parallelism::None,
    );
}

/// Causal attention of q [T, num_q_heads, head_dim] over each span's cached context; q head h
/// reads KV head `kv_head_of_q[h]`. Writes out [T, num_q_heads, head_dim].
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
    out: &mut [f32],
) {
    let hd = layout.head_dim;
    let q_width = num_q_heads * hd;
    assert!(q.len() == out.len() && q.len().is_multiple_of(q_width), "paged_attention: q/out shapes");
    assert!(kv_head_of_q.len() == num_q_heads, "paged_attention: head map");
    assert!(kv_head_of_q.iter().all(|&h| h < layout.num_kv_heads), "paged_attention: head map");
    for s in spans {
        assert!(s.q_len <= s.context_len && (s.q_start + s.q_len) * q_width <= q.len(), "paged_attention: span");
        assert!(s.block_table.len() * layout.block_size >= s.context_len, "paged_attention: block table too short");
    }
    let dst = OutPtr(out.as_mut_ptr());
    // Long prefill spans run as two small GEMMs per head; the rest row by row.
    let (long, short): (Vec<usize>, Vec<usize>) = (0..spans.len()).partition(|&i| spans[i].q_len >= GEMM_MIN_ROWS);
    let long_items: Vec<(usize, usize)> = long.iter().flat_map(|&si| (0..num_q_heads).map(move |h| (si, h))).collect();
    long_items.par_iter().for_each_init(Scratch::default, |scratch, &(si, h)| {
        // SAFETY: this item alone writes head h of the span's rows.
        unsafe { attend_gemm(q, q_width, &spans[si], h, kv_head_of_q[h], layout, k_cache, v_cache, scale, dst.get(), scratch) };
    });
    let mut items = Vec::new();
    for &si in &short {
        let s = &spans[si];
        for h in 0..num_q_heads {
            for r0 in (0..s.q_len).step_by(ROWS_PER_ITEM) {
                items.push((si, h, r0, (r0 + ROWS_PER_ITEM).min(s.q_len)));
            }
        }
    }
    items.par_iter().for_each_init(Vec::new, |scores, &(si, h, r0, r1)| {
        let s = &spans[si];
        let kv_off = kv_head_of_q[h] * hd;
        let w = layout.token_width();
        for r in r0..r1 {
            let row = s.q_start + r;
            let pos = s.context_len - s.q_len + r;
            let qv = &q[row * q_width + h * hd..row * q_width + (h + 1) * hd];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for p in 0..=pos {
                let base = s.slot(p, layout.block_size) * w + kv_off;
                let sc = dot(qv, &k_cache[base..base + hd]) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0.0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            // SAFETY: (row, h) belongs to this item only; the slice lies inside out.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(row * q_width + h * hd), hd) };
            o.fill(0.0);
            for (p, &pr) in scores.iter().enumerate() {
                let base = s.slot(p, layout.block_size) * w + kv_off;
                let weight = pr * inv;
                for (od, &vd) in o.iter_mut().zip(&v_cache[base..base + hd]) {
                    *od += weight * vd;
                }
            }
        }
    });
}

/// Dot product with eight independent partial sums (vectorizes without fast-math).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let body = a.len() - a.len() % 8;
    for (x, y) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + a[body..].iter().zip(&b[body..]).map(|(x, y)| x * y).sum::<f32>()
}
