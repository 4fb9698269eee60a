//! The engine core loop (continuous batching, Yu et al. 2022 "Orca"; paged KV, Kwon et al. 2023
//! "vLLM"): every step gives each running decode one token and spends the rest of the token
//! budget on prompt chunks (chunked prefill), then admits waiting requests with what is left,
//! runs one ragged forward pass and samples.
//!
//! KV blocks are allocated on demand: a sequence holds only the blocks covering the tokens it has
//! in the cache or is being fed this step, so the cache is shared by need rather than by worst
//! case. When a running sequence needs a block and none is free, the most recently admitted
//! sequence is preempted by recompute: its blocks are freed, its tokens (prompt and generated)
//! kept, and it goes back to the front of the queue to be prefilled again when blocks allow.
//! Older sequences thus always make progress. A request is admitted when the policy allows, a
//! sequence slot is free and blocks for its first chunk are (keeping a 1% watermark spare for
//! running decodes); one that could not fit even an empty cache is rejected by `add_request`.
//!
//! An executor may keep several steps in flight ([`Executor::max_in_flight`], one per pipeline
//! stage with pipeline parallelism, like vLLM's virtual engines): each `step` then fills the
//! pipeline with microbatches planned from the sequences not already in one (running sequences
//! split evenly between them, so every stage has work) and completes the oldest. A sequence in
//! flight is never scheduled again, preempted or freed until its microbatch returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use shardline_model::SeqInput;
use shardline_sampling::SamplingParams;
use shardline_tokenizer::Tokenizer;

use crate::blocks::BlockAllocator;
use crate::config::{EngineConfig, SchedulerPolicy};
use crate::error::{EngineError, Result};
use crate::executor::{Executor, ScheduledSeq, StepPlan};
use crate::output::GenerationOutput;
use crate::sequence::{Prompt, Sequence};

pub use crate::sequence::StepEvent;

pub type RequestId = u64;

pub struct Engine {
    exec: Box<dyn Executor>,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    cfg: EngineConfig,
    blocks: BlockAllocator,
    /// Blocks admission leaves free for running sequences to grow into (vLLM's 1% watermark),
    /// so a new request does not get admitted only to be preempted a step later.
    watermark: usize,
    waiting: VecDeque<Sequence>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<Sequence>,
    finished: HashMap<RequestId, GenerationOutput>,
    /// Executor ids to retire with the next step (see [`StepPlan::finished`]).
    retired: Vec<u64>,
    /// Submitted steps, oldest first.
    in_flight: VecDeque<Microbatch>,
    /// Static policy: the members of the batch being run; only they may (re)join `running`.
    static_batch: HashSet<RequestId>,
    next_id: RequestId,
    next_exec_id: u64,
    num_preemptions: u64,
}

impl Engine {
    /// `extra_eos` (e.g. the model config's `eos_token_id`) joins the tokenizer's EOS ids.
    pub fn new(exec: Box<dyn Executor>, tokenizer: Tokenizer, extra_eos: &[u32], cfg: EngineConfig) -> Result<Self> {
        if cfg.max_batch_tokens == 0 || cfg.max_num_seqs == 0 {
            return Err(EngineError::Load("max_batch_tokens and max_num_seqs must be positive".into()));
        }
        let mut eos_token_ids = tokenizer.eos_token_ids().to_vec();
        for id in extra_eos {
            if !eos_token_ids.contains(id) {
                eos_token_ids.push(*id);
            }
        }
        Ok(Engine {
            blocks: BlockAllocator::new(exec.num_blocks()),
            watermark: exec.num_blocks() / 100,
            exec,
            tokenizer: Arc::new(tokenizer),
            eos_token_ids,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            finished: HashMap::new(),
            retired: Vec::new(),
            in_flight: VecDeque::new(),
            static_batch: HashSet::new(),
            next_id: 0,
            next_exec_id: 0,
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, for front ends that format text outside the engine (e.g. in another thread).
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Prompt token ids as the engine would feed them.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true)?,
            Prompt::Chat(messages) => {
                let rendered = self.tokenizer.apply_chat_template(messages, true)?;
                self.tokenizer.encode(&rendered, false)?
            }
            Prompt::Tokens(ids) => ids.clone(),
        };
        let vocab = self.exec.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        if ids.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Validates and queues a request.
    pub fn add_request(&mut self, prompt: &Prompt, params: SamplingParams) -> Result<RequestId> {
        params.validate(self.exec.vocab_size())?;
        let ids = self.encode_prompt(prompt)?;
        let total = ids.len() + params.max_tokens;
        let max_len = self.exec.max_model_len();
        if total > max_len {
            return Err(EngineError::InvalidRequest(format!(
                "prompt ({} tokens) + max_tokens ({}) = {total} exceeds the model's context length ({max_len})",
                ids.len(),
                params.max_tokens
            )));
        }
        let capacity = self.blocks.num_total() * self.exec.block_size();
        if total > capacity {
            return Err(EngineError::InvalidRequest(format!(
                "prompt + max_tokens = {total} tokens exceeds the KV cache ({capacity} tokens)"
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let tokenizer = Arc::clone(&self.tokenizer);
        self.waiting.push_back(Sequence::new(id, ids, params, tokenizer, Vec::new(), Instant::now()));
        Ok(id)
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Prompt tokens of a queued, running or finished (not yet taken) request.
    pub fn prompt_len(&self, id: RequestId) -> Option<usize> {
        let queued = self.waiting.iter().chain(&self.running).find(|s| s.id == id).map(|s| s.prompt_len);
        queued.or_else(|| self.finished.get(&id).map(|out| out.prompt_token_ids.len()))
    }

    /// KV blocks held by running sequences.
    pub fn kv_blocks_used(&self) -> usize {
        self.blocks.num_total() - self.blocks.num_free()
    }

    pub fn kv_blocks_total(&self) -> usize {
        self.blocks.num_total()
    }

    /// Fraction of the KV cache in use, 0..=1.
    pub fn kv_usage(&self) -> f64 {
        match self.blocks.num_total() {
            0 => 0.0,
            total => self.kv_blocks_used() as f64 / total as f64,
        }
    }

    /// Sequences preempted (and later recomputed) since the engine started.
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// The result of a finished request (once).
    pub fn take_output(&mut self, id: RequestId) -> Option<GenerationOutput> {
        self.finished.remove(&id)
    }

    /// Drops a request wherever it is, releasing its blocks.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.static_batch.remove(&id);
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i); // a waiting sequence holds no blocks
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.id == id && !s.aborted) {
            if self.running[i].in_flight {
                // Its step may still write its blocks: dropped when that step returns.
                self.running[i].aborted = true;
                return true;
            }
            let mut seq = self.running.remove(i);
            drop_kv(&mut self.blocks, &mut self.retired, &mut seq);
            return true;
        }
        false
    }

    /// Most sequences the policy lets run at once.
    fn seq_limit(&self) -> usize {
        match self.cfg.policy {
            SchedulerPolicy::Sequential => 1,
            SchedulerPolicy::Continuous | SchedulerPolicy::Static => self.cfg.max_num_seqs,
        }
    }

    /// Gives running sequences not in flight their tokens for this step (at most `cap` of them),
    /// decodes first (they are latency-critical and cost one token each), then prompt chunks.
    /// Blocks are allocated as needed; when none are left the newest sequence not in flight is
    /// preempted (possibly the one asking, unless a newer one is in flight: then it waits).
    /// Returns (running index, tokens fed) pairs and whether the cache ran out (a sequence was
    /// preempted or has to wait).
    fn schedule_running(&mut self, budget: &mut usize, cap: usize) -> (Vec<(usize, usize)>, bool) {
        let bs = self.exec.block_size();
        let mut order: Vec<usize> = (0..self.running.len()).filter(|&i| !self.running[i].in_flight).collect();
        order.sort_by_key(|&i| !self.running[i].is_decode()); // stable: admission order within each kind
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut evicted = vec![false; self.running.len()];
        let mut waits = false;
        for i in order {
            if *budget == 0 || plan.len() >= cap {
                break;
            }
            if evicted[i] {
                continue;
            }
            let n = self.running[i].pending().min(*budget);
            let mut fits = true;
            while !grow(&mut self.blocks, &mut self.running[i], n, bs) {
                let victim = (0..self.running.len()).rev().find(|&j| !evicted[j] && !self.running[j].in_flight);
                let victim = victim.expect("`i` itself is a candidate");
                if victim == i && self.running[i + 1..].iter().any(|s| s.in_flight) {
                    fits = false; // newer sequences hold blocks in flight: wait for them
                    waits = true;
                    break;
                }
                evicted[victim] = true;
                drop_kv(&mut self.blocks, &mut self.retired, &mut self.running[victim]);
                self.num_preemptions += 1;
                tracing::debug!(request_id = self.running[victim].id, "KV cache full: preempted, will recompute");
                if let Some(k) = plan.iter().position(|&(j, _)| j == victim) {
                    *budget += plan.remove(k).1;
                }
                if victim == i {
                    fits = false;
                    break;
                }
            }
            if fits {
                plan.push((i, n));
                *budget -= n;
            }
        }
        let any = evicted.contains(&true);
        if any {
            let mut new_index = Vec::with_capacity(evicted.len());
            let mut preempted = Vec::new();
            for (seq, gone) in std::mem::take(&mut self.running).into_iter().zip(&evicted) {
                new_index.push(self.running.len());
                if *gone {
                    preempted.push(seq);
                } else {
                    self.running.push(seq);
                }
            }
            for entry in &mut plan {
                entry.0 = new_index[entry.0];
            }
            // Back to the front of the queue, oldest first: they were admitted before anyone waiting.
            for seq in preempted.into_iter().rev() {
                self.waiting.push_front(seq);
            }
        }
        (plan, any || waits)
    }

    /// Moves waiting requests (preempted ones first, then by arrival) into the batch while the
    /// policy allows, a slot is free and blocks for their first chunk can be had.
    fn admit(&mut self, budget: &mut usize, plan: &mut Vec<(usize, usize)>, cap: usize) {
        let bs = self.exec.block_size();
        let limit = self.seq_limit();
        let is_static = self.cfg.policy == SchedulerPolicy::Static;
        if is_static && self.static_batch.is_empty() && self.running.is_empty() {
            self.static_batch = self.waiting.iter().take(limit).map(|s| s.id).collect();
        }
        while *budget > 0 && self.running.len() < limit && plan.len() < cap {
            let Some(seq) = self.waiting.front() else { break };
            if is_static && !self.static_batch.contains(&seq.id) {
                break;
            }
            let n = seq.pending().min(*budget);
            // With nothing running every block is free, and the watermark must not keep out a
            // request that fits only an empty cache.
            let spare = if self.running.is_empty() { 0 } else { self.watermark };
            if self.blocks.num_free() < (seq.cached_len + n).div_ceil(bs) + spare {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            let grown = grow(&mut self.blocks, &mut seq, n, bs);
            debug_assert!(grown, "free blocks were checked");
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            *budget -= n;
        }
    }

    /// One scheduling step: fills the executor's pipeline with microbatches (schedule the
    /// running sequences not in flight, admit, submit), then completes the oldest: advances its
    /// sequences' caches and samples. Returns one event per sequence that produced a token.
    pub fn step(&mut self) -> Result<Vec<StepEvent>> {
        while self.in_flight.len() < self.exec.max_in_flight().max(1) && self.launch()? {}
        match self.in_flight.pop_front() {
            Some(microbatch) => self.complete(microbatch),
            None => Ok(Vec::new()),
        }
    }

    /// Plans a microbatch over the sequences not in flight and submits it; false when there was
    /// nothing to run.
    fn launch(&mut self) -> Result<bool> {
        let depth = self.exec.max_in_flight();
        // With several microbatches in flight, each takes its share of the sequences.
        let cap = match depth {
            0 | 1 => usize::MAX,
            _ => (self.running.len() + self.waiting.len()).min(self.seq_limit()).div_ceil(depth).max(1),
        };
        let mut budget = self.cfg.max_batch_tokens;
        let (mut plan, cache_full) = self.schedule_running(&mut budget, cap);
        // Like vLLM: no admissions in a step that had to preempt, the cache is under pressure.
        if !cache_full {
            self.admit(&mut budget, &mut plan, cap);
        }
        if plan.is_empty() {
            return Ok(false);
        }
        plan.sort_unstable();
        let now = Instant::now();
        let mut seqs = Vec::with_capacity(plan.len());
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            s.mark_scheduled(now);
            let seq_id = match s.registered {
                Some((id, len)) if len == s.blocks.len() => id,
                old => {
                    // The executor may have learned the old table once and for all: register the
                    // grown table under a fresh id and retire the old one.
                    self.retired.extend(old.map(|(id, _)| id));
                    let id = self.next_exec_id;
                    self.next_exec_id += 1;
                    s.registered = Some((id, s.blocks.len()));
                    id
                }
            };
            let input = SeqInput {
                tokens: s.tokens[s.cached_len..s.cached_len + n].to_vec(),
                cached_len: s.cached_len,
                block_table: s.blocks.clone(),
                wants_logits: s.cached_len + n == s.tokens.len(),
            };
            seqs.push(ScheduledSeq { seq_id, input });
        }
        let step = StepPlan { seqs, finished: std::mem::take(&mut self.retired) };
        let logits = if depth > 1 {
            self.exec.submit(step)?;
            None
        } else {
            Some(self.exec.execute(step)?)
        };
        let mut members = Vec::with_capacity(plan.len());
        for &(i, n) in &plan {
            self.running[i].in_flight = true;
            members.push((self.running[i].id, n));
        }
        self.in_flight.push_back(Microbatch { seqs: members, logits });
        Ok(true)
    }

    /// Applies a returned microbatch: its sequences' tokens are now cached, those that asked for
    /// logits sample, and finished or aborted sequences leave.
    fn complete(&mut self, microbatch: Microbatch) -> Result<Vec<StepEvent>> {
        let result = match microbatch.logits {
            Some(logits) => Ok(logits),
            None => self.exec.wait(),
        };
        let mut members = Vec::with_capacity(microbatch.seqs.len());
        for &(id, n) in &microbatch.seqs {
            let i = self.running.iter().position(|s| s.id == id).expect("sequences in flight stay running");
            self.running[i].in_flight = false;
            members.push((i, n));
        }
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                self.retire_finished(); // drops the aborted; the rest will be scheduled again
                return Err(e);
            }
        };
        // Rows to sample, by position in `running`, tagged with the member order events keep.
        let mut logits = logits.into_iter();
        let mut rows: Vec<Option<(usize, Vec<f32>)>> = vec![None; self.running.len()];
        for (order, (i, n)) in members.into_iter().enumerate() {
            let s = &mut self.running[i];
            s.cached_len += n;
            if s.cached_len == s.tokens.len() {
                let row = logits.next().expect("one logits row per sequence that asked");
                if !s.aborted {
                    rows[i] = Some((order, row));
                }
            }
        }
        // Sampling (a log-sum-exp over the vocabulary for every token's logprob) and
        // detokenizing are independent per sequence: at batch 32 they were 6% of a step on
        // one thread.
        let eos = &self.eos_token_ids;
        let mut events: Vec<(usize, Result<StepEvent>)> = self
            .running
            .par_iter_mut()
            .zip(rows.par_iter())
            .filter_map(|(s, row)| row.as_ref().map(|(order, row)| (*order, s.accept(row, eos))))
            .collect();
        events.sort_by_key(|(order, _)| *order);
        let events = events.into_iter().map(|(_, e)| e).collect::<Result<Vec<_>>>();
        self.retire_finished();
        events
    }

    fn retire_finished(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if !s.in_flight && (s.finish.is_some() || s.aborted) {
                let mut seq = self.running.remove(i);
                drop_kv(&mut self.blocks, &mut self.retired, &mut seq);
                self.static_batch.remove(&seq.id);
                if !seq.aborted {
                    self.finished.insert(seq.id, seq.output());
                }
            } else {
                i += 1;
            }
        }
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

    /// Generates one completion, streaming events to `on_event`.
    pub fn generate(
        &mut self,
        prompt: &Prompt,
        params: SamplingParams,
        on_event: impl FnMut(&StepEvent),
    ) -> Result<GenerationOutput> {
        let id = self.add_request(prompt, params)?;
        Ok(self.run_to_completion(&[id], on_event)?.remove(0))
    }
}

/// A step submitted to the executor: its sequences (request id, tokens fed) and, from an executor
/// running one step at a time, its logits already.
struct Microbatch {
    seqs: Vec<(RequestId, usize)>,
    logits: Option<Vec<Vec<f32>>>,
}

/// Allocates blocks so `seq` can take `n` more tokens into the cache; false (nothing taken) when
/// too few are free.
fn grow(blocks: &mut BlockAllocator, seq: &mut Sequence, n: usize, block_size: usize) -> bool {
    let need = (seq.cached_len + n).div_ceil(block_size).saturating_sub(seq.blocks.len());
    if need == 0 {
        return true;
    }
    match blocks.allocate(need) {
        Some(new) => {
            seq.blocks.extend(new);
            true
        }
        None => false,
    }
}

/// Frees `seq`'s blocks and tells the executor to forget its table; its tokens stay, so it can
/// be recomputed.
fn drop_kv(blocks: &mut BlockAllocator, retired: &mut Vec<u64>, seq: &mut Sequence) {
    blocks.release(seq.evict());
    retired.extend(seq.registered.take().map(|(id, _)| id));
}
