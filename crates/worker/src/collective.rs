//! The model's `Collective` over a tensor-parallel group of the communicator. CPU tensors move
//! as f32 host buffers; other dtypes are widened to f32 for the wire and narrowed back.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use shardline_comm::{Comm, Group};
use shardline_model::{Collective, ModelError};

pub struct TpCollective {
    comm: Arc<Comm>,
    group: Group,
}

impl TpCollective {
    pub fn new(comm: Arc<Comm>, ranks: Vec<usize>) -> Self {
        TpCollective { comm, group: Group::new(ranks) }
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
        let mut data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.group.all_reduce_sum(&self.comm, &mut data).map_err(err)?;
        Ok(Tensor::from_vec(data, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    fn all_gather_last_dim(&self, t: &Tensor) -> shardline_model::Result<Tensor> {
        if self.size() == 1 {
            return Ok(t.clone());
        }
        let (rows, cols) = t.dims2()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let parts = self.group.all_gather(&self.comm, &data).map_err(err)?;
        let mut tensors = Vec::with_capacity(parts.len());
        for p in parts {
            let width = if rows == 0 { 0 } else { p.len() / rows };
            if width * rows != p.len() {
                return Err(ModelError::Collective(format!("all-gather: a rank sent {} values for {rows} rows", p.len())));
            }
            tensors.push(Tensor::from_vec(p, (rows, width), t.device())?);
        }
        let _ = cols;
        Ok(Tensor::cat(&tensors, 1)?.to_dtype(t.dtype())?)
    }
}
