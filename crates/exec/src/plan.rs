//! One step's plan and its output.
//!
//! A request is described in full once, when a step first schedules it (or schedules it again
//! after a preemption made the workers forget it); afterwards a step names it by id with what
//! changed: the tokens appended since it last ran (the token sampled for it) and the KV blocks
//! allocated since. Executors keep each request's state between steps and apply a plan in a
//! fixed order: forget, then add, then update and run.

use shardline_sampling::{SampledToken, SamplerSettings, ScoredToken};

/// The engine's id of a request; stable for the request's whole life, across preemptions.
pub type RequestId = u64;

/// A request the executor has not seen (or has forgotten): everything it needs to run it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRequest {
    pub id: RequestId,
    /// Every token known so far: the prompt, plus the tokens generated before a preemption.
    pub token_ids: Vec<u32>,
    /// Leading tokens whose K/V are already in `block_ids` (a prefix-cache hit); the step
    /// computes from here.
    pub num_computed_tokens: usize,
    /// KV blocks for positions 0.., in order: cached ones first, then those allocated for this
    /// step. Later steps append to this table.
    pub block_ids: Vec<u32>,
    pub sampling: SamplerSettings,
}

/// One request's share of a step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub id: RequestId,
    /// Tokens this step computes, continuing from what the request has computed so far.
    pub num_tokens: usize,
    /// Tokens appended since the request last ran (the token sampled for it then); empty for
    /// a request new in this plan.
    pub new_token_ids: Vec<u32>,
    /// KV blocks appended to its table since it last ran; empty for a request new in this plan.
    pub new_block_ids: Vec<u32>,
    /// Constrained by a structured output: its next sample takes a mask, which comes after the
    /// plan (see [`crate::StepMasks`]), computed while the step's forward runs.
    pub masked: bool,
}

/// What one step runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Requests to forget before anything else: finished, aborted or preempted since the last
    /// plan. A preempted request may come back in `new_requests` of the same plan.
    pub forget: Vec<RequestId>,
    /// Requests introduced by this step; each is also in `scheduled`.
    pub new_requests: Vec<NewRequest>,
    /// The batch, in order. After the step, a request whose computed tokens reach the end of
    /// its known tokens gets its next token sampled.
    pub scheduled: Vec<ScheduledRequest>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// Tokens computed in this step.
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_tokens).sum()
    }

    /// Whether masks follow this plan: some request of it is masked.
    pub fn has_masks(&self) -> bool {
        self.scheduled.iter().any(|s| s.masked)
    }
}

/// A token sampled for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub id: RequestId,
    pub token: SampledToken,
}

/// A request's prompt tokens scored by the step that computed their predecessors (for
/// `prompt_logprobs`): entry `i` is the prompt token at position `start + i`, scored under the
/// logits of the position before it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprobs {
    pub id: RequestId,
    pub start: usize,
    pub entries: Vec<ScoredToken>,
}

/// What a step returns: one sampled token per request that reached the end of its known
/// tokens, in batch order, and the prompt logprobs of the requests that asked for them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub sampled: Vec<Sampled>,
    pub prompt_logprobs: Vec<PromptLogprobs>,
}
