//! Launchers of kernels/rms_norm.cu: RMSNorm, and the residual add fused into it.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{config, Kernels};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::launch;
use crate::shape::{add_norm_dims, norm_dims};

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
                .launch(config(launch::rms_norm(d.rows, d.cols)))
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
                .launch(config(launch::rms_norm(d.rows, d.cols)))
        }?;
        Ok(())
    }
}
