//! The step loop (vLLM v1's `EngineCore.step`): fill the executor's pipeline with plans from
//! the scheduler, wait for the oldest step, let the scheduler update its books from the sampled
//! tokens, and let the output processor turn them into text and stop decisions. A plan with
//! constrained requests is submitted while their structured-output masks are computed on a
//! thread of their own, so mask time hides behind the forward rather than adding to the step.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use shardline_exec::{Executor, ExecutorError, PendingMasks, RequestId, StepPlan};
use shardline_sampling::SamplingParams;
use shardline_structured::{Guide, SharedGrammars};
use shardline_tokenizer::Tokenizer;

use crate::config::{EngineConfig, SchedulerPolicy};
use crate::error::{EngineError, Result};
use crate::guided::GuidedRequests;
use crate::output::{GenerationOutput, StepEvent};
use crate::output_processor::OutputProcessor;
use crate::scheduler::{PrefixCacheStats, Scheduler, SchedulerConfig};

/// What the engine accepts, for front ends to report and check against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    pub vocab_size: usize,
    /// The model's context length.
    pub max_model_len: usize,
    pub block_size: usize,
    pub num_kv_blocks: usize,
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
    pub policy: SchedulerPolicy,
    pub prefix_caching: bool,
}

impl EngineLimits {
    /// Most tokens (prompt + generated) one request may span: the context length, and no more
    /// than the KV cache holds.
    pub fn max_request_tokens(&self) -> usize {
        self.max_model_len.min(self.num_kv_blocks * self.block_size)
    }
}

pub struct Engine {
    exec: Box<dyn Executor>,
    scheduler: Scheduler,
    outputs: OutputProcessor,
    tokenizer: Arc<Tokenizer>,
    limits: EngineLimits,
    finished: HashMap<RequestId, GenerationOutput>,
    next_id: RequestId,
    recovery: RecoveryStats,
    guided: GuidedRequests,
}

/// Recoveries from executor resets (a rank replaced) so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecoveryStats {
    /// Resets survived: each one re-formed the group and recomputed every request.
    pub recoveries: u64,
    pub ranks_replaced: u64,
    /// Requests recomputed because of a reset.
    pub requests_recomputed: u64,
    /// How long the last recovery took, from the failure to the group running again.
    pub last_seconds: f64,
}

impl Engine {
    /// `extra_eos` (e.g. the model config's `eos_token_id`) joins the tokenizer's EOS ids.
    pub fn new(
        exec: Box<dyn Executor>,
        tokenizer: Arc<Tokenizer>,
        extra_eos: &[u32],
        cfg: EngineConfig,
    ) -> Result<Self> {
        if cfg.max_batch_tokens == 0 || cfg.max_num_seqs == 0 {
            return Err(EngineError::Config("max_batch_tokens and max_num_seqs must be positive".into()));
        }
        let mut eos_token_ids = tokenizer.eos_token_ids().to_vec();
        for id in extra_eos {
            if !eos_token_ids.contains(id) {
                eos_token_ids.push(*id);
            }
        }
        let limits = EngineLimits {
            vocab_size: exec.vocab_size(),
            max_model_len: exec.max_model_len(),
            block_size: exec.block_size(),
            num_kv_blocks: exec.num_blocks(),
            max_num_seqs: cfg.max_num_seqs,
            max_batch_tokens: cfg.max_batch_tokens,
            policy: cfg.policy,
            prefix_caching: cfg.enable_prefix_caching,
        };
        let scheduler = Scheduler::new(SchedulerConfig {
            max_batch_tokens: cfg.max_batch_tokens,
            max_num_seqs: cfg.max_num_seqs,
            policy: cfg.policy,
            block_size: limits.block_size,
            num_blocks: limits.num_kv_blocks,
            max_in_flight: exec.max_in_flight(),
            enable_prefix_caching: cfg.enable_prefix_caching,
        });
        Ok(Engine {
            exec,
            scheduler,
            guided: GuidedRequests::new(Arc::clone(&tokenizer), limits.vocab_size, &eos_token_ids),
            outputs: OutputProcessor::new(Arc::clone(&tokenizer), eos_token_ids),
            tokenizer,
            limits,
            finished: HashMap::new(),
            next_id: 0,
            recovery: RecoveryStats::default(),
        })
    }

    /// Structured-output masks computed so far, and the seconds they took on rank 0.
    pub fn structured_mask_stats(&self) -> (u64, f64) {
        self.guided.mask_stats()
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    /// The tokenizer the engine detokenizes with (front ends encode with the same one).
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        self.outputs.eos_token_ids()
    }

    /// Checks a request against the model and the cache.
    fn validate(&self, prompt: &[u32], params: &SamplingParams) -> Result<()> {
        params.validate(self.limits.vocab_size)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = self.limits.vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let total = prompt.len() + params.max_tokens;
        let max_len = self.limits.max_model_len;
        if total > max_len {
            return Err(EngineError::InvalidRequest(format!(
                "prompt ({} tokens) + max_tokens ({}) = {total} exceeds the model's context length ({max_len})",
                prompt.len(),
                params.max_tokens
            )));
        }
        let capacity = self.limits.num_kv_blocks * self.limits.block_size;
        if total > capacity {
            return Err(EngineError::InvalidRequest(format!(
                "prompt + max_tokens = {total} tokens exceeds the KV cache ({capacity} tokens)"
            )));
        }
        Ok(())
    }

    /// Validates and queues a request for `prompt` token ids; its constraint, if any, is
    /// compiled here.
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestId> {
        self.add_request_guided(prompt, params, None)
    }

    /// The grammars constraints compile with, for front ends that compile off the engine's
    /// thread (a large schema then never delays a step) and pass the guide to
    /// [`Engine::add_request_guided`].
    pub fn grammars(&self) -> SharedGrammars {
        self.guided.grammars().clone()
    }

    /// [`Engine::add_request`] with the constraint's guide already compiled (from
    /// [`Engine::grammars`]); `None` compiles it here.
    pub fn add_request_guided(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        guide: Option<Guide>,
    ) -> Result<RequestId> {
        self.validate(&prompt, &params)?;
        let guide = match (&params.constraint, guide) {
            (Some(_), Some(guide)) => Some(guide),
            (Some(constraint), None) => Some(self.guided.compile(constraint)?),
            (None, Some(_)) => return Err(EngineError::InvalidRequest("a guide without a constraint".into())),
            (None, None) => None,
        };
        let id = self.next_id;
        self.next_id += 1;
        // An unseeded request still gets a seed of its own, so that its tokens do not change
        // when it is recomputed after a preemption.
        let mut sampling = params.sampler_settings(rand::rng().random());
        sampling.prompt_len = prompt.len();
        self.outputs.add(id, &prompt, params, Instant::now());
        self.scheduler.add_request(id, prompt, sampling);
        if let Some(guide) = guide {
            self.guided.insert(id, guide);
        }
        Ok(id)
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }

    /// KV blocks held by running requests.
    pub fn kv_blocks_used(&self) -> usize {
        self.scheduler.kv_blocks_used()
    }

    pub fn kv_blocks_total(&self) -> usize {
        self.scheduler.kv_blocks_total()
    }

    /// Fraction of the KV cache held by running requests, 0..=1 (cached blocks nobody holds
    /// count as free: they are taken when needed).
    pub fn kv_usage(&self) -> f64 {
        match self.kv_blocks_total() {
            0 => 0.0,
            total => self.kv_blocks_used() as f64 / total as f64,
        }
    }

    /// Requests preempted (and later recomputed) since the engine started.
    pub fn num_preemptions(&self) -> u64 {
        self.scheduler.num_preemptions()
    }

    /// Raised while the executor re-forms its group after losing a rank (see
    /// `Executor::recovering`).
    pub fn recovering_flag(&self) -> Option<Arc<AtomicBool>> {
        self.exec.recovering()
    }

    /// Recoveries from executor resets (a rank replaced) so far.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.scheduler.prefix_cache_stats()
    }

    /// The result of a finished request (once).
    pub fn take_output(&mut self, id: RequestId) -> Option<GenerationOutput> {
        self.finished.remove(&id)
    }

    /// Drops a request wherever it is, releasing its blocks (at once, or when its step in
    /// flight returns). False when it is unknown, finished or already aborted.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let found = self.scheduler.abort(id);
        if found {
            self.outputs.remove(id);
            self.guided.remove(id);
        }
        found
    }

    /// One scheduling step: fills the executor's pipeline with plans, then completes the oldest
    /// step. Returns one event per request that produced a token.
    pub fn step(&mut self) -> Result<Vec<StepEvent>> {
        while let Some(mut plan) = self.scheduler.schedule() {
            let now = Instant::now();
            for r in &plan.new_requests {
                self.outputs.scheduled(r.id, now, r.num_computed_tokens);
            }
            let masked = self.guided.mark(&mut plan, |s| self.scheduler.samples_after(s));
            if masked.is_empty() {
                self.exec.submit(plan, None)?;
            } else {
                self.submit_masked(plan, &masked)?;
            }
        }
        if !self.scheduler.has_in_flight() {
            return Ok(Vec::new());
        }
        let mut output = match self.exec.wait() {
            Ok(output) => output,
            Err(ExecutorError::Reset(reset)) => {
                let n = self.scheduler.reset();
                let r = &mut self.recovery;
                r.recoveries += 1;
                r.ranks_replaced += reset.ranks_replaced as u64;
                r.requests_recomputed += n as u64;
                r.last_seconds = reset.seconds;
                tracing::warn!("{}; recomputing {n} request(s) from their tokens", reset.what);
                return Ok(Vec::new());
            }
            Err(e) => {
                self.scheduler.step_failed();
                return Err(e.into());
            }
        };
        for scored in std::mem::take(&mut output.prompt_logprobs) {
            self.outputs.prompt_scored(scored);
        }
        let sampled = self.scheduler.update_from_output(output)?;
        let now = Instant::now();
        let mut events = Vec::with_capacity(sampled.len());
        for (id, token) in sampled {
            let complete = self.guided.advance(id, token.token_id);
            let event = self.outputs.process(id, token, now, complete)?;
            if event.finish.is_some() {
                self.guided.remove(id);
                self.scheduler.finish(id);
                let out = self.outputs.take(id).expect("a request finishes once");
                self.finished.insert(id, out);
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Submits `plan` while the masks of its `masked` requests are computed on a scoped thread
    /// and sent after it (vLLM v1 computes its grammar bitmask between `execute_model` and
    /// `sample_tokens` likewise): the executor runs the forward meanwhile and waits for the
    /// masks, bounded, only to sample.
    fn submit_masked(&mut self, plan: StepPlan, masked: &[RequestId]) -> Result<()> {
        let (tx, pending) = PendingMasks::channel();
        let (exec, guided) = (&mut self.exec, &mut self.guided);
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("structured-masks".into())
                .spawn_scoped(s, move || {
                    // An executor that failed before taking them has dropped the receiver.
                    let _ = tx.send(guided.masks(masked));
                })
                .map_err(|e| EngineError::Internal(format!("starting the structured-output mask thread: {e}")))?;
            Ok(exec.submit(plan, Some(pending))?)
        })
    }

    /// Runs the engine until every queued request finishes, calling `on_event` for each token;
    /// returns outputs in the order of `ids`.
    pub fn run_to_completion(
        &mut self,
        ids: &[RequestId],
        mut on_event: impl FnMut(&StepEvent),
    ) -> Result<Vec<GenerationOutput>> {
        while self.has_unfinished() {
            for e in self.step()? {
                on_event(&e);
            }
        }
        ids.iter()
            .map(|id| {
                self.take_output(*id).ok_or_else(|| EngineError::InvalidRequest(format!("unknown request id {id}")))
            })
            .collect()
    }

    /// Generates one completion of `prompt` token ids, streaming events to `on_event`.
    pub fn generate(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        on_event: impl FnMut(&StepEvent),
    ) -> Result<GenerationOutput> {
        let id = self.add_request(prompt, params)?;
        Ok(self.run_to_completion(&[id], on_event)?.remove(0))
    }
}
