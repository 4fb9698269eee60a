//! Communication errors; each names the rank involved so operators know which process to look at.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("rank {rank} did not {what} within {} s", timeout.as_secs_f64())]
    Timeout { rank: usize, what: &'static str, timeout: Duration },
    #[error("ranks {ranks:?} did not join the rendezvous at {addr} within {} s", timeout.as_secs_f64())]
    MissingRanks { ranks: Vec<usize>, addr: String, timeout: Duration },
    #[error("lost the connection to rank {rank}")]
    Disconnected { rank: usize },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("NCCL {what} failed: {detail}")]
    Nccl { what: &'static str, detail: String },
    #[error("NCCL {what} did not finish within {} s (NCCL aborted; a peer is stuck or gone)", timeout.as_secs_f64())]
    NcclTimeout { what: &'static str, timeout: Duration },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl CommError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CommError::Io { context: context.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, CommError>;
