//! Launcher of kernels/silu_mul.cu: SwiGLU's silu(gate) · up.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{config, Kernels};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::launch;
use crate::shape::silu_dims;

impl Kernels {
    /// [`crate::reference::silu_mul`]: gate_up `[rows, 2 · inter]` (gate | up) → out `[rows, inter]`.
    pub fn silu_mul<T: KernelDType>(
        &self,
        stream: &CudaStream,
        gate_up: &CudaView<T>,
        inter: usize,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let d = silu_dims(gate_up.len(), inter, out.len())?;
        let n = out.len() as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: silu_dims checked gate_up holds 2 · n and out n = rows × inter elements; the
        // grid-stride loop stops at n. Arguments match `silu_mul_<T>(gate_up, out, n, inter)`.
        unsafe {
            stream
                .launch_builder(self.silu_mul.get::<T>())
                .arg(gate_up)
                .arg(out)
                .arg(&n)
                .arg(&d.cols)
                .launch(config(launch::silu_mul(n, self.num_sms)))
        }?;
        Ok(())
    }
}
