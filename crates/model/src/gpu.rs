//! The decoder layers on a CUDA device, on Shardline's own kernels (`shardline-kernels`):
//!
//! ```text
//! x ─ add+RMSNorm ─ qkv matmul ─ RoPE+KV write ─ paged attention ─ o matmul ─ all-reduce ─┐
//!   ┌────────────────────────────────────────────────────────────────────────────────────┘
//!   └ add+RMSNorm ─ gate|up matmul ─ SiLU·mul ─ down matmul ─ all-reduce ─ (next layer's add)
//! ```
//!
//! Matmuls stay on cuBLAS through candle; everything between them is one fused launch. The step's
//! metadata ([`StepMetadata`]: positions, slots, block tables) is uploaded once and every layer
//! reads views of it; attention reads the paged KV cache through the block tables directly, every
//! sequence in one launch, without expanding K/V for GQA or building masks. The residual stream
//! is a buffer this module owns, updated in place by the fused add+RMSNorm.
//!
//! Buffers cross between candle tensors and kernel views without copies: a candle CUDA tensor is
//! a `CudaSlice` inside, and a fresh `CudaSlice` wraps into a tensor.

use std::sync::Arc;

use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use half::{bf16, f16};
use shardline_kernels::{
    plan_splits, workspace_len, AttentionInputs, AttentionShape, KernelDType, Kernels, QkvShape, RopeInputs,
    TopkOutputs, MAX_HEAD_DIM,
};

use crate::batch::BatchInput;
use crate::collective::Collective;
use crate::error::{ModelError, Result};
use crate::llama::Layer;
use crate::ops::{linear, QkvDims};
use crate::rope::RopeTable;
use crate::step_meta::StepMetadata;

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Gpu(e.to_string())
}

/// What the layers need on the device besides their weights, made once per model.
pub(crate) struct GpuForward {
    kernels: Arc<Kernels>,
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    /// cos | sin per position [max_positions, head_dim], computed on the host exactly as the CPU
    /// path computes them.
    cos_sin: CudaSlice<f32>,
    kv_head_of_q: CudaSlice<u32>,
    dims: QkvDims,
    inter: usize,
    eps: f32,
}

/// A layer's K and V pools, [num_slots, kv_heads · head_dim] each, in the model's dtype.
pub(crate) enum GpuKv {
    F32(CudaSlice<f32>, CudaSlice<f32>),
    Bf16(CudaSlice<bf16>, CudaSlice<bf16>),
    F16(CudaSlice<f16>, CudaSlice<f16>),
}

/// The element types the GPU path runs in.
pub(crate) trait GpuDType: KernelDType + CudaDType + cudarc::driver::DeviceRepr + Copy {
    fn kv(kv: &mut GpuKv) -> Option<(&mut CudaSlice<Self>, &mut CudaSlice<Self>)>;
}

macro_rules! gpu_dtype {
    ($t:ty, $variant:ident) => {
        impl GpuDType for $t {
            fn kv(kv: &mut GpuKv) -> Option<(&mut CudaSlice<Self>, &mut CudaSlice<Self>)> {
                match kv {
                    GpuKv::$variant(k, v) => Some((k, v)),
                    _ => None,
                }
            }
        }
    };
}
gpu_dtype!(f32, F32);
gpu_dtype!(bf16, Bf16);
gpu_dtype!(f16, F16);

impl GpuKv {
    pub fn zeros(stream: &Arc<CudaStream>, dtype: DType, elems: usize) -> Result<GpuKv> {
        let z = |e| err(format!("allocating the KV cache: {e:?}"));
        Ok(match dtype {
            DType::F32 => GpuKv::F32(stream.alloc_zeros(elems).map_err(z)?, stream.alloc_zeros(elems).map_err(z)?),
            DType::BF16 => GpuKv::Bf16(stream.alloc_zeros(elems).map_err(z)?, stream.alloc_zeros(elems).map_err(z)?),
            DType::F16 => GpuKv::F16(stream.alloc_zeros(elems).map_err(z)?, stream.alloc_zeros(elems).map_err(z)?),
            other => return Err(err(format!("no GPU kernels for dtype {other:?}"))),
        })
    }
}

/// The CUDA device behind `device`, if it is one.
pub(crate) fn cuda_device(device: &Device) -> Option<&CudaDevice> {
    match device {
        Device::Cuda(d) => Some(d),
        _ => None,
    }
}

/// Whether the kernels can run this model: a CUDA device, a head_dim they handle, and the
/// escape hatch `SHARDLINE_CUDA_KERNELS=0` (candle's ops instead, for diagnosis) not set.
pub(crate) fn usable(device: &Device, dtype: DType, head_dim: usize) -> bool {
    cuda_device(device).is_some()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && head_dim.is_multiple_of(32)
        && head_dim <= MAX_HEAD_DIM
        && std::env::var("SHARDLINE_CUDA_KERNELS").map_or(true, |v| v != "0")
}

impl GpuForward {
    pub fn new(
        dev: &CudaDevice,
        rope: &RopeTable,
        max_positions: usize,
        dims: QkvDims,
        kv_head_of_q: &[usize],
        inter: usize,
        eps: f64,
    ) -> Result<Self> {
        let stream = dev.cuda_stream();
        let kernels = Arc::new(Kernels::load(stream.context()).map_err(err)?);
        let table = rope.cos_sin_table(max_positions);
        let cos_sin = stream.clone_htod(&table).map_err(err)?;
        let heads: Vec<u32> = kv_head_of_q.iter().map(|&h| h as u32).collect();
        let kv_head_of_q = stream.clone_htod(&heads).map_err(err)?;
        Ok(GpuForward { kernels, dev: dev.clone(), stream, cos_sin, kv_head_of_q, dims, inter, eps: eps as f32 })
    }

    /// This stage's layers over `x` [rows, hidden], writing the batch's K/V into `kv`.
    pub fn forward_layers(
        &self,
        x: Tensor,
        layers: &[Layer],
        batch: &BatchInput,
        kv: &mut [&mut GpuKv],
        block_size: usize,
        comm: &dyn Collective,
    ) -> Result<Tensor> {
        match x.dtype() {
            DType::F32 => self.run::<f32>(x, layers, batch, kv, block_size, comm),
            DType::BF16 => self.run::<bf16>(x, layers, batch, kv, block_size, comm),
            DType::F16 => self.run::<f16>(x, layers, batch, kv, block_size, comm),
            other => Err(err(format!("no GPU kernels for dtype {other:?}"))),
        }
    }

    fn alloc<T: cudarc::driver::DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every buffer allocated here is fully written by the kernel it is handed to
        // before anything reads it.
        unsafe { self.stream.alloc::<T>(n) }.map_err(err)
    }

    fn wrap<T: GpuDType>(&self, s: CudaSlice<T>, rows: usize, cols: usize) -> Tensor {
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, self.dev.clone()));
        Tensor::from_storage(storage, (rows, cols), BackpropOp::none(), false)
    }

    #[allow(clippy::too_many_arguments)]
    fn run<T: GpuDType>(
        &self,
        x: Tensor,
        layers: &[Layer],
        batch: &BatchInput,
        kv: &mut [&mut GpuKv],
        block_size: usize,
        comm: &dyn Collective,
    ) -> Result<Tensor> {
        let k = &self.kernels;
        let s = &*self.stream;
        let d = &self.dims;
        let (rows, hidden) = x.dims2()?;
        let q_width = d.q_heads * d.head_dim;
        let meta = StepMetadata::new(batch);
        let words: CudaSlice<u32> = self.stream.clone_htod(&meta.words).map_err(err)?;
        let field = |r: &std::ops::Range<usize>| words.slice(r.clone());
        let (splits, keys_per_split) = plan_splits(rows, d.q_heads, meta.max_context, k.num_sms());
        let mut workspace: Option<CudaSlice<f32>> = if splits > 1 {
            Some(self.alloc::<f32>(workspace_len(rows, d.q_heads, d.head_dim, splits))?)
        } else {
            None
        };
        let attn_shape = AttentionShape {
            num_q_heads: d.q_heads,
            num_kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            block_size,
            max_blocks: meta.max_blocks,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
            num_splits: splits,
            keys_per_split,
        };
        let qkv_shape = QkvShape { num_q_heads: d.q_heads, num_kv_heads: d.kv_heads, head_dim: d.head_dim };
        // The residual stream, owned here so the fused add+RMSNorm can update it in place.
        let mut resid: CudaSlice<T> = with_view(&x, |v: CudaView<T>| self.stream.clone_dtod(&v))?.map_err(err)?;
        // The last layer's all-reduced MLP output, added to the residual by the next norm.
        let mut pending: Option<Tensor> = None;
        for (li, l) in layers.iter().enumerate() {
            let mut h = self.alloc::<T>(rows * hidden)?;
            match &pending {
                None => with_view(&l.input_norm, |w: CudaView<T>| {
                    k.rms_norm(s, &resid.slice(..), &w, self.eps, &mut h.slice_mut(..))
                })?,
                Some(delta) => with_view(delta, |dv: CudaView<T>| {
                    with_view(&l.input_norm, |w: CudaView<T>| {
                        k.add_rms_norm(s, &mut resid.slice_mut(..), &dv, &w, self.eps, &mut h.slice_mut(..))
                    })
                })??,
            }
            .map_err(err)?;
            let qkv = linear(&self.wrap(h, rows, hidden), &l.qkv, l.qkv_bias.as_ref())?;
            let (kc, vc) = T::kv(&mut *kv[li]).ok_or_else(|| err("the KV cache's dtype is not the model's"))?;
            let mut q = self.alloc::<T>(rows * q_width)?;
            with_view(&qkv, |qkv: CudaView<T>| {
                let inputs = RopeInputs {
                    qkv,
                    cos_sin: self.cos_sin.slice(..),
                    positions: field(&meta.positions),
                    slots: field(&meta.slots),
                };
                k.rope_kv_write(
                    s,
                    &qkv_shape,
                    &inputs,
                    &mut q.slice_mut(..),
                    &mut kc.slice_mut(..),
                    &mut vc.slice_mut(..),
                )
            })?
            .map_err(err)?;
            let mut a = self.alloc::<T>(rows * q_width)?;
            let inputs = AttentionInputs {
                q: q.slice(..),
                k_cache: kc.slice(..),
                v_cache: vc.slice(..),
                block_tables: field(&meta.block_tables),
                row_seq: field(&meta.row_seq),
                positions: field(&meta.positions),
                kv_head_of_q: self.kv_head_of_q.slice(..),
            };
            let mut ws = workspace.as_mut().map(|w| w.slice_mut(..));
            k.paged_attention(s, &attn_shape, &inputs, ws.as_mut(), &mut a.slice_mut(..)).map_err(err)?;
            let mut o = linear(&self.wrap(a, rows, q_width), &l.o_proj, None)?;
            if comm.size() > 1 {
                o = comm.all_reduce_sum_owned(o)?;
            }
            let mut h = self.alloc::<T>(rows * hidden)?;
            with_view(&o, |ov: CudaView<T>| {
                with_view(&l.post_norm, |w: CudaView<T>| {
                    k.add_rms_norm(s, &mut resid.slice_mut(..), &ov, &w, self.eps, &mut h.slice_mut(..))
                })
            })??
            .map_err(err)?;
            let gu = linear(&self.wrap(h, rows, hidden), &l.gate_up, None)?;
            let mut m = self.alloc::<T>(rows * self.inter)?;
            with_view(&gu, |g: CudaView<T>| k.silu_mul(s, &g, self.inter, &mut m.slice_mut(..)))?.map_err(err)?;
            let mut down = linear(&self.wrap(m, rows, self.inter), &l.down, None)?;
            if comm.size() > 1 {
                down = comm.all_reduce_sum_owned(down)?;
            }
            pending = Some(down);
        }
        let x = self.wrap(resid, rows, hidden);
        Ok(match pending {
            Some(d) => (x + d)?,
            None => x,
        })
    }

    /// Each row's best `k` logits (descending, ties to the lower id) with its max and
    /// log-sum-exps at temperature 1 and at `inv_temperature[row]`⁻¹, computed where the logits
    /// are; only these come back to the host. `logits` is f32 [rows, vocab].
    pub fn topk(&self, logits: &Tensor, inv_temperature: &[f32], k: usize) -> Result<RowCandidates> {
        let (rows, vocab) = logits.dims2()?;
        let k = k.clamp(1, vocab);
        let s = &*self.stream;
        let inv_t = self.stream.clone_htod(inv_temperature).map_err(err)?;
        let mut values = self.alloc::<f32>(rows * k)?;
        let mut ids = self.alloc::<u32>(rows * k)?;
        let mut stats = self.alloc::<f32>(rows * 3)?;
        let logits = logits.to_dtype(DType::F32)?.contiguous()?;
        with_view(&logits, |l: CudaView<f32>| {
            let mut out =
                TopkOutputs { values: values.slice_mut(..), ids: ids.slice_mut(..), stats: stats.slice_mut(..) };
            self.kernels.logits_topk(s, &l, &inv_t.slice(..), k, &mut out)
        })?
        .map_err(err)?;
        Ok(RowCandidates {
            k,
            values: self.stream.clone_dtoh(&values).map_err(err)?,
            ids: self.stream.clone_dtoh(&ids).map_err(err)?,
            stats: self.stream.clone_dtoh(&stats).map_err(err)?,
        })
    }
}

/// [`GpuForward::topk`]'s result on the host: row r's candidates are `values[r·k..(r+1)·k]` and
/// `ids[..]`, its (max, lse, lse at temperature) `stats[3r..3r+3]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RowCandidates {
    pub k: usize,
    pub values: Vec<f32>,
    pub ids: Vec<u32>,
    pub stats: Vec<f32>,
}

/// Runs `f` on a view of a contiguous CUDA tensor's elements of type `T`.
fn with_view<T: GpuDType, R>(t: &Tensor, f: impl FnOnce(CudaView<T>) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { return Err(err("expected a CUDA tensor")) };
    let (a, b) = layout.contiguous_offsets().ok_or_else(|| err("expected a contiguous tensor"))?;
    let slice = cs.as_cuda_slice::<T>()?;
    Ok(f(slice.slice(a..b)))
}
