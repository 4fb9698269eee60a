//! Output processing (vLLM v1's `OutputProcessor`): turns sampled token ids into what front
//! ends stream. Per request it detokenizes incrementally, applies every stop rule (stop token
//! ids, EOS, max_tokens, stop strings over the streamed text), collects logprobs and timings,
//! and finally builds the [`GenerationOutput`]. It knows nothing of blocks or scheduling: a
//! preempted request simply receives its next token later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use shardline_exec::{PromptLogprobs, RequestId};
use shardline_sampling::{check_token_stop, FinishReason, SampledToken, SamplingParams, ScoredToken, StopMatcher};
use shardline_tokenizer::{IncrementalDecoder, Tokenizer};

use crate::error::Result;
use crate::output::{GenerationMetrics, GenerationOutput, StepEvent, TokenLogprobs};

pub(crate) struct OutputProcessor {
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    requests: HashMap<RequestId, RequestOutput>,
}

/// One request's text stream and record.
struct RequestOutput {
    prompt_token_ids: Vec<u32>,
    token_ids: Vec<u32>,
    params: SamplingParams,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    stop: StopMatcher,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    /// By prompt position, when asked for: a recomputed prompt is scored again, and the same
    /// positions are overwritten with the same values.
    prompt_logprobs: Option<Vec<Option<ScoredToken>>>,
    finish: Option<FinishReason>,
    num_cached_tokens: usize,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl OutputProcessor {
    pub fn new(tokenizer: Arc<Tokenizer>, eos_token_ids: Vec<u32>) -> Self {
        OutputProcessor { tokenizer, eos_token_ids, requests: HashMap::new() }
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn add(&mut self, id: RequestId, prompt: &[u32], params: SamplingParams, arrival: Instant) {
        let prompt_logprobs = params.prompt_logprobs.map(|_| vec![None; prompt.len()]);
        let out = RequestOutput {
            prompt_token_ids: prompt.to_vec(),
            token_ids: Vec::new(),
            decoder: IncrementalDecoder::new(Arc::clone(&self.tokenizer), prompt),
            stop: StopMatcher::new(&params.stop),
            params,
            text: String::new(),
            logprobs: Vec::new(),
            prompt_logprobs,
            finish: None,
            num_cached_tokens: 0,
            arrival,
            first_scheduled: None,
            first_token: None,
            last_token: None,
        };
        self.requests.insert(id, out);
    }

    /// The first time a step gave the request tokens (ends its queueing), and how many of its
    /// prompt tokens the prefix cache held then.
    pub fn scheduled(&mut self, id: RequestId, now: Instant, num_cached_tokens: usize) {
        if let Some(r) = self.requests.get_mut(&id) {
            if r.first_scheduled.is_none() {
                r.first_scheduled = Some(now);
                r.num_cached_tokens = num_cached_tokens;
            }
        }
    }

    /// Records prompt tokens a step scored (for a request still known).
    pub fn prompt_scored(&mut self, scored: PromptLogprobs) {
        let Some(slots) = self.requests.get_mut(&scored.id).and_then(|r| r.prompt_logprobs.as_mut()) else { return };
        for (slot, entry) in slots.iter_mut().skip(scored.start).zip(scored.entries) {
            *slot = Some(entry);
        }
    }

    /// Takes the request's next token; the event's `finish` says whether it is done.
    /// `complete`: its structured output is complete, so it stops as at an end-of-sequence.
    pub fn process(&mut self, id: RequestId, sampled: SampledToken, now: Instant, complete: bool) -> Result<StepEvent> {
        let r = self.requests.get_mut(&id).expect("sampled requests have an output");
        r.first_token.get_or_insert(now);
        r.last_token = Some(now);
        let SampledToken { token_id, logprob, top } = sampled;
        r.token_ids.push(token_id);
        let entry = r.params.logprobs.map(|_| TokenLogprobs { token_id, logprob, top });
        if let Some(entry) = &entry {
            r.logprobs.push(entry.clone());
        }
        let prompt_logprobs = if r.token_ids.len() == 1 { r.prompt_logprobs.clone() } else { None };
        let delta = r.decoder.push(token_id)?;
        let mut out = r.stop.push(&delta);
        let mut finish = out.stopped.then_some(FinishReason::Stop);
        if finish.is_none() {
            finish = check_token_stop(token_id, r.token_ids.len(), &r.params, &self.eos_token_ids)
                .or(complete.then_some(FinishReason::Stop));
            if finish.is_some() {
                // The decoder may hold the last bytes of a character; they count for stop strings.
                let tail = r.decoder.finish()?;
                let more = r.stop.push(&tail);
                out.emit.push_str(&more.emit);
                if more.stopped {
                    finish = Some(FinishReason::Stop);
                } else {
                    out.emit.push_str(&r.stop.finish());
                }
            }
        }
        r.text.push_str(&out.emit);
        r.finish = finish;
        Ok(StepEvent { request_id: id, token_id, text: out.emit, finish, logprobs: entry, prompt_logprobs })
    }

    /// The finished request's result; it is forgotten here.
    pub fn take(&mut self, id: RequestId) -> Option<GenerationOutput> {
        self.requests.remove(&id).map(RequestOutput::into_output)
    }

    pub fn remove(&mut self, id: RequestId) {
        self.requests.remove(&id);
    }
}

impl RequestOutput {
    fn into_output(self) -> GenerationOutput {
        // 0 for a span whose end (or start) never happened.
        let secs = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let arrival = Some(self.arrival);
        let ttft = secs(arrival, self.first_token);
        let n = self.token_ids.len();
        let decode_secs = secs(self.first_token, self.last_token);
        let prompt_len = self.prompt_token_ids.len();
        GenerationOutput {
            text: self.text,
            prompt_token_ids: self.prompt_token_ids,
            token_ids: self.token_ids,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            logprobs: self.params.logprobs.map(|_| self.logprobs),
            prompt_logprobs: self.prompt_logprobs,
            num_cached_tokens: self.num_cached_tokens,
            metrics: GenerationMetrics {
                ttft_ms: ttft * 1e3,
                prefill_tokens_per_s: if ttft > 0.0 { prompt_len as f64 / ttft } else { 0.0 },
                decode_tokens_per_s: if n > 1 && decode_secs > 0.0 { (n - 1) as f64 / decode_secs } else { 0.0 },
                queue_ms: secs(arrival, self.first_scheduled) * 1e3,
                prefill_ms: secs(self.first_scheduled, self.first_token) * 1e3,
                decode_ms: decode_secs * 1e3,
                e2e_ms: secs(arrival, self.last_token) * 1e3,
            },
        }
    }
}
