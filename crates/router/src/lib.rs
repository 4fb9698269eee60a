//! Rank 0's router, in vLLM v1's layers: API servers (gRPC in [`grpc`], OpenAI-compatible
//! HTTP in [`http`]) → the engine core thread ([`core`]) → the executor (this process's model
//! or a tensor/pipeline-parallel group). The API layer tokenizes nothing and schedules nothing:
//! it converts requests, waits on per-request event channels and reports what the core measured.

pub mod convert;
pub mod core;
mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
mod openai;
mod server;

use std::sync::Arc;

use shardline_tokenizer::Tokenizer;

pub use crate::core::{CoreConfig, CoreEvent, CoreStats, EngineCore, EngineHandle, Submitted};
pub use error::RouterError;
pub use metrics::Metrics;
pub use server::{serve, ServeConfig, ServeError};

/// Static facts about what is served, shared by every front end.
#[derive(Clone)]
pub struct ServerInfo {
    /// The model as given on the command line (path or alias); also the OpenAI model id.
    pub model_id: String,
    pub tokenizer: Arc<Tokenizer>,
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub eos_token_ids: Vec<u32>,
    pub tp: usize,
    pub pp: usize,
    pub block_size: usize,
    pub num_kv_blocks: usize,
    pub dtype: String,
    pub scheduler: String,
}
