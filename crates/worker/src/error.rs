//! Worker errors, wrapping the communicator's, the model's and the engine's.

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
    Engine(#[from] shardline_engine::EngineError),
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("rank {rank}: {message}")]
    Remote { rank: usize, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Device(String),
}

impl From<candle_core::Error> for WorkerError {
    fn from(e: candle_core::Error) -> Self {
        WorkerError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, WorkerError>;

impl From<WorkerError> for shardline_engine::EngineError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Engine(e) => e,
            other => shardline_engine::EngineError::Load(other.to_string()),
        }
    }
}
