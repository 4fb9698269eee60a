//! Launcher of kernels/rope_kv_write.cu: RoPE of q and k fused with the KV-cache write.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{config, Kernels};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::launch;
use crate::shape::{QkvShape, RopeLens};

/// The read-only inputs of [`Kernels::rope_kv_write`], as [`crate::reference::RopeInputs`].
pub struct RopeInputs<'a, T> {
    /// `[rows, (q_heads + 2 · kv_heads) · head_dim]`: q | k | v.
    pub qkv: CudaView<'a, T>,
    /// f32 `[max_pos, head_dim]`: row p is cos for i < head_dim/2, then sin.
    pub cos_sin: CudaView<'a, f32>,
    /// `[rows]`; a row whose position is past the table is left untouched.
    pub positions: CudaView<'a, u32>,
    /// `[rows]`; a slot past the cache (u32::MAX for padding) stores nothing.
    pub slots: CudaView<'a, u32>,
}

impl Kernels {
    /// [`crate::reference::rope_kv_write`]: rotated q to q_out `[rows, q_heads · head_dim]`;
    /// rotated k and plain v to row `slots[r]` of k_cache / v_cache [num_slots, kv_heads ·
    /// head_dim].
    pub fn rope_kv_write<T: KernelDType>(
        &self,
        stream: &CudaStream,
        shape: &QkvShape,
        inputs: &RopeInputs<T>,
        q_out: &mut CudaViewMut<T>,
        k_cache: &mut CudaViewMut<T>,
        v_cache: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let lens = RopeLens {
            qkv: inputs.qkv.len(),
            cos_sin: inputs.cos_sin.len(),
            positions: inputs.positions.len(),
            slots: inputs.slots.len(),
            q_out: q_out.len(),
            k_cache: k_cache.len(),
            v_cache: v_cache.len(),
        };
        let d = shape.rope_dims(&lens)?;
        if d.rows == 0 {
            return Ok(());
        }
        let (qh, kvh, hd) = (shape.num_q_heads as u32, shape.num_kv_heads as u32, shape.head_dim as u32);
        // SAFETY: rope_dims checked every length against rows, the heads and max_pos / num_slots
        // (which the kernel receives and checks each position and slot against before using
        // it); block r touches row r of qkv, q_out, positions and slots and one cache slot.
        // Arguments match `rope_kv_write_<T>(qkv, cos_sin, positions, slots, q_out, k_cache,
        // v_cache, qh, kvh, hd, max_pos, num_slots)`.
        unsafe {
            stream
                .launch_builder(self.rope_kv_write.get::<T>())
                .arg(&inputs.qkv)
                .arg(&inputs.cos_sin)
                .arg(&inputs.positions)
                .arg(&inputs.slots)
                .arg(q_out)
                .arg(k_cache)
                .arg(v_cache)
                .arg(&qh)
                .arg(&kvh)
                .arg(&hd)
                .arg(&d.max_pos)
                .arg(&d.num_slots)
                .launch(config(launch::rope_kv_write(d.rows)))
        }?;
        Ok(())
    }
}
