//! Launchers of kernels/paged_attention.cu: paged attention over a whole ragged step, and the
//! merge of its split-K partials.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, PushKernelArg};

use super::{config, Kernels};
use crate::dtype::KernelDType;
use crate::error::{shape_error, KernelError};
use crate::launch;
use crate::shape::{AttentionLens, AttentionShape};
use crate::split::{workspace_len, MAX_SPLITS, PARTIAL_HEADER};

/// The read-only inputs of [`Kernels::paged_attention`], as [`crate::reference::AttentionInputs`].
pub struct AttentionInputs<'a, T> {
    /// `[rows, q_heads, head_dim]`.
    pub q: CudaView<'a, T>,
    /// `[num_slots, kv_heads · head_dim]` each; k_cache must start 16-byte aligned (the kernel
    /// reads keys 16 bytes at a time). Allocations are; so is any layer of a larger cache.
    pub k_cache: CudaView<'a, T>,
    pub v_cache: CudaView<'a, T>,
    /// `[num_seqs, max_blocks]`.
    pub block_tables: CudaView<'a, u32>,
    /// `[rows]` the sequence of each query row (any order, any mix of prefill and decode rows).
    pub row_seq: CudaView<'a, u32>,
    /// `[rows]` row r sees keys 0..=`positions[r]`.
    pub positions: CudaView<'a, u32>,
    /// `[q_heads]` the KV head each q head reads.
    pub kv_head_of_q: CudaView<'a, u32>,
}

impl Kernels {
    /// [`crate::reference::paged_attention`]: out `[rows, q_heads, head_dim]` = softmax(scale ·
    /// q·Kᵀ)·V over each row's visible keys, every sequence of the step in one launch. With
    /// `shape.num_splits > 1` (see [`crate::plan_splits`]) the partials go to `workspace`
    /// (at least [`workspace_len`] f32s) and a second launch merges them; with one split
    /// `workspace` may be `None`.
    pub fn paged_attention<T: KernelDType>(
        &self,
        stream: &CudaStream,
        shape: &AttentionShape,
        inputs: &AttentionInputs<T>,
        mut workspace: Option<&mut CudaViewMut<f32>>,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        const K: &str = "paged_attention";
        let AttentionInputs { q, k_cache, v_cache, block_tables, row_seq, positions, kv_head_of_q } = inputs;
        let lens = AttentionLens {
            q: q.len(),
            k_cache: k_cache.len(),
            v_cache: v_cache.len(),
            block_tables: block_tables.len(),
            row_seq: row_seq.len(),
            positions: positions.len(),
            kv_head_of_q: kv_head_of_q.len(),
            workspace: workspace.as_ref().map_or(0, |w| w.len()),
            out: out.len(),
        };
        let d = shape.dims(&lens)?;
        if d.rows == 0 {
            return Ok(());
        }
        let (ptr, _record) = k_cache.device_ptr(stream);
        if !ptr.is_multiple_of(16) {
            return Err(shape_error(K, format!("k_cache starts at {ptr:#x}, not 16-byte aligned")));
        }
        let u = |v: usize| v as u32; // every dimension was checked to fit
        let (qh, kvh, hd) = (u(shape.num_q_heads), u(shape.num_kv_heads), u(shape.head_dim));
        let (block_size, max_blocks) = (u(shape.block_size), u(shape.max_blocks));
        let (splits, keys_per_split) = (u(shape.num_splits), u(shape.keys_per_split));
        // With one split the kernel never touches `partials`: a null pointer stands in.
        let null: u64 = 0;
        let mut builder = stream.launch_builder(self.paged_attention.get::<T>());
        builder.arg(q).arg(k_cache).arg(v_cache).arg(block_tables).arg(row_seq).arg(positions).arg(kv_head_of_q);
        builder.arg(&mut *out);
        match workspace.as_deref_mut() {
            Some(w) => builder.arg(w),
            None => builder.arg(&null),
        };
        builder.arg(&qh).arg(&kvh).arg(&hd).arg(&block_size).arg(&max_blocks).arg(&d.num_seqs).arg(&d.num_slots);
        builder.arg(&shape.scale).arg(&splits).arg(&keys_per_split);
        // SAFETY: `dims` checked q and out against rows × q_heads × head_dim, row_seq and
        // positions against rows, kv_head_of_q against q_heads, the caches against whole slots,
        // the block tables against whole rows of max_blocks, head_dim (multiple of 32, ≤ 256,
        // the kernel's shared arrays), the split count (≤ MAX_SPLITS) and, with more than one
        // split, the workspace against workspace_len; k_cache's alignment was checked above.
        // The kernel bounds-checks every sequence, head and block-table entry it reads against
        // num_seqs, num_kv_heads and num_slots. Arguments match `paged_attention_<T>(q,
        // k_cache, v_cache, block_tables, row_seq, positions, kv_head_of_q, out, partials,
        // num_q_heads, num_kv_heads, head_dim, block_size, max_blocks, num_seqs, num_slots,
        // scale, num_splits, keys_per_split)`.
        unsafe { builder.launch(config(launch::paged_attention(d.rows, qh, splits))) }?;
        drop(builder);
        if let (Some(w), true) = (workspace, splits > 1) {
            let n = workspace_len(d.rows as usize, shape.num_q_heads, shape.head_dim, shape.num_splits);
            self.attention_merge(stream, &w.slice(..n), shape.head_dim, shape.num_splits, out)?;
        }
        Ok(())
    }

    /// [`crate::reference::attention_merge`]: split-K partials
    /// `[items, num_splits, 2 + head_dim]` (as [`Kernels::paged_attention`] leaves them) → out
    /// `[items, head_dim]`.
    pub fn attention_merge<T: KernelDType>(
        &self,
        stream: &CudaStream,
        partials: &CudaView<f32>,
        head_dim: usize,
        num_splits: usize,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        const K: &str = "attention_merge";
        if head_dim == 0 || !head_dim.is_multiple_of(32) || head_dim > crate::MAX_HEAD_DIM {
            return Err(shape_error(K, format!("head_dim {head_dim} is not a multiple of 32 up to 256")));
        }
        if !(1..=MAX_SPLITS).contains(&num_splits) {
            return Err(shape_error(K, format!("{num_splits} splits: needs 1..={MAX_SPLITS}")));
        }
        let items = out.len() / head_dim;
        if out.len() != items * head_dim || partials.len() != items * num_splits * (PARTIAL_HEADER + head_dim) {
            return Err(shape_error(
                K,
                format!(
                    "partials {} and out {} are not {num_splits} splits of head_dim {head_dim}",
                    partials.len(),
                    out.len()
                ),
            ));
        }
        if items == 0 {
            return Ok(());
        }
        let items = u32::try_from(items)
            .ok()
            .filter(|&n| n <= i32::MAX as u32)
            .ok_or_else(|| shape_error(K, format!("{items} (row, head) pairs is more blocks than a grid holds")))?;
        let (hd, splits) = (head_dim as u32, num_splits as u32);
        // SAFETY: partials hold items × num_splits × (2 + head_dim) f32s and out items ×
        // head_dim, checked above; num_splits ≤ MAX_SPLITS fits the kernel's shared weights and
        // head_dim ≤ 256 its block. Arguments match `attention_merge_<T>(partials, out,
        // head_dim, num_splits)`.
        unsafe {
            stream
                .launch_builder(self.attention_merge.get::<T>())
                .arg(partials)
                .arg(out)
                .arg(&hd)
                .arg(&splits)
                .launch(config(launch::attention_merge(items, hd)))
        }?;
        Ok(())
    }
}
