//! The JSON result of one generation: a contract shared by `shardline run --output json` and
//! `shardline generate`, so scripts can switch between offline and served runs.

use serde::Serialize;
use shardline_sampling::{FinishReason, TokenLogprob};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprobs {
    pub token_id: u32,
    pub logprob: f32,
    pub top: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationMetrics {
    /// Request arrival to first generated token.
    pub ttft_ms: f64,
    /// Prompt tokens / prefill time (arrival to first token).
    pub prefill_tokens_per_s: f64,
    /// (generated − 1) / time from first to last token; 0 with a single token.
    pub decode_tokens_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    pub metrics: GenerationMetrics,
}
