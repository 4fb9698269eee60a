//! The collective operations a tensor-parallel layer needs, behind a trait so the model does not
//! care whether ranks talk through NCCL, TCP or not at all.

use candle_core::Tensor;

use crate::error::Result;

/// Collectives over one tensor-parallel group. Every rank of the group must call the same
/// operations in the same order with tensors of the same shape.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over ranks (after row-parallel projections).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// `all_reduce_sum` of a tensor the caller gives up and that shares its storage with no
    /// tensor still in use (a fresh projection's output): NCCL then sums in that buffer instead
    /// of a copy of it.
    fn all_reduce_sum_owned(&self, t: Tensor) -> Result<Tensor> {
        self.all_reduce_sum(&t)
    }
    /// Concatenates each rank's tensor along the last dimension, in rank order (vocab-sharded
    /// logits). Ranks may hold different widths (uneven splits).
    fn all_gather_last_dim(&self, t: &Tensor) -> Result<Tensor>;
}

/// The trivial group of one rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather_last_dim(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}
