//! The model's `Collective` over one tensor-parallel group: over NCCL on the device where the
//! group's link is NCCL (GPUs, see `links`), else over the TCP mesh (f32 host buffers; other
//! dtypes widened for the wire).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use shardline_comm::{Comm, Group};
use shardline_model::{Collective, ModelError};

pub struct TpCollective {
    comm: Arc<Comm>,
    group: Group,
    /// The group's NCCL communicator and the members' shares of the gathered dimension.
    #[cfg(feature = "cuda")]
    nccl: Option<(Arc<shardline_comm::nccl::NcclComm>, Vec<usize>)>,
    /// Time spent inside collectives (including waiting for slower ranks), for step stats.
    nanos: AtomicU64,
}

impl TpCollective {
    pub fn new(comm: Arc<Comm>, ranks: Vec<usize>) -> Self {
        TpCollective {
            comm,
            group: Group::new(ranks),
            #[cfg(feature = "cuda")]
            nccl: None,
            nanos: AtomicU64::new(0),
        }
    }

    /// Runs the group's collectives through `nccl` (joined by every member); `gather_widths` are
    /// the members' shares of the gathered dimension (the vocab split).
    #[cfg(feature = "cuda")]
    pub fn with_nccl(mut self, nccl: Arc<shardline_comm::nccl::NcclComm>, gather_widths: Vec<usize>) -> Self {
        self.nccl = Some((nccl, gather_widths));
        self
    }

    /// Seconds spent in collectives so far.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Collective(e.to_string())
}

impl Collective for TpCollective {
    fn rank(&self) -> usize {
        self.group.index_of(self.comm.rank()).expect("member of its own group")
    }

    fn size(&self) -> usize {
        self.group.size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> shardline_model::Result<Tensor> {
        if self.size() == 1 {
            return Ok(t.clone());
        }
        #[cfg(feature = "cuda")]
        if let Some((nccl, _)) = &self.nccl {
            return self.timed(|| crate::nccl::all_reduce_sum(nccl, t));
        }
        self.tcp_all_reduce_sum(t)
    }

    fn all_reduce_sum_owned(&self, t: Tensor) -> shardline_model::Result<Tensor> {
        if self.size() == 1 {
            return Ok(t);
        }
        #[cfg(feature = "cuda")]
        if let Some((nccl, _)) = &self.nccl {
            return self.timed(|| crate::nccl::all_reduce_sum_in_place(nccl, t));
        }
        self.tcp_all_reduce_sum(&t)
    }

    fn all_gather_last_dim(&self, t: &Tensor) -> shardline_model::Result<Tensor> {
        if self.size() == 1 {
            return Ok(t.clone());
        }
        #[cfg(feature = "cuda")]
        if let Some((nccl, widths)) = &self.nccl {
            return self.timed(|| crate::nccl::all_gather_last_dim(nccl, widths, t));
        }
        let rows = t.dim(0)?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let parts = self.timed(|| self.group.all_gather(&self.comm, &data)).map_err(err)?;
        let mut tensors = Vec::with_capacity(parts.len());
        for p in parts {
            let width = p.len().checked_div(rows).unwrap_or(0);
            if width * rows != p.len() {
                return Err(ModelError::Collective(format!(
                    "all-gather: a rank sent {} values for {rows} rows",
                    p.len()
                )));
            }
            tensors.push(Tensor::from_vec(p, (rows, width), t.device())?);
        }
        Ok(Tensor::cat(&tensors, 1)?.to_dtype(t.dtype())?)
    }
}

impl TpCollective {
    /// The all-reduce over the TCP mesh: through the host in f32, whatever the device.
    fn tcp_all_reduce_sum(&self, t: &Tensor) -> shardline_model::Result<Tensor> {
        if t.dtype() == DType::F64 {
            // Exact partial sums (see `Llama::row_parallel`): summed in f64, never rounded here.
            let mut data = t.flatten_all()?.to_vec1::<f64>()?;
            self.timed(|| self.group.all_reduce_sum_f64(&self.comm, &mut data)).map_err(err)?;
            return Ok(Tensor::from_vec(data, t.shape(), t.device())?);
        }
        let mut data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.timed(|| self.group.all_reduce_sum(&self.comm, &mut data)).map_err(err)?;
        Ok(Tensor::from_vec(data, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}
