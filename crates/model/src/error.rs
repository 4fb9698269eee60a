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
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("collective operation failed: {0}")]
    Collective(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;
