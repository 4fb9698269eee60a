//! Host-side shapes of the kernels' arguments and the length checks that both the GPU launchers
//! and the CPU references run: a call the reference accepts is exactly one the GPU accepts, and
//! the checks themselves are tested without a GPU.
//!
//! Kernels index with u32 dimensions and 64-bit offsets, so every dimension must fit a u32.

use crate::error::{shape_error, KernelError};
use crate::split::{workspace_len, KEY_TILE, MAX_SPLITS};

/// Widest attention head: each lane of a warp keeps head_dim / 32 ≤ 8 accumulator values.
pub const MAX_HEAD_DIM: usize = 256;
/// Most candidates `logits_topk` returns per row.
pub const MAX_TOPK: usize = 64;

type Result<T> = std::result::Result<T, KernelError>;

/// Heads of one token's fused projection row: `[q heads | k heads | v heads]`, each `head_dim`
/// wide (head-major inside each part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvShape {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvShape {
    /// Elements of one fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Elements of one row of q (and of one row of attention output).
    pub fn q_width(&self) -> usize {
        self.num_q_heads * self.head_dim
    }

    /// Elements of one KV-cache slot (all KV heads), as `shardline_ops::KvLayout::token_width`.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// One paged-attention launch, apart from its buffers. Caches are
/// `[num_slots, num_kv_heads · head_dim]`; block tables `[num_seqs, max_blocks]`; key j of a
/// sequence sits in slot
/// `table[j / block_size] · block_size + j % block_size`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    /// A multiple of 32, at most [`MAX_HEAD_DIM`].
    pub head_dim: usize,
    pub block_size: usize,
    /// Length of each block-table row.
    pub max_blocks: usize,
    /// Multiplies q·k before the softmax (usually head_dim^-1/2).
    pub scale: f32,
    /// 1 (write the output directly) up to [`MAX_SPLITS`]; see [`crate::plan_splits`].
    pub num_splits: usize,
    /// A positive multiple of [`KEY_TILE`].
    pub keys_per_split: usize,
}

impl AttentionShape {
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// `rows` × `cols` of a row-wise kernel, as the kernel receives them.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the GPU launchers
pub(crate) struct RowDims {
    pub rows: u32,
    pub cols: u32,
}

/// Buffer lengths (elements) of a `rope_kv_write` call.
pub(crate) struct RopeLens {
    pub qkv: usize,
    pub cos_sin: usize,
    pub positions: usize,
    pub slots: usize,
    pub q_out: usize,
    pub k_cache: usize,
    pub v_cache: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the GPU launchers
pub(crate) struct RopeDims {
    pub rows: u32,
    pub max_pos: u32,
    pub num_slots: u64,
}

/// Buffer lengths (elements) of a `paged_attention` call.
pub(crate) struct AttentionLens {
    pub q: usize,
    pub k_cache: usize,
    pub v_cache: usize,
    pub block_tables: usize,
    pub row_seq: usize,
    pub positions: usize,
    pub kv_head_of_q: usize,
    pub workspace: usize,
    pub out: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the GPU launchers
pub(crate) struct AttentionDims {
    pub rows: u32,
    pub num_seqs: u32,
    pub num_slots: u64,
}

/// Buffer lengths (elements) of a `logits_topk` call.
pub(crate) struct TopkLens {
    pub logits: usize,
    pub inv_temperature: usize,
    pub values: usize,
    pub ids: usize,
    pub stats: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the GPU launchers
pub(crate) struct TopkDims {
    pub rows: u32,
    pub vocab: u32,
}

fn expect_len(kernel: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_error(kernel, format!("{what} has {got} elements, expected {want}")))
    }
}

/// Rows of a kernel with one block per row: the grid's x dimension holds at most 2^31 − 1.
fn grid_rows(kernel: &'static str, rows: usize) -> Result<u32> {
    if rows > i32::MAX as usize {
        return Err(shape_error(kernel, format!("{rows} rows is more blocks than a grid holds")));
    }
    Ok(rows as u32)
}

fn to_u32(kernel: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape_error(kernel, format!("{what} = {v} does not fit the kernel's u32")))
}

/// `rows` of a buffer of `len` elements in rows of `width`.
fn whole_rows(kernel: &'static str, what: &str, len: usize, width: usize) -> Result<usize> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(shape_error(kernel, format!("{what} has {len} elements, not whole rows of {width}")));
    }
    Ok(len / width)
}

/// x `[rows, cols]`, weight `[cols]`, out `[rows, cols]`.
pub(crate) fn norm_dims(kernel: &'static str, x: usize, weight: usize, out: usize) -> Result<RowDims> {
    let rows = whole_rows(kernel, "x", x, weight)?;
    expect_len(kernel, "out", out, x)?;
    Ok(RowDims { rows: grid_rows(kernel, rows)?, cols: to_u32(kernel, "cols", weight)? })
}

/// residual and delta `[rows, cols]`, weight `[cols]`, out `[rows, cols]`.
pub(crate) fn add_norm_dims(residual: usize, delta: usize, weight: usize, out: usize) -> Result<RowDims> {
    expect_len("add_rms_norm", "delta", delta, residual)?;
    norm_dims("add_rms_norm", residual, weight, out)
}

/// gate_up `[rows, 2·inter]`, out `[rows, inter]`.
pub(crate) fn silu_dims(gate_up: usize, inter: usize, out: usize) -> Result<RowDims> {
    let rows = whole_rows("silu_mul", "out", out, inter)?;
    expect_len("silu_mul", "gate_up", gate_up, 2 * out)?;
    Ok(RowDims { rows: to_u32("silu_mul", "rows", rows)?, cols: to_u32("silu_mul", "inter", inter)? })
}

impl QkvShape {
    pub(crate) fn rope_dims(&self, l: &RopeLens) -> Result<RopeDims> {
        const K: &str = "rope_kv_write";
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.num_q_heads == 0 || self.num_kv_heads == 0 {
            return Err(shape_error(K, format!("{self:?}: needs heads and an even head_dim")));
        }
        let rows = l.positions;
        expect_len(K, "slots", l.slots, rows)?;
        expect_len(K, "qkv", l.qkv, rows * self.qkv_width())?;
        expect_len(K, "q_out", l.q_out, rows * self.q_width())?;
        let max_pos = whole_rows(K, "cos_sin", l.cos_sin, self.head_dim)?;
        let num_slots = whole_rows(K, "k_cache", l.k_cache, self.kv_width())?;
        expect_len(K, "v_cache", l.v_cache, l.k_cache)?;
        to_u32(K, "qkv width", self.qkv_width())?;
        Ok(RopeDims { rows: grid_rows(K, rows)?, max_pos: to_u32(K, "max_pos", max_pos)?, num_slots: num_slots as u64 })
    }
}

impl AttentionShape {
    pub(crate) fn dims(&self, l: &AttentionLens) -> Result<AttentionDims> {
        const K: &str = "paged_attention";
        let s = self;
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(32) || s.head_dim > MAX_HEAD_DIM {
            return Err(shape_error(
                K,
                format!("head_dim {} is not a multiple of 32 up to {MAX_HEAD_DIM}", s.head_dim),
            ));
        }
        if s.num_q_heads == 0 || s.num_kv_heads == 0 || s.block_size == 0 || s.max_blocks == 0 {
            return Err(shape_error(K, format!("{s:?}: heads, block_size and max_blocks must be positive")));
        }
        if !(1..=MAX_SPLITS).contains(&s.num_splits)
            || s.keys_per_split == 0
            || !s.keys_per_split.is_multiple_of(KEY_TILE)
        {
            return Err(shape_error(
                K,
                format!(
                    "{} splits of {} keys: needs 1..={MAX_SPLITS} splits of a positive multiple of {KEY_TILE}",
                    s.num_splits, s.keys_per_split
                ),
            ));
        }
        // Key indices (up to the table's capacity, and up to the splits' end) are u32 on the GPU.
        to_u32(K, "max_blocks · block_size", s.max_blocks * s.block_size)?;
        to_u32(K, "num_splits · keys_per_split", s.num_splits * s.keys_per_split)?;
        let rows = l.row_seq;
        expect_len(K, "positions", l.positions, rows)?;
        expect_len(K, "q", l.q, rows * s.num_q_heads * s.head_dim)?;
        expect_len(K, "out", l.out, l.q)?;
        expect_len(K, "kv_head_of_q", l.kv_head_of_q, s.num_q_heads)?;
        let num_seqs = whole_rows(K, "block_tables", l.block_tables, s.max_blocks)?;
        let num_slots = whole_rows(K, "k_cache", l.k_cache, s.kv_width())?;
        expect_len(K, "v_cache", l.v_cache, l.k_cache)?;
        let need = workspace_len(rows, s.num_q_heads, s.head_dim, s.num_splits);
        if l.workspace < need {
            return Err(shape_error(
                K,
                format!("workspace has {} f32s, {} splits need {need}", l.workspace, s.num_splits),
            ));
        }
        // One block per (row, head) in the grid's x dimension (at most 2^31 − 1).
        if rows * s.num_q_heads > i32::MAX as usize {
            return Err(shape_error(K, format!("{rows} rows × {} heads is too many blocks", s.num_q_heads)));
        }
        Ok(AttentionDims {
            rows: to_u32(K, "rows", rows)?,
            num_seqs: to_u32(K, "num_seqs", num_seqs)?,
            num_slots: num_slots as u64,
        })
    }
}

/// logits `[rows, vocab]`, inv_temperature `[rows]`, values and ids `[rows, k]`, stats `[rows, 3]`.
pub(crate) fn topk_dims(l: &TopkLens, k: usize) -> Result<TopkDims> {
    const K: &str = "logits_topk";
    let rows = l.inv_temperature;
    if rows == 0 && l.logits != 0 || rows > 0 && !l.logits.is_multiple_of(rows) {
        return Err(shape_error(K, format!("logits has {} elements, not {rows} whole rows", l.logits)));
    }
    let vocab = l.logits.checked_div(rows).unwrap_or(0);
    // Ids are u32 and u32::MAX marks "nothing chosen yet" inside the kernel.
    if rows > 0 && (k == 0 || k > MAX_TOPK || k > vocab || vocab >= u32::MAX as usize) {
        return Err(shape_error(
            K,
            format!("k = {k} with a vocabulary of {vocab}: needs 1 ≤ k ≤ min({MAX_TOPK}, vocab)"),
        ));
    }
    expect_len(K, "values", l.values, rows * k)?;
    expect_len(K, "ids", l.ids, rows * k)?;
    expect_len(K, "stats", l.stats, rows * 3)?;
    Ok(TopkDims { rows: grid_rows(K, rows)?, vocab: to_u32(K, "vocab", vocab)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attention() -> AttentionShape {
        AttentionShape {
            num_q_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            max_blocks: 8,
            scale: 0.125,
            num_splits: 2,
            keys_per_split: 128,
        }
    }

    fn lens(rows: usize, s: &AttentionShape) -> AttentionLens {
        let q = rows * s.num_q_heads * s.head_dim;
        AttentionLens {
            q,
            k_cache: 100 * s.kv_width(),
            v_cache: 100 * s.kv_width(),
            block_tables: 3 * s.max_blocks,
            row_seq: rows,
            positions: rows,
            kv_head_of_q: s.num_q_heads,
            workspace: workspace_len(rows, s.num_q_heads, s.head_dim, s.num_splits),
            out: q,
        }
    }

    #[test]
    fn attention_checks_name_what_is_wrong() {
        let s = attention();
        let d = s.dims(&lens(5, &s)).unwrap();
        assert_eq!((d.rows, d.num_seqs, d.num_slots), (5, 3, 100));
        let err = |s: AttentionShape, l: AttentionLens| s.dims(&l).err().expect("rejected").to_string();
        assert!(err(AttentionShape { head_dim: 48, ..s }, lens(5, &s)).contains("head_dim 48"));
        assert!(err(AttentionShape { head_dim: 288, ..s }, lens(5, &s)).contains("head_dim 288"));
        assert!(err(AttentionShape { keys_per_split: 100, ..s }, lens(5, &s)).contains("multiple of 128"));
        assert!(err(AttentionShape { num_splits: 0, ..s }, lens(5, &s)).contains("splits"));
        assert!(err(AttentionShape { num_splits: MAX_SPLITS + 1, ..s }, lens(5, &s)).contains("splits"));
        assert!(err(s, AttentionLens { positions: 4, ..lens(5, &s) }).contains("positions has 4"));
        assert!(err(s, AttentionLens { kv_head_of_q: 2, ..lens(5, &s) }).contains("kv_head_of_q"));
        assert!(err(s, AttentionLens { v_cache: 7, ..lens(5, &s) }).contains("v_cache"));
        assert!(err(s, AttentionLens { block_tables: 9, ..lens(5, &s) }).contains("block_tables"));
        assert!(err(s, AttentionLens { workspace: 10, ..lens(5, &s) }).contains("workspace"));
        let one = AttentionShape { num_splits: 1, ..s };
        assert!(one.dims(&AttentionLens { workspace: 0, ..lens(5, &one) }).is_ok(), "one split needs no workspace");
    }

    #[test]
    fn row_kernel_checks() {
        assert_eq!(norm_dims("rms_norm", 12, 4, 12).unwrap().rows, 3);
        assert!(norm_dims("rms_norm", 12, 5, 12).is_err());
        assert!(norm_dims("rms_norm", 12, 4, 8).is_err());
        assert!(norm_dims("rms_norm", 0, 0, 0).is_err());
        assert!(add_norm_dims(12, 8, 4, 12).is_err());
        assert_eq!(silu_dims(12, 3, 6).unwrap().rows, 2);
        assert!(silu_dims(12, 3, 3).is_err());
        let q = QkvShape { num_q_heads: 3, num_kv_heads: 1, head_dim: 4 };
        let l = RopeLens { qkv: 2 * 20, cos_sin: 10 * 4, positions: 2, slots: 2, q_out: 24, k_cache: 32, v_cache: 32 };
        let d = q.rope_dims(&l).unwrap();
        assert_eq!((d.rows, d.max_pos, d.num_slots), (2, 10, 8));
        assert!(QkvShape { head_dim: 5, ..q }.rope_dims(&l).is_err());
        assert!(q.rope_dims(&RopeLens { slots: 3, ..l }).is_err());
    }

    #[test]
    fn topk_checks() {
        let l = TopkLens { logits: 2 * 100, inv_temperature: 2, values: 10, ids: 10, stats: 6 };
        assert_eq!(topk_dims(&l, 5).unwrap().vocab, 100);
        assert!(topk_dims(&l, 0).is_err());
        assert!(topk_dims(&TopkLens { values: 2 * 65, ids: 2 * 65, ..l }, 65).is_err());
        assert!(topk_dims(&TopkLens { logits: 2 * 3, values: 8, ids: 8, ..l }, 4).is_err(), "k > vocab");
        assert!(topk_dims(&TopkLens { stats: 4, ..l }, 5).is_err());
    }
}
