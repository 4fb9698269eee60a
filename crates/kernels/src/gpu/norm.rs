//! Launchers of kernels/rms_norm.cu: RMSNorm, and the residual add fused into it.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{config, Kernels};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::shape::{add_norm_dims, norm_dims};

/// Threads per row: about 8 columns each (enough loads in flight per thread), whole warps, at
/// most a full block. 4096 columns get 512 threads; SmolLM2's 576 get 96.
fn threads(cols: u32) -> u32 {
    cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024)
}

impl Kernels {
    /// [`crate::reference::rms_norm`]: x and out `[rows, cols]`, weight `[cols]`.
    pub fn rms_norm<T: KernelDType>(
        &self,
        stream: &CudaStream,
        x: &CudaView<T>,
        weight: &CudaView<T>,
        eps: f32,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let d = norm_dims("rms_norm", x.len(), weight.len(), out.len())?;
        if d.rows == 0 {
            return Ok(());
        }
        // SAFETY: norm_dims checked x and out hold rows × cols elements and weight cols; block r
        // touches row r only. Arguments match `rms_norm_<T>(x, w, out, cols, eps)`.
        unsafe {
            stream
                .launch_builder(self.rms_norm.get::<T>())
                .arg(x)
                .arg(weight)
                .arg(out)
                .arg(&d.cols)
                .arg(&eps)
                .launch(config((d.rows, 1), threads(d.cols)))
        }?;
        Ok(())
    }

    /// [`crate::reference::add_rms_norm`]: residual += delta in place, out = rms_norm(residual);
    /// residual, delta and out `[rows, cols]`, weight `[cols]`.
    pub fn add_rms_norm<T: KernelDType>(
        &self,
        stream: &CudaStream,
        residual: &mut CudaViewMut<T>,
        delta: &CudaView<T>,
        weight: &CudaView<T>,
        eps: f32,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let d = add_norm_dims(residual.len(), delta.len(), weight.len(), out.len())?;
        if d.rows == 0 {
            return Ok(());
        }
        // SAFETY: add_norm_dims checked residual, delta and out hold rows × cols elements and
        // weight cols; block r touches row r only. Arguments match
        // `add_rms_norm_<T>(residual, delta, w, out, cols, eps)`.
        unsafe {
            stream
                .launch_builder(self.add_rms_norm.get::<T>())
                .arg(residual)
                .arg(delta)
                .arg(weight)
                .arg(out)
                .arg(&d.cols)
                .arg(&eps)
                .launch(config((d.rows, 1), threads(d.cols)))
        }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_are_whole_warps_up_to_a_block() {
        assert_eq!(super::threads(1), 32);
        assert_eq!(super::threads(576), 96);
        assert_eq!(super::threads(4096), 512);
        assert_eq!(super::threads(100_000), 1024);
    }
}
