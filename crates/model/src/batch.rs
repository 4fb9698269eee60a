//! One forward step's input: a ragged batch of sequences, each contributing its new tokens
//! (a whole prompt chunk during prefill, one token during decode), flattened into rows.

use crate::error::{ModelError, Result};

/// One sequence's share of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqInput {
    /// The new tokens this step feeds for the sequence.
    pub tokens: Vec<u32>,
    /// Tokens of this sequence already in the KV cache (the first new token's position).
    pub cached_len: usize,
    /// Physical KV blocks holding positions 0.. of the sequence, in order; must cover
    /// `cached_len + tokens.len()` positions.
    pub block_table: Vec<u32>,
    /// Whether the caller wants logits for this sequence's last new token.
    pub wants_logits: bool,
}

/// A validated, flattened batch.
#[derive(Clone, Debug)]
pub struct BatchInput {
    pub seqs: Vec<SeqInput>,
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// KV slot (block * block_size + offset) of every row.
    pub slots: Vec<u32>,
    /// First row of each sequence.
    pub row_starts: Vec<usize>,
    /// Rows whose logits are returned, in order.
    pub logit_rows: Vec<usize>,
}

impl BatchInput {
    /// Flattens `seqs`, checking each has tokens and enough blocks (`num_blocks` in the cache).
    pub fn new(seqs: Vec<SeqInput>, block_size: usize, num_blocks: usize) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::Batch("a batch needs at least one sequence".into()));
        }
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let mut b = BatchInput {
            tokens: Vec::with_capacity(total),
            positions: Vec::with_capacity(total),
            slots: Vec::with_capacity(total),
            row_starts: Vec::with_capacity(seqs.len()),
            logit_rows: Vec::new(),
            seqs: Vec::new(),
        };
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Batch(format!("sequence {i} has no new tokens")));
            }
            let end = s.cached_len + s.tokens.len();
            if s.block_table.len() * block_size < end {
                return Err(ModelError::Batch(format!(
                    "sequence {i} needs {end} KV positions but its {} blocks hold {}",
                    s.block_table.len(),
                    s.block_table.len() * block_size
                )));
            }
            if let Some(&bad) = s.block_table.iter().find(|&&blk| blk as usize >= num_blocks) {
                return Err(ModelError::Batch(format!(
                    "sequence {i} uses KV block {bad} but the cache has {num_blocks}"
                )));
            }
            b.row_starts.push(b.tokens.len());
            for (j, &t) in s.tokens.iter().enumerate() {
                let pos = s.cached_len + j;
                b.tokens.push(t);
                b.positions.push(pos as u32);
                b.slots.push(s.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
            }
            if s.wants_logits {
                b.logit_rows.push(b.tokens.len() - 1);
            }
        }
        b.seqs = seqs;
        Ok(b)
    }

    pub fn num_rows(&self) -> usize {
        self.tokens.len()
    }
}
