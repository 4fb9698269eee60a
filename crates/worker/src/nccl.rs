//! NCCL collectives on CUDA tensors, as candle custom ops so they run on the tensors' own
//! storage without a host round trip.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Tensor};
use shardline_comm::nccl::{NcclComm, ReduceOp};
use shardline_model::{ModelError, Result};

fn unsupported(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what} runs only on CUDA tensors"))
}

fn nccl(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL: {e:?}"))
}

struct AllReduce<'a>(&'a NcclComm);

impl candle_core::InplaceOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        Err(unsupported("an NCCL all-reduce"))
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let (a, b) = layout.contiguous_offsets().ok_or_else(|| unsupported("a strided all-reduce"))?;
        let comm = self.0.raw();
        match s.dtype() {
            DType::F32 => comm.all_reduce_in_place(&mut s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b), &ReduceOp::Sum),
            DType::F16 => {
                comm.all_reduce_in_place(&mut s.as_cuda_slice_mut::<half::f16>()?.slice_mut(a..b), &ReduceOp::Sum)
            }
            DType::BF16 => {
                comm.all_reduce_in_place(&mut s.as_cuda_slice_mut::<half::bf16>()?.slice_mut(a..b), &ReduceOp::Sum)
            }
            other => return Err(candle_core::Error::Msg(format!("NCCL all-reduce of {other:?}"))),
        }
        .map(|_| ())
        .map_err(nccl)
    }
}

/// Gathers equal-sized f32 buffers into [members, ..shape].
struct AllGather<'a> {
    comm: &'a NcclComm,
    members: usize,
}

impl candle_core::CustomOp1 for AllGather<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-gather"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(unsupported("an NCCL all-gather"))
    }

    fn cuda_fwd(&self, s: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = layout.contiguous_offsets().ok_or_else(|| unsupported("a strided all-gather"))?;
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = s.device.clone();
        let mut dst = dev.alloc_zeros::<f32>((b - a) * self.members)?;
        self.comm.raw().all_gather(&src, &mut dst).map_err(nccl)?;
        let mut dims = vec![self.members];
        dims.extend_from_slice(layout.dims());
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), Shape::from(dims)))
    }
}

pub fn all_reduce_sum(comm: &NcclComm, t: &Tensor) -> Result<Tensor> {
    let out = t.contiguous()?.copy()?;
    out.inplace_op1(&AllReduce(comm))?;
    Ok(out)
}

/// Concatenates each member's [rows, widths[i]] along the last dim. NCCL gathers equal sizes,
/// so every member pads to the widest share and the padding is cut afterwards.
pub fn all_gather_last_dim(comm: &NcclComm, widths: &[usize], t: &Tensor) -> Result<Tensor> {
    let max = widths.iter().copied().max().unwrap_or(0);
    let (_, w) = t.dims2()?;
    let padded = t.to_dtype(DType::F32)?.pad_with_zeros(1, 0, max - w)?.contiguous()?;
    let gathered = padded.apply_op1_no_bwd(&AllGather { comm, members: widths.len() })?;
    let parts = widths
        .iter()
        .enumerate()
        .map(|(i, &wi)| gathered.get(i)?.narrow(1, 0, wi))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)?.to_dtype(t.dtype()).map_err(ModelError::from)
}
