//! The memory roofline every memory-bound kernel is compared with: how fast a plain
//! device-to-device copy (kernels/copy_f32x4.cu) streams on this GPU.

use std::sync::Arc;

use cudarc::driver::{sys, CudaSlice, CudaStream, PushKernelArg};

use super::{config, Kernels};
use crate::error::KernelError;
use crate::launch;

/// Timed copies; the best is reported (the first run also pays for page mapping and clocks).
const REPS: usize = 10;

impl Kernels {
    /// Copies `bytes` (rounded down to 16, at least 16) between two fresh buffers `REPS` times,
    /// timed with CUDA events, and returns the best rate in GB/s (10^9 bytes), counting the
    /// bytes read plus the bytes written.
    pub fn measure_copy_bandwidth(&self, stream: &Arc<CudaStream>, bytes: usize) -> Result<f64, KernelError> {
        let n4 = (bytes / 16).max(1);
        let src: CudaSlice<f32> = stream.alloc_zeros(4 * n4)?;
        let mut dst: CudaSlice<f32> = stream.alloc_zeros(4 * n4)?;
        let ctx = stream.context();
        let (start, end) = (
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?,
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?,
        );
        let geometry = launch::copy_f32x4(n4, self.num_sms);
        let n = n4 as u64;
        let mut best = f32::INFINITY;
        for rep in 0..=REPS {
            start.record(stream)?;
            // SAFETY: src and dst each hold 4 · n4 f32s (n4 float4s, 16-byte aligned as every
            // allocation is) and the grid-stride loop stops at n4. Arguments match
            // `copy_f32x4(src, dst, n)`.
            unsafe {
                stream.launch_builder(&self.copy_f32x4).arg(&src).arg(&mut dst).arg(&n).launch(config(geometry))
            }?;
            end.record(stream)?;
            let ms = start.elapsed_ms(&end)?;
            if rep > 0 {
                best = best.min(ms);
            }
        }
        Ok(2.0 * (16 * n4) as f64 / (best as f64 * 1e-3) / 1e9)
    }
}
