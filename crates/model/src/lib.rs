//! Llama-family decoder models (Llama 2/3/3.1, TinyLlama, SmolLM/SmolLM2, Mistral, Qwen2/2.5) for
//! Shardline: config resolution, tensor-parallel shard plans, a pipeline stage's layers, and a
//! batched forward pass over ragged sequences with a paged KV cache.
//!
//! On the CPU in f32 the hot paths run on `shardline-ops` kernels; every other device/dtype runs
//! the same math with candle tensor ops.

mod batch;
mod collective;
mod config;
mod error;
pub mod footprint;
#[cfg(feature = "cuda")]
mod gpu;
mod kv;
mod llama;
mod load;
mod ops;
mod rope;
mod shard;
mod step_meta;
pub mod testing;
mod weight;

pub use batch::{BatchInput, SeqInput};
pub use collective::{Collective, SingleRank};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
#[cfg(feature = "cuda")]
pub use gpu::RowCandidates;
pub use kv::KvCache;
pub use llama::{Llama, LoadOptions};
pub use load::{DeviceKind, LoadFormat, ModelSpec};
pub use shard::{even_split, ShardPlan};
pub use step_meta::StepMetadata;
pub use weight::{Quantization, Weight};
