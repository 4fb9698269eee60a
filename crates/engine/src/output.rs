//! The JSON result of one generation: a contract shared by `shardline run --output json` and
//! `shardline generate`, so scripts can switch between offline and served runs.

use serde::Serialize;
use shardline_exec::RequestId;
use shardline_sampling::{FinishReason, ScoredToken, TokenLogprob};

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
    /// Arrival to the first time the scheduler gave the request tokens.
    pub queue_ms: f64,
    /// First scheduled to first generated token (the prompt's prefill, possibly chunked).
    pub prefill_ms: f64,
    /// First to last generated token (includes recomputation after a preemption).
    pub decode_ms: f64,
    /// Arrival to last generated token: queue_ms + prefill_ms + decode_ms.
    pub e2e_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Present when the request asked for prompt logprobs: one entry per prompt token, the
    /// first `None` (nothing precedes it to predict it).
    pub prompt_logprobs: Option<Vec<Option<ScoredToken>>>,
    /// Prompt tokens whose K/V came from the prefix cache (OpenAI's
    /// `usage.prompt_tokens_details.cached_tokens`).
    pub num_cached_tokens: usize,
    pub metrics: GenerationMetrics,
}

/// What one step produced for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEvent {
    pub request_id: RequestId,
    pub token_id: u32,
    /// Text that became final with this token (may be empty while a character or a possible
    /// stop string is incomplete).
    pub text: String,
    pub finish: Option<FinishReason>,
    /// This token's logprob entry, when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
    /// With the first token of a request that asked for prompt logprobs: the prompt's (as
    /// [`GenerationOutput::prompt_logprobs`]), all known by then.
    pub prompt_logprobs: Option<Vec<Option<ScoredToken>>>,
}
