//! What can go wrong while planning, each with the message a user needs to fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown hardware `{name}`: use one of {known}, or a .toml file describing it")]
    UnknownHardware { name: String, known: String },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    BadHardware { path: PathBuf, message: String },
    #[error("model `{spec}`: {message}")]
    BadModel { spec: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    FitsNowhere(String),
    #[error(transparent)]
    Model(#[from] shardline_model::ModelError),
    #[error(transparent)]
    Weights(#[from] shardline_weights::WeightsError),
    #[error(transparent)]
    Worker(#[from] shardline_worker::WorkerError),
}

pub type Result<T> = std::result::Result<T, PlanError>;
