//! The engine core loop (continuous batching, Yu et al. 2022 "Orca"): every step admits waiting
//! requests whose KV blocks fit, gives each running decode one token and spends the rest of the
//! token budget on prompt chunks (chunked prefill), runs one ragged forward pass and samples.
//!
//! Admission reserves blocks for prompt + max_tokens up front, so a running request never has to
//! be preempted for memory; requests that do not fit wait in arrival order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use shardline_model::SeqInput;
use shardline_sampling::SamplingParams;
use shardline_tokenizer::Tokenizer;

use crate::blocks::BlockAllocator;
use crate::error::{EngineError, Result};
use crate::executor::{Executor, ScheduledSeq, StepPlan};
use crate::output::GenerationOutput;
use crate::sequence::{Prompt, Sequence};

pub use crate::sequence::StepEvent;

pub type RequestId = u64;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most tokens (decodes + prompt chunks) in one forward pass.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_batch_tokens: 2048, max_num_seqs: 64 }
    }
}

pub struct Engine {
    exec: Box<dyn Executor>,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    cfg: EngineConfig,
    blocks: BlockAllocator,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    finished: HashMap<RequestId, GenerationOutput>,
    /// Running sequences that ended since the last step (the executor may forget them).
    retired: Vec<RequestId>,
    next_id: RequestId,
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
            exec,
            tokenizer: Arc::new(tokenizer),
            eos_token_ids,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            finished: HashMap::new(),
            retired: Vec::new(),
            next_id: 0,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
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
            return Err(EngineError::InvalidRequest(format!("prompt token id {bad} is outside the vocabulary ({vocab})")));
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

    /// The result of a finished request (once).
    pub fn take_output(&mut self, id: RequestId) -> Option<GenerationOutput> {
        self.finished.remove(&id)
    }

    /// Drops a request wherever it is, releasing its blocks.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(i);
            self.blocks.release(seq.blocks);
            self.retired.push(id);
            return true;
        }
        false
    }

    fn admit(&mut self) {
        let bs = self.exec.block_size();
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(seq) = self.waiting.front() else { break };
            let need = (seq.prompt_len + seq.params.max_tokens).div_ceil(bs);
            let Some(blocks) = self.blocks.allocate(need) else { break };
            let mut seq = self.waiting.pop_front().expect("front exists");
            seq.blocks = blocks;
            self.running.push(seq);
        }
    }

    /// One scheduling step: admit, run one forward pass, sample. Returns one event per sequence
    /// that produced a token.
    pub fn step(&mut self) -> Result<Vec<StepEvent>> {
        self.admit();
        let mut budget = self.cfg.max_batch_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens fed)
        // Decodes first: they are latency-critical and cost one token each.
        for pass_decodes in [true, false] {
            for (i, s) in self.running.iter().enumerate() {
                let is_decode = s.cached_len >= s.prompt_len;
                if is_decode != pass_decodes || budget == 0 {
                    continue;
                }
                let n = s.pending().min(budget);
                budget -= n;
                plan.push((i, n));
            }
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        plan.sort_unstable();
        let seqs = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let input = SeqInput {
                    tokens: s.tokens[s.cached_len..s.cached_len + n].to_vec(),
                    cached_len: s.cached_len,
                    block_table: s.blocks.clone(),
                    wants_logits: s.cached_len + n == s.tokens.len(),
                };
                ScheduledSeq { seq_id: s.id, input }
            })
            .collect();
        let finished = std::mem::take(&mut self.retired);
        let logits = self.exec.execute(StepPlan { seqs, finished })?;
        let mut logits = logits.into_iter();
        let mut events = Vec::new();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            s.cached_len += n;
            if s.cached_len == s.tokens.len() {
                let row = logits.next().expect("one logits row per sequence that asked");
                events.push(s.accept(&row, &self.eos_token_ids)?);
            }
        }
        self.retire_finished();
        Ok(events)
    }

    fn retire_finished(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].finish.is_some() {
                let seq = self.running.remove(i);
                self.finished.insert(seq.id, seq.output());
                self.blocks.release(seq.blocks);
                self.retired.push(seq.id);
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
                self.take_output(*id)
                    .ok_or_else(|| EngineError::InvalidRequest(format!("unknown request id {id}")))
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
