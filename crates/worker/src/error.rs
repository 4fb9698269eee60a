//! Worker errors, wrapping the communicator's and the model's.

use shardline_exec::ExecutorError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid group layout: {0}")]
    Layout(String),
    #[error("group environment: {0}")]
    Env(String),
    #[error(transparent)]
    Comm(#[from] shardline_comm::CommError),
    #[error(transparent)]
    Model(#[from] shardline_model::ModelError),
    #[error(transparent)]
    Plan(#[from] ExecutorError),
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("rank {rank}: {message}")]
    Remote { rank: usize, message: String },
    #[error(
        "rank {rank} has sent nothing for {:.1} s: stopped, hung or cut off (heartbeat timeout {:.1} s)",
        silent.as_secs_f64(),
        timeout.as_secs_f64()
    )]
    Silent { rank: usize, silent: std::time::Duration, timeout: std::time::Duration },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// This rank could not (re)join the group: rank 0 is gone, or never came. A launcher should
    /// not start the rank again.
    #[error("the group is gone: {0}")]
    GroupGone(Box<shardline_comm::CommError>),
    #[error("{0}")]
    Device(String),
}

impl From<candle_core::Error> for WorkerError {
    fn from(e: candle_core::Error) -> Self {
        WorkerError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, WorkerError>;

impl From<WorkerError> for ExecutorError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Plan(e) => e,
            other => ExecutorError::failed(other),
        }
    }
}
