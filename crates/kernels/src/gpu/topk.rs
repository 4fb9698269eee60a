//! Launcher of kernels/logits_topk.cu: per-row sampling candidates and normalizers, so only
//! k + 3 values per row come back to the host.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{config, Kernels};
use crate::error::KernelError;
use crate::launch;
use crate::shape::{topk_dims, TopkLens};

/// Where [`Kernels::logits_topk`] writes, as [`crate::reference::TopK`].
pub struct TopkOutputs<'a> {
    /// `[rows, k]` the chosen logits (NaN as −inf), best first.
    pub values: CudaViewMut<'a, f32>,
    /// `[rows, k]` their vocabulary ids.
    pub ids: CudaViewMut<'a, u32>,
    /// `[rows, 3]`: max logit, logsumexp of the logits, logsumexp of logits · inv_temperature.
    pub stats: CudaViewMut<'a, f32>,
}

impl Kernels {
    /// [`crate::reference::logits_topk`]: logits `[rows, vocab]`, inv_temperature `[rows]`, k ≤ 64.
    pub fn logits_topk(
        &self,
        stream: &CudaStream,
        logits: &CudaView<f32>,
        inv_temperature: &CudaView<f32>,
        k: usize,
        out: &mut TopkOutputs,
    ) -> Result<(), KernelError> {
        let lens = TopkLens {
            logits: logits.len(),
            inv_temperature: inv_temperature.len(),
            values: out.values.len(),
            ids: out.ids.len(),
            stats: out.stats.len(),
        };
        let d = topk_dims(&lens, k)?;
        if d.rows == 0 {
            return Ok(());
        }
        let k = k as u32;
        // SAFETY: topk_dims checked logits against rows × vocab, inv_temperature against rows,
        // values and ids against rows × k, stats against rows × 3, and 1 ≤ k ≤ vocab < u32::MAX;
        // block r touches row r only. Arguments match `logits_topk(logits, inv_temperature,
        // top_values, top_ids, stats, vocab, k)`.
        unsafe {
            stream
                .launch_builder(&self.logits_topk)
                .arg(logits)
                .arg(inv_temperature)
                .arg(&mut out.values)
                .arg(&mut out.ids)
                .arg(&mut out.stats)
                .arg(&d.vocab)
                .arg(&k)
                .launch(config(launch::logits_topk(d.rows)))
        }?;
        Ok(())
    }
}
