//! One request's life inside the engine: its tokens, KV blocks, sampler, streaming detokenizer
//! and stop state. Preemption drops only the KV blocks: tokens, sampler, decoder and stop state
//! survive, so a recomputed sequence continues its text stream where it left off.

use std::sync::Arc;
use std::time::Instant;

use shardline_sampling::{check_token_stop, FinishReason, SampledToken, Sampler, SamplingParams, StopMatcher};
use shardline_tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};

use crate::error::Result;
use crate::output::{GenerationMetrics, GenerationOutput, TokenLogprobs};

/// What a request asks the model to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized with the tokenizer's special tokens (e.g. BOS) added.
    Text(String),
    /// Messages rendered with the model's chat template and a generation prompt.
    Chat(Vec<ChatMessage>),
    /// Already-tokenized input, used as is.
    Tokens(Vec<u32>),
}

pub(crate) struct Sequence {
    pub id: u64,
    pub prompt_len: usize,
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    /// Leading `tokens` whose K/V are in the cache.
    pub cached_len: usize,
    /// KV blocks covering the cached tokens and those scheduled this step (allocated on demand).
    pub blocks: Vec<u32>,
    /// The id the executor knows this sequence's block table by, and that table's length; `None`
    /// while the executor knows nothing of it (see [`crate::executor::ScheduledSeq`]).
    pub registered: Option<(u64, usize)>,
    /// Part of a step the executor has not returned yet: not to be scheduled, preempted or
    /// have its blocks freed until it does.
    pub in_flight: bool,
    /// Aborted while in flight: dropped (blocks freed, no output) when its step returns.
    pub aborted: bool,
    pub params: SamplingParams,
    sampler: Sampler,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    stop: StopMatcher,
    pub text: String,
    logprobs: Vec<TokenLogprobs>,
    pub finish: Option<FinishReason>,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

/// What one step produced for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEvent {
    pub request_id: u64,
    pub token_id: u32,
    /// Text that became final with this token (may be empty while a character or a possible
    /// stop string is incomplete).
    pub text: String,
    pub finish: Option<FinishReason>,
    /// This token's logprob entry, when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
}

impl Sequence {
    pub fn new(
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        tokenizer: Arc<Tokenizer>,
        blocks: Vec<u32>,
        arrival: Instant,
    ) -> Self {
        Sequence {
            id,
            prompt_len: prompt.len(),
            decoder: IncrementalDecoder::new(tokenizer, &prompt),
            sampler: Sampler::new(&params),
            stop: StopMatcher::new(&params.stop),
            tokens: prompt,
            cached_len: 0,
            blocks,
            registered: None,
            in_flight: false,
            aborted: false,
            params,
            text: String::new(),
            logprobs: Vec::new(),
            finish: None,
            arrival,
            first_scheduled: None,
            first_token: None,
            last_token: None,
        }
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Tokens not yet in the KV cache: the rest of the prompt, or the last sampled token.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cached_len
    }

    /// Whether only the last sampled token is missing from the cache.
    pub fn is_decode(&self) -> bool {
        self.pending() == 1
    }

    /// Records the first time the scheduler gave this sequence tokens (ends its queueing time).
    pub fn mark_scheduled(&mut self, now: Instant) {
        self.first_scheduled.get_or_insert(now);
    }

    /// Forgets the KV cache (preemption by recompute): returns the blocks to free and leaves
    /// every token pending, so the next schedule refeeds prompt and generated tokens alike.
    pub fn evict(&mut self) -> Vec<u32> {
        self.cached_len = 0;
        std::mem::take(&mut self.blocks)
    }

    /// Samples from this step's logits and applies every stop rule.
    pub fn accept(&mut self, logits: &[f32], eos_token_ids: &[u32]) -> Result<StepEvent> {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        let SampledToken { token_id, logprob, top } = self.sampler.sample(logits, &self.tokens);
        self.tokens.push(token_id);
        let entry = self.params.logprobs.map(|_| TokenLogprobs { token_id, logprob, top });
        if let Some(entry) = &entry {
            self.logprobs.push(entry.clone());
        }
        let delta = self.decoder.push(token_id)?;
        let mut out = self.stop.push(&delta);
        let mut finish = out.stopped.then_some(FinishReason::Stop);
        if finish.is_none() {
            finish = check_token_stop(token_id, self.generated().len(), &self.params, eos_token_ids);
            if finish.is_some() {
                let tail = self.decoder.finish()?;
                let more = self.stop.push(&tail);
                out.emit.push_str(&more.emit);
                if more.stopped {
                    finish = Some(FinishReason::Stop);
                } else {
                    out.emit.push_str(&self.stop.finish());
                }
            }
        }
        self.text.push_str(&out.emit);
        self.finish = finish;
        Ok(StepEvent { request_id: self.id, token_id, text: out.emit, finish, logprobs: entry })
    }

    pub fn output(&self) -> GenerationOutput {
        // 0 for a span whose end (or start) never happened.
        let secs = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let arrival = Some(self.arrival);
        let ttft = secs(arrival, self.first_token);
        let n = self.generated().len();
        let decode_secs = secs(self.first_token, self.last_token);
        GenerationOutput {
            text: self.text.clone(),
            prompt_token_ids: self.tokens[..self.prompt_len].to_vec(),
            token_ids: self.generated().to_vec(),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            logprobs: self.params.logprobs.map(|_| self.logprobs.clone()),
            metrics: GenerationMetrics {
                ttft_ms: ttft * 1e3,
                prefill_tokens_per_s: if ttft > 0.0 { self.prompt_len as f64 / ttft } else { 0.0 },
                decode_tokens_per_s: if n > 1 && decode_secs > 0.0 { (n - 1) as f64 / decode_secs } else { 0.0 },
                queue_ms: secs(arrival, self.first_scheduled) * 1e3,
                prefill_ms: secs(self.first_scheduled, self.first_token) * 1e3,
                decode_ms: decode_secs * 1e3,
                e2e_ms: secs(arrival, self.last_token) * 1e3,
            },
        }
    }
}
