//! Errors of the model crate, wrapping the weight loader's and candle's.

use shardline_weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unsupported architecture `{0}` (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)")]
    UnsupportedArchitecture(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid shard layout: {0}")]
    Shard(String),
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Boxed: candle's error is large and would bloat every `Result` on the hot path.
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
    #[error("collective operation failed: {0}")]
    Collective(String),
    #[error("GPU: {0}")]
    Gpu(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
