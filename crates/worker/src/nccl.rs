//! CUDA tensors through NCCL, never leaving the device: the tensor-parallel collectives (candle
//! in-place and custom ops on the tensors' own storage), the pipeline hand-off (one stage's
//! hidden states sent to the next), and a rank's set of communicators ([`DeviceComms`]): joined
//! right after the rendezvous, before the weights load, and waited on, bounded, at every step's
//! end.

use std::sync::Arc;
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, DType, Device, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaStream, DeviceRepr};
use cudarc::nccl::NcclType;
use half::{bf16, f16};
use shardline_comm::nccl::{wait_stream, NcclComm};
use shardline_comm::{Comm, Group};
use shardline_model::{ModelError, Result as ModelResult};

use crate::error::{Result, WorkerError};
use crate::layout::GroupLayout;
use crate::links::{Channel, GpuIdentity, LinkPlan};

fn unsupported(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what} runs only on contiguous CUDA tensors of f32, f16 or bf16"))
}

fn op_error(e: shardline_comm::CommError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
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
        let (a, b) = layout.contiguous_offsets().ok_or_else(|| unsupported("an NCCL all-reduce"))?;
        let comm = self.0;
        match s.dtype() {
            DType::F32 => comm.all_reduce_sum_in_place(&mut s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b)),
            DType::F16 => comm.all_reduce_sum_in_place(&mut s.as_cuda_slice_mut::<f16>()?.slice_mut(a..b)),
            DType::BF16 => comm.all_reduce_sum_in_place(&mut s.as_cuda_slice_mut::<bf16>()?.slice_mut(a..b)),
            _ => return Err(unsupported("an NCCL all-reduce")),
        }
        .map_err(op_error)
    }
}

/// Gathers equal-sized f32 buffers into [members, ..shape].
struct AllGather<'a>(&'a NcclComm);

impl candle_core::CustomOp1 for AllGather<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-gather"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(unsupported("an NCCL all-gather"))
    }

    fn cuda_fwd(&self, s: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = layout.contiguous_offsets().ok_or_else(|| unsupported("an NCCL all-gather"))?;
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = s.device.clone();
        // SAFETY: the all-gather writes every element.
        let mut dst = unsafe { dev.alloc::<f32>((b - a) * self.0.size()) }?;
        self.0.all_gather(&src, &mut dst).map_err(op_error)?;
        let mut dims = vec![self.0.size()];
        dims.extend_from_slice(layout.dims());
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), Shape::from(dims)))
    }
}

/// Sums `t` over the group in its own buffer (see `Collective::all_reduce_sum_owned`).
pub fn all_reduce_sum_in_place(comm: &NcclComm, t: Tensor) -> ModelResult<Tensor> {
    let t = t.contiguous()?;
    t.inplace_op1(&AllReduce(comm))?;
    Ok(t)
}

/// Sums `t` over the group into a new tensor; `t` is left as it was.
pub fn all_reduce_sum(comm: &NcclComm, t: &Tensor) -> ModelResult<Tensor> {
    all_reduce_sum_in_place(comm, t.contiguous()?.copy()?)
}

/// Concatenates each member's [rows, widths[i]] along the last dim. NCCL gathers equal sizes,
/// so every member pads to the widest share and the padding is cut afterwards.
pub fn all_gather_last_dim(comm: &NcclComm, widths: &[usize], t: &Tensor) -> ModelResult<Tensor> {
    let max = widths.iter().copied().max().unwrap_or(0);
    let (_, w) = t.dims2()?;
    let padded = t.to_dtype(DType::F32)?.pad_with_zeros(1, 0, max - w)?.contiguous()?;
    let gathered = padded.apply_op1_no_bwd(&AllGather(comm))?;
    let parts = widths
        .iter()
        .enumerate()
        .map(|(i, &wi)| gathered.get(i)?.narrow(1, 0, wi))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)?.to_dtype(t.dtype()).map_err(ModelError::from)
}

/// Sends `t` (any shape, on this rank's GPU) to member `peer` of `comm`, in its own dtype.
pub fn send_tensor(comm: &NcclComm, peer: usize, t: &Tensor) -> Result<()> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cuda(s), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        return Err(WorkerError::Protocol("pipeline hand-off over NCCL of a tensor not on the GPU".into()));
    };
    match s.dtype() {
        DType::F32 => comm.send(&s.as_cuda_slice::<f32>()?.slice(a..b), peer),
        DType::F16 => comm.send(&s.as_cuda_slice::<f16>()?.slice(a..b), peer),
        DType::BF16 => comm.send(&s.as_cuda_slice::<bf16>()?.slice(a..b), peer),
        other => return Err(WorkerError::Protocol(format!("pipeline hand-off of {other:?} over NCCL"))),
    }?;
    Ok(())
}

/// Receives a [rows, cols] tensor of `dtype` from member `peer` of `comm` (its `send_tensor`).
pub fn recv_tensor(
    comm: &NcclComm,
    peer: usize,
    (rows, cols): (usize, usize),
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let Device::Cuda(dev) = device else {
        return Err(WorkerError::Protocol("pipeline hand-off over NCCL to a rank not on a GPU".into()));
    };
    let n = rows * cols;
    let storage = match dtype {
        DType::F32 => recv_slice::<f32>(comm, peer, n, dev)?,
        DType::F16 => recv_slice::<f16>(comm, peer, n, dev)?,
        DType::BF16 => recv_slice::<bf16>(comm, peer, n, dev)?,
        other => return Err(WorkerError::Protocol(format!("pipeline hand-off of {other:?} over NCCL"))),
    };
    Ok(Tensor::from_storage(Storage::Cuda(storage), (rows, cols), BackpropOp::none(), false))
}

fn recv_slice<T: NcclType + CudaDType + DeviceRepr>(
    comm: &NcclComm,
    peer: usize,
    n: usize,
    dev: &CudaDevice,
) -> Result<CudaStorage> {
    // SAFETY: the receive writes every element before anything reads the buffer.
    let mut buf = unsafe { comm.stream().alloc::<T>(n) }.map_err(|e| WorkerError::Device(format!("{e:?}")))?;
    comm.recv(&mut buf, peer)?;
    Ok(CudaStorage::wrap_cuda_slice(buf, dev.clone()))
}

/// A CUDA rank's NCCL communicators: its stage's tensor-parallel group and its pipeline
/// neighbours, wherever the link plan gives them NCCL.
pub struct DeviceComms {
    pub plan: LinkPlan,
    pub tp: Option<Arc<NcclComm>>,
    /// The hand-off from the previous stage (this rank is its member 1).
    pub prev: Option<NcclComm>,
    /// The hand-off to the next stage (this rank is its member 0).
    pub next: Option<NcclComm>,
    stream: Arc<CudaStream>,
    timeout: Duration,
}

impl DeviceComms {
    /// Gathers every rank's GPU, plans the links and joins this rank's communicators in the
    /// plan's global order. Every CUDA rank calls it right after the rendezvous, before loading
    /// weights: the NCCL ids then travel at once, and no join waits on another rank's loading.
    pub fn join(tcp: &Arc<Comm>, layout: &GroupLayout, device: &Device) -> Result<DeviceComms> {
        let Device::Cuda(dev) = device else {
            return Err(WorkerError::Device("NCCL communicators need a CUDA device".into()));
        };
        let stream = dev.cuda_stream();
        let uuid =
            stream.context().uuid().map_err(|e| WorkerError::Device(format!("reading the GPU's UUID: {e:?}")))?;
        let mine = GpuIdentity::here(&uuid.bytes.map(|c| c as u8));
        let gpus = GpuIdentity::exchange(tcp, &mine)?;
        let plan = LinkPlan::for_gpus(layout, &gpus);
        let rank = tcp.rank();
        let stage = layout.stage_of(rank);
        let mut comms =
            DeviceComms { plan, tp: None, prev: None, next: None, stream: Arc::clone(&stream), timeout: tcp.timeout() };
        for (channel, ranks) in comms.plan.nccl_channels(layout) {
            if !ranks.contains(&rank) {
                continue;
            }
            let comm = NcclComm::join(tcp, &Group::new(ranks), Arc::clone(&stream))?;
            match channel {
                Channel::Tp { .. } => comms.tp = Some(Arc::new(comm)),
                Channel::Pipeline { stage: from, .. } if from == stage => comms.next = Some(comm),
                Channel::Pipeline { .. } => comms.prev = Some(comm),
            }
        }
        eprintln!("LINKS rank={rank} gpu={} {}", mine.gpu, comms.plan.describe(layout, rank));
        Ok(comms)
    }

    /// Waits until the step's device work (its collectives and hand-offs included) has run, at
    /// most the group timeout. This is the step watchdog: a peer that died or hangs fails the
    /// step here, with NCCL aborted, instead of leaving a kernel spinning and a later copy to
    /// the host blocked forever. Call it before anything copies the step's results to the host.
    pub fn wait(&self) -> Result<()> {
        let comms: Vec<&NcclComm> = self.tp.as_deref().into_iter().chain(&self.prev).chain(&self.next).collect();
        if comms.is_empty() {
            return Ok(());
        }
        Ok(wait_stream(&self.stream, &comms, self.timeout)?)
    }
}
