//! NCCL for one tensor-parallel group of CUDA ranks (cudarc). The group's first rank creates the
//! 128-byte unique id and the TCP group (the same rendezvous the CPU path uses) broadcasts it;
//! then every member joins the NCCL communicator on its own stream.

use std::ffi::c_char;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::Id;
pub use cudarc::nccl::{Comm as RawNccl, ReduceOp};

use crate::collectives::Group;
use crate::error::{CommError, Result};
use crate::mesh::Comm;

pub struct NcclComm {
    inner: RawNccl,
}

// SAFETY: NCCL allows a communicator to be used from any thread as long as calls on it are not
// concurrent; a rank issues its collectives from its single step thread, one at a time.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> CommError {
    CommError::Protocol(format!("NCCL {what}: {e:?}"))
}

impl NcclComm {
    /// Joins `group`'s NCCL communicator on `stream` (blocks until every member joins).
    pub fn new(tcp: &Comm, group: &Group, stream: Arc<CudaStream>) -> Result<Self> {
        let me = group
            .index_of(tcp.rank())
            .ok_or_else(|| CommError::Protocol(format!("rank {} is not in group {:?}", tcp.rank(), group.ranks())))?;
        let root = group.ranks()[0];
        let id_bytes: Vec<u8> = if me == 0 {
            let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let bytes = group.broadcast(tcp, root, &id_bytes)?;
        if bytes.len() != 128 {
            return Err(CommError::Protocol(format!("NCCL id of {} bytes from rank {root}", bytes.len())));
        }
        let mut raw = [0 as c_char; 128];
        for (d, s) in raw.iter_mut().zip(&bytes) {
            *d = *s as c_char;
        }
        stream.context().bind_to_thread().map_err(|e| nccl_err("binding the CUDA context", e))?;
        let inner = RawNccl::from_rank(stream, me, group.size(), Id::uninit(raw)).map_err(|e| nccl_err("init", e))?;
        Ok(NcclComm { inner })
    }

    pub fn raw(&self) -> &RawNccl {
        &self.inner
    }
}
