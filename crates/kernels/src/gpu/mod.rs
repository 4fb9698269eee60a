//! The GPU side: the fatbin build.rs compiled from kernels/*.cu, embedded in the binary and
//! loaded once per CUDA context into [`Kernels`], whose methods launch the kernels.
//!
//! Conventions of every launcher: it takes the `&CudaStream` to launch on, inputs as
//! `&CudaView<T>` and outputs as `&mut CudaViewMut<T>` (views are any sub-range of a
//! `CudaSlice`: `slice.as_view()`, `slice.slice(a..b)`, so one layer of a larger cache is passed
//! without a copy); kernels with many buffers take them in a struct of views with named fields,
//! where a swapped k/v cache cannot pass unnoticed. Every length is checked on the host before
//! anything is launched (a shape error launches nothing), and every index the kernels read from
//! device memory is bounds-checked on the device, so the methods are safe. Launches are
//! asynchronous: results are ready when the stream gets there.

mod activation;
mod attention;
mod bandwidth;
mod norm;
mod rope;
mod topk;

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::dtype::{KernelDType, SUFFIXES};
use crate::error::KernelError;
use crate::launch::Launch;

pub use attention::AttentionInputs;
pub use rope::RopeInputs;
pub use topk::TopkOutputs;

/// kernels/*.cu as one fatbin: cubins for each of `SHARDLINE_CUDA_ARCHS` plus PTX of the newest.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shardline_kernels.fatbin"));

/// A kernel's three instantiations, in [`KernelDType::INDEX`] order.
struct PerDType([CudaFunction; 3]);

impl PerDType {
    fn get<T: KernelDType>(&self) -> &CudaFunction {
        &self.0[T::INDEX]
    }
}

/// Shardline's kernels, loaded into one CUDA context.
pub struct Kernels {
    rms_norm: PerDType,
    add_rms_norm: PerDType,
    rope_kv_write: PerDType,
    paged_attention: PerDType,
    attention_merge: PerDType,
    silu_mul: PerDType,
    logits_topk: CudaFunction,
    copy_f32x4: CudaFunction,
    num_sms: usize,
}

impl Kernels {
    /// Loads the embedded fatbin into `ctx` (`cuModuleLoadData` picks the cubin for the device,
    /// or JITs the PTX on a newer one) and looks up every kernel once.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, KernelError> {
        let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec()))?;
        let function = |name: String| module.load_function(&name).map_err(|source| KernelError::Load { name, source });
        let per_dtype = |base: &str| -> Result<PerDType, KernelError> {
            let [a, b, c] = SUFFIXES.map(|s| function(format!("{base}_{s}")));
            Ok(PerDType([a?, b?, c?]))
        };
        let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        Ok(Kernels {
            rms_norm: per_dtype("rms_norm")?,
            add_rms_norm: per_dtype("add_rms_norm")?,
            rope_kv_write: per_dtype("rope_kv_write")?,
            paged_attention: per_dtype("paged_attention")?,
            attention_merge: per_dtype("attention_merge")?,
            silu_mul: per_dtype("silu_mul")?,
            logits_topk: function("logits_topk".into())?,
            copy_f32x4: function("copy_f32x4".into())?,
            num_sms: sms.max(1) as usize,
        })
    }

    /// Streaming multiprocessors of the device: the `num_sms` of [`crate::plan_splits`].
    pub fn num_sms(&self) -> usize {
        self.num_sms
    }
}

/// A kernel's [`Launch`] (src/launch.rs) as cudarc's configuration.
fn config(l: Launch) -> LaunchConfig {
    LaunchConfig { grid_dim: (l.grid.0, l.grid.1, 1), block_dim: (l.threads, 1, 1), shared_mem_bytes: 0 }
}
