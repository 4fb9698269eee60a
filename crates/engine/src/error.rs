//! Engine errors: invalid requests (the caller's fault, reported as INVALID_ARGUMENT / HTTP 400
//! by front ends) kept apart from failures of the model, the weights or the tokenizer.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Sampling(#[from] shardline_sampling::SamplingError),
    #[error(transparent)]
    Model(#[from] shardline_model::ModelError),
    #[error(transparent)]
    Weights(#[from] shardline_weights::WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] shardline_tokenizer::TokenizerError),
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
    #[error("{0}")]
    Load(String),
}

impl EngineError {
    /// Whether the request itself was bad (as opposed to the server failing).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, EngineError::InvalidRequest(_) | EngineError::Sampling(_))
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
