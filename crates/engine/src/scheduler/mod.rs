//! The scheduler (vLLM v1's `Scheduler`): it owns the waiting and running queues and the KV
//! block pool, and turns them into step plans. It counts tokens and blocks only: no model, no
//! tokenizer, no text, so its tests run on fake requests.
//!
//! Continuous batching (Yu et al. 2022, "Orca"; paged KV, Kwon et al. 2023, "vLLM"): every step
//! gives each running decode one token and spends the rest of the token budget on prompt chunks
//! (chunked prefill), then admits waiting requests with what is left. KV blocks are allocated on
//! demand: a request holds only the blocks covering the tokens it has computed or is being fed,
//! so the cache is shared by need rather than by worst case. When a running request needs a
//! block and none is free, the most recently admitted request is preempted by recompute: its
//! blocks are released, its tokens kept, and it goes back to the front of the queue. Older
//! requests thus always make progress. A request is admitted when the policy allows, a slot is
//! free and blocks for its first chunk are (keeping a 1% watermark spare for running decodes).
//!
//! With prefix caching, admission first looks up the longest cached prefix of the request's
//! full blocks ([`block_pool`]) and starts computing after it; at least one token is always
//! computed, since the step must produce the logits of the last one. A request asking for
//! prompt logprobs skips the lookup: it needs the logits of every prompt position. Blocks are
//! named once the step computing them returns, so a block still being written is never shared.
//!
//! Several steps may be in flight (one microbatch per pipeline stage): each plan then takes its
//! share of the requests not already in one, and a request in flight is never scheduled again,
//! preempted or released until its step returns.

pub(crate) mod block_pool;
mod request;

use std::collections::{HashMap, HashSet, VecDeque};

use shardline_exec::{NewRequest, RequestId, ScheduledRequest, StepOutput, StepPlan};
use shardline_sampling::{SampledToken, SamplerSettings};

use crate::config::SchedulerPolicy;
use crate::error::{EngineError, Result};
use block_pool::BlockPool;
use request::Request;

/// What the scheduler is given to work with.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most tokens (decodes + prompt chunks) in one step.
    pub max_batch_tokens: usize,
    /// Most requests running at once.
    pub max_num_seqs: usize,
    pub policy: SchedulerPolicy,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Steps the executor keeps in flight (pipeline stages).
    pub max_in_flight: usize,
    pub enable_prefix_caching: bool,
}

/// Prefix-cache lookups so far, in tokens (vLLM's `prefix_cache_queries` / `_hits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of the requests admitted (each admission, resumptions included).
    pub queries: u64,
    /// Of those, tokens whose K/V came from the cache.
    pub hits: u64,
}

/// A step handed out and not yet returned: (request, tokens it computes), in batch order.
type InFlightStep = Vec<(RequestId, usize)>;

pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    /// Blocks admission leaves free for running requests to grow into (vLLM's 1% watermark),
    /// so a new request is not admitted only to be preempted a step later.
    watermark: usize,
    waiting: VecDeque<Request>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<Request>,
    in_flight: VecDeque<InFlightStep>,
    /// Requests the executor should forget with the next plan.
    forget: Vec<RequestId>,
    /// Static policy: the members of the batch being run; only they may (re)join `running`.
    static_batch: HashSet<RequestId>,
    num_preemptions: u64,
    prefix_stats: PrefixCacheStats,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Scheduler {
            pool: BlockPool::new(cfg.num_blocks, cfg.enable_prefix_caching),
            watermark: cfg.num_blocks / 100,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            in_flight: VecDeque::new(),
            forget: Vec::new(),
            static_batch: HashSet::new(),
            num_preemptions: 0,
            prefix_stats: PrefixCacheStats::default(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a request (already validated: it fits the cache on its own).
    pub fn add_request(&mut self, id: RequestId, prompt: Vec<u32>, sampling: SamplerSettings) {
        self.waiting.push_back(Request::new(id, prompt, sampling));
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// KV blocks held by running requests.
    pub fn kv_blocks_used(&self) -> usize {
        self.pool.num_total() - self.pool.num_free()
    }

    pub fn kv_blocks_total(&self) -> usize {
        self.pool.num_total()
    }

    /// Blocks whose content is named for reuse (held or free).
    pub fn kv_blocks_cached(&self) -> usize {
        self.pool.num_cached()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.prefix_stats
    }

    /// Most requests the policy lets run at once.
    fn seq_limit(&self) -> usize {
        match self.cfg.policy {
            SchedulerPolicy::Sequential => 1,
            SchedulerPolicy::Continuous | SchedulerPolicy::Static => self.cfg.max_num_seqs,
        }
    }

    /// Plans the next step over the requests not in flight, or `None` when the executor's
    /// pipeline is full or nothing can run.
    pub fn schedule(&mut self) -> Option<StepPlan> {
        let depth = self.cfg.max_in_flight.max(1);
        if self.in_flight.len() >= depth {
            return None;
        }
        // With several microbatches in flight, each takes its share of the requests.
        let cap = match depth {
            1 => usize::MAX,
            _ => (self.running.len() + self.waiting.len()).min(self.seq_limit()).div_ceil(depth).max(1),
        };
        let mut budget = self.cfg.max_batch_tokens;
        let (mut picks, cache_full) = self.schedule_running(&mut budget, cap);
        // Like vLLM: no admissions in a step that had to preempt, the cache is under pressure.
        if !cache_full {
            self.admit(&mut budget, &mut picks, cap);
        }
        if picks.is_empty() {
            return None;
        }
        picks.sort_unstable(); // admission order
        let mut plan = StepPlan { forget: std::mem::take(&mut self.forget), ..Default::default() };
        let mut members = Vec::with_capacity(picks.len());
        for (i, n) in picks {
            let r = &mut self.running[i];
            let mut entry = ScheduledRequest { id: r.id, num_tokens: n, ..Default::default() };
            match r.sent {
                None => plan.new_requests.push(NewRequest {
                    id: r.id,
                    token_ids: r.tokens.clone(),
                    num_computed_tokens: r.num_computed,
                    block_ids: r.blocks.clone(),
                    sampling: r.sampling.clone(),
                }),
                Some((tokens, blocks)) => {
                    entry.new_token_ids = r.tokens[tokens..].to_vec();
                    entry.new_block_ids = r.blocks[blocks..].to_vec();
                }
            }
            r.sent = Some((r.tokens.len(), r.blocks.len()));
            r.in_flight = true;
            members.push((r.id, n));
            plan.scheduled.push(entry);
        }
        self.in_flight.push_back(members);
        Some(plan)
    }

    /// Gives running requests not in flight their tokens for this step (at most `cap` of them),
    /// decodes first (they are latency-critical and cost one token each), then prompt chunks.
    /// Blocks are allocated as needed; when none are left the newest request not in flight is
    /// preempted (possibly the one asking, unless a newer one is in flight: then it waits).
    /// Returns (running index, tokens) picks and whether the cache ran out (a request was
    /// preempted or has to wait).
    fn schedule_running(&mut self, budget: &mut usize, cap: usize) -> (Vec<(usize, usize)>, bool) {
        let mut order: Vec<usize> = (0..self.running.len()).filter(|&i| !self.running[i].in_flight).collect();
        order.sort_by_key(|&i| !self.running[i].is_decode()); // stable: admission order within each kind
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut evicted = vec![false; self.running.len()];
        let mut waits = false;
        for i in order {
            if *budget == 0 || picks.len() >= cap {
                break;
            }
            if evicted[i] {
                continue;
            }
            let n = self.running[i].pending().min(*budget);
            let mut fits = true;
            while !self.grow(i, n) {
                let victim = (0..self.running.len()).rev().find(|&j| !evicted[j] && !self.running[j].in_flight);
                let victim = victim.expect("`i` itself is a candidate");
                if victim == i && self.running[i + 1..].iter().any(|r| r.in_flight) {
                    fits = false; // newer requests hold blocks in flight: wait for them
                    waits = true;
                    break;
                }
                evicted[victim] = true;
                self.preempt(victim);
                if let Some(k) = picks.iter().position(|&(j, _)| j == victim) {
                    *budget += picks.remove(k).1;
                }
                if victim == i {
                    fits = false;
                    break;
                }
            }
            if fits {
                picks.push((i, n));
                *budget -= n;
            }
        }
        let any = evicted.contains(&true);
        if any {
            let mut new_index = Vec::with_capacity(evicted.len());
            let mut preempted = Vec::new();
            for (r, gone) in std::mem::take(&mut self.running).into_iter().zip(&evicted) {
                new_index.push(self.running.len());
                if *gone {
                    preempted.push(r);
                } else {
                    self.running.push(r);
                }
            }
            for pick in &mut picks {
                pick.0 = new_index[pick.0];
            }
            // Back to the front of the queue, oldest first: they were admitted before anyone waiting.
            for r in preempted.into_iter().rev() {
                self.waiting.push_front(r);
            }
        }
        (picks, any || waits)
    }

    /// Allocates blocks so running request `i` can take `n` more tokens; false (nothing taken)
    /// when too few are free.
    fn grow(&mut self, i: usize, n: usize) -> bool {
        let r = &mut self.running[i];
        let short = r.blocks_short_for(n, self.cfg.block_size);
        if short == 0 {
            return true;
        }
        match self.pool.allocate(short) {
            Some(new) => {
                r.blocks.extend(new);
                true
            }
            None => false,
        }
    }

    /// Preemption by recompute: releases the request's blocks and makes the executor forget
    /// it; its tokens stay, so it is computed again (largely from the prefix cache, when on).
    fn preempt(&mut self, i: usize) {
        let r = &mut self.running[i];
        tracing::debug!(request_id = r.id, "KV cache full: preempted, will recompute");
        self.num_preemptions += 1;
        release(&mut self.pool, &mut self.forget, r);
    }

    /// Moves waiting requests (preempted ones first, then by arrival) into the batch while the
    /// policy allows, a slot is free and blocks for their first chunk can be had.
    fn admit(&mut self, budget: &mut usize, picks: &mut Vec<(usize, usize)>, cap: usize) {
        let bs = self.cfg.block_size;
        let limit = self.seq_limit();
        let is_static = self.cfg.policy == SchedulerPolicy::Static;
        if is_static && self.static_batch.is_empty() && self.running.is_empty() {
            self.static_batch = self.waiting.iter().take(limit).map(|r| r.id).collect();
        }
        while *budget > 0 && self.running.len() < limit && picks.len() < cap {
            let Some(r) = self.waiting.front_mut() else { break };
            if is_static && !self.static_batch.contains(&r.id) {
                break;
            }
            // A request scoring its prompt needs every prompt position's logits, so it
            // computes them all rather than reuse cached K/V (as vLLM does).
            let hits = if self.pool.caching() && r.sampling.prompt_logprobs.is_none() {
                r.name_full_blocks(bs);
                // Full blocks before the last token only: that token must be computed.
                let usable = (r.tokens.len() - 1) / bs;
                self.pool.lookup(&r.block_hashes[..usable.min(r.block_hashes.len())])
            } else {
                Vec::new()
            };
            let num_computed = hits.len() * bs;
            let n = (r.tokens.len() - num_computed).min(*budget);
            let short = (num_computed + n).div_ceil(bs) - hits.len();
            // With nothing running every block is free, and the watermark must not keep out a
            // request that fits only an empty cache.
            let spare = if self.running.is_empty() { 0 } else { self.watermark };
            // Cached blocks nobody holds are in the free count, and taking them removes them.
            if self.pool.num_free() < short + self.pool.num_free_among(&hits) + spare {
                break;
            }
            let mut r = self.waiting.pop_front().expect("front exists");
            self.pool.touch(&hits);
            r.blocks = hits;
            r.blocks.extend(self.pool.allocate(short).expect("free blocks were counted"));
            r.num_computed = num_computed;
            r.num_cached_tokens.get_or_insert(num_computed);
            self.prefix_stats.queries += r.tokens.len() as u64;
            self.prefix_stats.hits += num_computed as u64;
            self.running.push(r);
            picks.push((self.running.len() - 1, n));
            *budget -= n;
        }
    }

    /// Applies the oldest step's output: its requests' tokens are now computed (full blocks
    /// are named for reuse), sampled tokens are appended, and requests aborted in flight
    /// leave. Returns the sampled tokens of the requests still wanted, in batch order.
    pub fn update_from_output(&mut self, output: StepOutput) -> Result<Vec<(RequestId, SampledToken)>> {
        let members = self.in_flight.pop_front().ok_or_else(|| EngineError::Internal("no step in flight".into()))?;
        let mut sampled: HashMap<RequestId, SampledToken> =
            output.sampled.into_iter().map(|s| (s.id, s.token)).collect();
        let mut accepted = Vec::with_capacity(members.len());
        let bs = self.cfg.block_size;
        for (id, n) in members {
            let r = self.running.iter_mut().find(|r| r.id == id).expect("requests in flight stay running");
            r.in_flight = false;
            let full_before = r.num_computed / bs;
            r.num_computed += n;
            if self.pool.caching() {
                r.name_full_blocks(bs);
                for b in full_before..r.num_computed / bs {
                    self.pool.cache(r.blocks[b], r.block_hashes[b]);
                }
            }
            if r.num_computed < r.tokens.len() {
                continue; // a prompt chunk: nothing sampled yet
            }
            let token = sampled
                .remove(&id)
                .ok_or_else(|| EngineError::Internal(format!("the executor sampled no token for request {id}")))?;
            if !r.aborted {
                r.tokens.push(token.token_id);
                accepted.push((id, token));
            }
        }
        if let Some(id) = sampled.keys().next() {
            return Err(EngineError::Internal(format!("the executor sampled a token for request {id}, not due")));
        }
        self.drop_aborted();
        Ok(accepted)
    }

    /// Starts over after the executor lost its state (a rank was replaced and the group
    /// re-formed): the steps in flight are void, and the executor knows no request and holds
    /// no K/V. Every running request goes back to the front of the queue with its tokens, in
    /// admission order, to be recomputed from scratch (its draws depend on (seed, position)
    /// only, so it continues exactly as it would have). The prefix cache is emptied: the K/V it
    /// names is gone, at least on the replaced rank. Requests aborted meanwhile leave. Returns
    /// how many requests will be recomputed.
    pub fn reset(&mut self) -> usize {
        self.in_flight.clear();
        self.forget.clear();
        self.pool = BlockPool::new(self.cfg.num_blocks, self.cfg.enable_prefix_caching);
        let mut recomputed = 0;
        for mut r in std::mem::take(&mut self.running).into_iter().rev() {
            if r.aborted {
                self.static_batch.remove(&r.id);
                continue;
            }
            r.blocks.clear();
            r.num_computed = 0;
            r.sent = None;
            r.in_flight = false;
            self.waiting.push_front(r);
            recomputed += 1;
        }
        for r in &mut self.waiting {
            // Preempted earlier: already forgotten and blockless; nothing is computed anywhere now.
            r.num_computed = 0;
            r.sent = None;
        }
        recomputed
    }

    /// Forgets the oldest step after the executor failed it: its requests may be scheduled
    /// again (the engine is going down, but its books stay consistent).
    pub fn step_failed(&mut self) {
        for (id, _) in self.in_flight.pop_front().into_iter().flatten() {
            if let Some(r) = self.running.iter_mut().find(|r| r.id == id) {
                r.in_flight = false;
            }
        }
        self.drop_aborted();
    }

    fn drop_aborted(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].aborted && !self.running[i].in_flight {
                self.remove_running(i);
            } else {
                i += 1;
            }
        }
    }

    fn remove_running(&mut self, i: usize) {
        let mut r = self.running.remove(i);
        release(&mut self.pool, &mut self.forget, &mut r);
        self.static_batch.remove(&r.id);
    }

    /// A running request met a stop rule: its blocks go back to the pool (named ones stay
    /// reusable) and the executor forgets it.
    pub fn finish(&mut self, id: RequestId) {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            debug_assert!(!self.running[i].in_flight, "a request finishes when its step has returned");
            self.remove_running(i);
        }
    }

    /// Drops a request wherever it is. Blocks of a request in flight are released when its
    /// step returns (the step may still write them). False when the request is unknown or
    /// already aborted.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(i); // a waiting request holds no blocks
            self.static_batch.remove(&id);
            return true;
        }
        match self.running.iter().position(|r| r.id == id && !r.aborted) {
            Some(i) if self.running[i].in_flight => {
                self.running[i].aborted = true;
                true
            }
            Some(i) => {
                self.remove_running(i);
                true
            }
            None => false,
        }
    }

    /// Whether `s`, of the plan just scheduled, reaches the end of its request's known tokens,
    /// so that the step samples its next token.
    pub fn samples_after(&self, s: &ScheduledRequest) -> bool {
        self.running.iter().find(|r| r.id == s.id).is_some_and(|r| r.num_computed + s.num_tokens == r.tokens.len())
    }

    /// Prompt tokens `id` found cached when first admitted (`None` before that).
    pub fn num_cached_tokens(&self, id: RequestId) -> Option<usize> {
        self.running.iter().chain(&self.waiting).find(|r| r.id == id).and_then(|r| r.num_cached_tokens)
    }
}

/// Releases a request's blocks (keeping its tokens) and, if the executor knew it, queues it to
/// be forgotten.
fn release(pool: &mut BlockPool, forget: &mut Vec<RequestId>, r: &mut Request) {
    pool.release(&std::mem::take(&mut r.blocks));
    r.num_computed = 0;
    if r.sent.take().is_some() {
        forget.push(r.id);
    }
}

#[cfg(test)]
mod tests;
