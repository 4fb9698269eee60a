//! A request as the scheduler sees it: token counts, KV blocks and what the executor knows of
//! it. No text, no stop rules: those are the output processor's.

use shardline_exec::RequestId;
use shardline_sampling::SamplerSettings;

use crate::scheduler::block_pool::{hash_block, BlockHash};

#[derive(Debug)]
pub struct Request {
    pub id: RequestId,
    /// The prompt, then every generated token.
    pub tokens: Vec<u32>,
    /// Leading `tokens` whose K/V are in the cache (or are being computed by a step in flight,
    /// once that step returns).
    pub num_computed: usize,
    /// KV blocks covering the computed tokens and those scheduled in flight.
    pub blocks: Vec<u32>,
    /// Names of the full blocks of `tokens` (see [`hash_block`]), extended as tokens arrive.
    pub block_hashes: Vec<BlockHash>,
    pub sampling: SamplerSettings,
    /// What the executor knows: (tokens, blocks) it was sent; `None` while it knows nothing
    /// (never scheduled, or forgotten after a preemption).
    pub sent: Option<(usize, usize)>,
    /// Part of a step not yet returned: not to be scheduled, preempted or freed until it is.
    pub in_flight: bool,
    /// Aborted while in flight: dropped when its step returns.
    pub aborted: bool,
    /// Prompt tokens found in the prefix cache when the request was first admitted.
    pub num_cached_tokens: Option<usize>,
}

impl Request {
    pub fn new(id: RequestId, prompt: Vec<u32>, sampling: SamplerSettings) -> Self {
        Request {
            id,
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            sampling,
            sent: None,
            in_flight: false,
            aborted: false,
            num_cached_tokens: None,
        }
    }

    /// Tokens not yet computed: the rest of the prompt, or the last sampled token.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Whether only the last sampled token is missing from the cache.
    pub fn is_decode(&self) -> bool {
        self.pending() == 1
    }

    /// Names every full block of the known tokens.
    pub fn name_full_blocks(&mut self, block_size: usize) {
        while (self.block_hashes.len() + 1) * block_size <= self.tokens.len() {
            let start = self.block_hashes.len() * block_size;
            let parent = self.block_hashes.last().copied();
            self.block_hashes.push(hash_block(parent, &self.tokens[start..start + block_size]));
        }
    }

    /// Blocks needed to hold `n` more tokens on top of the computed ones, beyond those held.
    pub fn blocks_short_for(&self, n: usize, block_size: usize) -> usize {
        (self.num_computed + n).div_ceil(block_size).saturating_sub(self.blocks.len())
    }
}
