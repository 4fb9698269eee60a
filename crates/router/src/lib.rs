//! Rank 0's router, in vLLM v1's layers: API servers (gRPC in [`grpc`], OpenAI-compatible
//! HTTP in [`http`]) → the engine core thread ([`engine_core`]) → the executor (this process's
//! model or a tensor/pipeline-parallel group). The API layer validates, renders chat templates
//! and tokenizes (on its own threads), then waits on per-request event channels and reports what
//! the core measured; it schedules nothing.

pub mod auth;
pub mod convert;
pub mod engine_core;
mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
mod openai;
mod server;

use std::sync::Arc;

use shardline_engine::{Engine, EngineLimits};
use shardline_tokenizer::{Prompt, Tokenizer};

pub use crate::engine_core::{CoreConfig, CoreEvent, CoreStats, EngineCore, EngineHandle, Submitted};
pub use auth::ApiKeys;
pub use error::RouterError;
pub use metrics::Metrics;
pub use server::{serve, ServeConfig, ServeError};

/// Static facts about what is served, shared by every front end.
#[derive(Clone)]
pub struct ServerInfo {
    /// The model as given on the command line (path or alias); also the OpenAI model id.
    pub model_id: String,
    pub tokenizer: Arc<Tokenizer>,
    /// What the engine accepts, as the engine reports it.
    pub limits: EngineLimits,
    pub eos_token_ids: Vec<u32>,
    pub tp: usize,
    pub pp: usize,
    /// Weights and activations dtype, as `--dtype` spells it.
    pub dtype: String,
}

impl ServerInfo {
    /// What `engine` serves as `model_id`, split `tp` × `pp`.
    pub fn new(model_id: String, engine: &Engine, tp: usize, pp: usize, dtype: String) -> Self {
        ServerInfo {
            model_id,
            tokenizer: Arc::clone(engine.tokenizer()),
            limits: engine.limits().clone(),
            eos_token_ids: engine.eos_token_ids().to_vec(),
            tp,
            pp,
            dtype,
        }
    }

    /// The token ids the engine is given for `prompt`; tokenizer and template failures are the
    /// request's (INVALID_ARGUMENT / 400).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, RouterError> {
        Ok(self.tokenizer.encode_prompt(prompt)?)
    }
}
