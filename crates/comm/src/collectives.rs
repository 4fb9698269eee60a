//! Collectives over a subgroup of ranks, built on point-to-point messages.
//!
//! Tensor-parallel groups here are small (2–8 ranks) and messages are activations of one step,
//! so every member sends its buffer to every other member and sums contributions in rank order.
//! That costs (n−1)× the bytes of a ring but gives every rank bit-identical results, which keeps
//! greedy decoding identical across ranks without a broadcast.

use crate::error::{CommError, Result};
use crate::mesh::{Comm, Tag};

/// A set of ranks acting together (sorted; contains the calling rank).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    ranks: Vec<usize>,
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(data).to_vec()
}

/// Decodes little-endian f32s without assuming the buffer is 4-byte aligned.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// An element type all-reduce sums.
trait Summand: bytemuck::Pod + std::ops::AddAssign {}
impl Summand for f32 {}
impl Summand for f64 {}

impl Group {
    pub fn new(mut ranks: Vec<usize>) -> Self {
        ranks.sort_unstable();
        ranks.dedup();
        Group { ranks }
    }

    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    pub fn size(&self) -> usize {
        self.ranks.len()
    }

    /// Position of `rank` in the group.
    pub fn index_of(&self, rank: usize) -> Option<usize> {
        self.ranks.iter().position(|&r| r == rank)
    }

    fn check_member(&self, comm: &Comm) -> Result<()> {
        if self.index_of(comm.rank()).is_none() {
            return Err(CommError::Protocol(format!("rank {} is not in group {:?}", comm.rank(), self.ranks)));
        }
        Ok(())
    }

    fn send_to_others(&self, comm: &Comm, payload: &[u8]) -> Result<()> {
        for &r in self.ranks.iter().filter(|&&r| r != comm.rank()) {
            comm.send(r, Tag::Collective, payload.to_vec())?;
        }
        Ok(())
    }

    /// Element-wise sum over the group, summed in rank order on every rank.
    pub fn all_reduce_sum(&self, comm: &Comm, data: &mut [f32]) -> Result<()> {
        self.all_reduce_sum_of(comm, data)
    }

    /// `all_reduce_sum` in f64 (exact partial sums whose total is rounded once, by the caller).
    pub fn all_reduce_sum_f64(&self, comm: &Comm, data: &mut [f64]) -> Result<()> {
        self.all_reduce_sum_of(comm, data)
    }

    fn all_reduce_sum_of<T: Summand>(&self, comm: &Comm, data: &mut [T]) -> Result<()> {
        self.check_member(comm)?;
        if self.size() == 1 {
            return Ok(());
        }
        self.send_to_others(comm, bytemuck::cast_slice(data))?;
        let mine = data.to_vec();
        data.fill(T::zeroed());
        let width = std::mem::size_of::<T>();
        for &r in &self.ranks {
            if r == comm.rank() {
                data.iter_mut().zip(&mine).for_each(|(d, &m)| *d += m);
                continue;
            }
            let bytes = comm.recv(r, Tag::Collective)?;
            if bytes.len() != std::mem::size_of_val(data) {
                return Err(CommError::Protocol(format!(
                    "all-reduce: rank {r} sent {} values, expected {}",
                    bytes.len() / width,
                    data.len()
                )));
            }
            // Read unaligned: the received buffer need not be aligned for T.
            for (d, c) in data.iter_mut().zip(bytes.chunks_exact(width)) {
                *d += bytemuck::pod_read_unaligned::<T>(c);
            }
        }
        Ok(())
    }

    /// Every member's buffer, in rank order (sizes may differ between members).
    pub fn all_gather(&self, comm: &Comm, data: &[f32]) -> Result<Vec<Vec<f32>>> {
        Ok(self.all_gather_bytes(comm, &f32_bytes(data))?.iter().map(|b| f32s(b)).collect())
    }

    /// Every member's bytes, in rank order (small messages: device identities, for instance).
    pub fn all_gather_bytes(&self, comm: &Comm, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.check_member(comm)?;
        self.send_to_others(comm, data)?;
        self.ranks
            .iter()
            .map(|&r| if r == comm.rank() { Ok(data.to_vec()) } else { comm.recv(r, Tag::Collective) })
            .collect()
    }

    /// `root`'s payload on every member (`payload` is only read on the root).
    pub fn broadcast(&self, comm: &Comm, root: usize, payload: &[u8]) -> Result<Vec<u8>> {
        self.check_member(comm)?;
        if comm.rank() == root {
            self.send_to_others(comm, payload)?;
            Ok(payload.to_vec())
        } else {
            comm.recv(root, Tag::Collective)
        }
    }

    /// Returns once every member has arrived.
    pub fn barrier(&self, comm: &Comm) -> Result<()> {
        self.all_gather(comm, &[]).map(|_| ())
    }
}
