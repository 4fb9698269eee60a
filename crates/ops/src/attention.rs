//! Paged attention over a block-table KV cache (PagedAttention, Kwon et al. 2023), for ragged
//! batches mixing prefill chunks and decodes.
//!
//! A layer's K (and V) cache is [num_blocks, block_size, num_kv_heads, head_dim]; position p of
//! a sequence lives in block `block_table[p / block_size]` at offset `p % block_size`, i.e. in
//! slot `block * block_size + offset`.
//!
//! Work items are (span, q head, chunk of query rows), spread over the threads. Every query row
//! goes the same way, row by row over each block's run of slots (the inner loops live in
//! `attn_kernels`), whether it is a decode or one of a prompt's rows. So a row's output does not
//! depend on the step it was computed in: recomputing a sequence after a preemption or a rank's
//! recovery rebuilds its KV cache bit for bit, and seeded sampling resumes unchanged. (Prompts of
//! 32+ rows used to take two GEMMs per chunk of rows: 4% faster prefill at 512 tokens, but their
//! sums were ordered differently, so a recomputed generated row drifted in the last bits.)

#[cfg(target_arch = "x86_64")]
use crate::attn_kernels::Avx2;
use crate::attn_kernels::{AttnKernels, Portable};
use crate::out_ptr::OutPtr;

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
    /// Calls `f(p, first_slot, n)` for each run of positions p..p+n (n ≤ block_size) among
    /// 0..visible that share a block, in order: slots within a block are consecutive, so inner
    /// loops run over plain strided memory with no division per position.
    #[inline]
    fn for_each_run(&self, visible: usize, block_size: usize, mut f: impl FnMut(usize, usize, usize)) {
        for (b, &block) in self.block_table.iter().take(visible.div_ceil(block_size)).enumerate() {
            let p = b * block_size;
            f(p, block as usize * block_size, block_size.min(visible - p));
        }
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

/// Query rows per work item: enough to amortize scheduling, few enough to balance a prefill.
const ROWS_PER_ITEM: usize = 16;

/// Everything a work item reads, plus the inner-loop implementation.
struct Ctx<'a, K> {
    kern: K,
    q: &'a [f32],
    q_width: usize,
    kv_head_of_q: &'a [usize],
    layout: &'a KvLayout,
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    scale: f32,
    out: OutPtr,
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
    assert!(k_cache.len() == v_cache.len(), "paged_attention: cache shapes");
    for s in spans {
        assert!(s.q_len <= s.context_len && (s.q_start + s.q_len) * q_width <= q.len(), "paged_attention: span");
        assert!(s.block_table.len() * layout.block_size >= s.context_len, "paged_attention: block table too short");
    }
    // SAFETY: each work item writes only its own (row, head) slices of `out`, and all finish
    // before this function returns.
    let out = unsafe { OutPtr::new(out) };
    #[cfg(target_arch = "x86_64")]
    if let Some(kern) = Avx2::detect() {
        let ctx = Ctx { kern, q, q_width, kv_head_of_q, layout, k_cache, v_cache, scale, out };
        return run(&ctx, spans);
    }
    run(&Ctx { kern: Portable, q, q_width, kv_head_of_q, layout, k_cache, v_cache, scale, out }, spans);
}

thread_local! {
    /// A thread's scores buffer for `attend_rows`, reused across items and steps.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Splits the batch into independent (span, head, row chunk) items across the threads.
fn run<K: AttnKernels>(c: &Ctx<K>, spans: &[SeqSpan]) {
    let heads = c.kv_head_of_q.len();
    let mut items = Vec::new();
    for (si, s) in spans.iter().enumerate() {
        for h in 0..heads {
            for r0 in (0..s.q_len).step_by(ROWS_PER_ITEM) {
                items.push((si, h, r0, (r0 + ROWS_PER_ITEM).min(s.q_len)));
            }
        }
    }
    crate::team::for_each(items.len(), |i| {
        let (si, h, r0, r1) = items[i];
        SCORES.with_borrow_mut(|scores| {
            // SAFETY: this item alone writes head h of rows r0..r1 of the span.
            unsafe { attend_rows(c, &spans[si], h, r0, r1, scores) };
        });
    });
}

/// Rows r0..r1 of a span for q head h: scores of every visible key, stable softmax, then the
/// probability-weighted sum of V rows, block by block.
///
/// # Safety
/// No other thread may touch head h of rows r0..r1 of the span in `c.out`.
unsafe fn attend_rows<K: AttnKernels>(c: &Ctx<K>, s: &SeqSpan, h: usize, r0: usize, r1: usize, scores: &mut Vec<f32>) {
    let hd = c.layout.head_dim;
    let w = c.layout.token_width();
    let kv_off = c.kv_head_of_q[h] * hd;
    let bs = c.layout.block_size;
    for r in r0..r1 {
        let row = s.q_start + r;
        let visible = s.context_len - s.q_len + r + 1;
        let qv = &c.q[row * c.q_width + h * hd..][..hd];
        scores.clear();
        scores.resize(visible, 0.0);
        s.for_each_run(visible, bs, |p, slot, n| {
            c.kern.qk(qv, &c.k_cache[slot * w + kv_off..], w, c.scale, &mut scores[p..p + n]);
        });
        c.kern.softmax(scores);
        let o = std::slice::from_raw_parts_mut(c.out.get().add(row * c.q_width + h * hd), hd);
        o.fill(0.0);
        s.for_each_run(visible, bs, |p, slot, n| {
            c.kern.pv(&scores[p..p + n], &c.v_cache[slot * w + kv_off..], w, o);
        });
    }
}
