//! Engine errors: invalid requests (the caller's fault, reported as INVALID_ARGUMENT / HTTP 400
//! by front ends) kept apart from failures of the executor or the detokenizer.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Sampling(#[from] shardline_sampling::SamplingError),
    #[error(transparent)]
    Executor(#[from] shardline_exec::ExecutorError),
    /// Detokenizing a generated token failed.
    #[error(transparent)]
    Tokenizer(#[from] shardline_tokenizer::TokenizerError),
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The engine's own books disagree with the executor's output: a bug, reported.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the request itself was bad (as opposed to the server failing).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, EngineError::InvalidRequest(_) | EngineError::Sampling(_))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
