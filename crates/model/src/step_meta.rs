//! A step's metadata as the GPU kernels read it, packed into one `u32` buffer so that it crosses
//! to the device in a single copy per step (not one per layer, not one per sequence): every
//! layer's RoPE/KV-write and attention launches read views of the same upload.

use std::ops::Range;

use crate::batch::BatchInput;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepMetadata {
    /// Every field below, back to back.
    pub words: Vec<u32>,
    /// Position of each row in its sequence [rows].
    pub positions: Range<usize>,
    /// KV-cache slot each row writes [rows].
    pub slots: Range<usize>,
    /// Sequence each row belongs to [rows].
    pub row_seq: Range<usize>,
    /// Block tables, one row of `max_blocks` per sequence (padded with 0) [seqs · max_blocks].
    pub block_tables: Range<usize>,
    /// Rows whose logits are wanted [logit rows].
    pub logit_rows: Range<usize>,
    pub num_rows: usize,
    pub num_seqs: usize,
    pub max_blocks: usize,
    /// Longest context a row attends over (its position + 1), for planning split-K.
    pub max_context: usize,
}

impl StepMetadata {
    /// Blocks covering a row's context never exceed the table the batch carries, so padding a
    /// table with block 0 is never read.
    pub fn new(batch: &BatchInput) -> Self {
        let rows = batch.num_rows();
        let max_blocks = batch.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
        let mut words = Vec::with_capacity(3 * rows + batch.seqs.len() * max_blocks + batch.logit_rows.len());
        let take = |words: &mut Vec<u32>, values: &mut dyn Iterator<Item = u32>| {
            let start = words.len();
            words.extend(values);
            start..words.len()
        };
        let positions = take(&mut words, &mut batch.positions.iter().copied());
        let slots = take(&mut words, &mut batch.slots.iter().copied());
        let mut row_seq =
            batch.seqs.iter().enumerate().flat_map(|(i, s)| std::iter::repeat_n(i as u32, s.tokens.len()));
        let row_seq = take(&mut words, &mut row_seq);
        let mut tables = batch.seqs.iter().flat_map(|s| {
            s.block_table.iter().copied().chain(std::iter::repeat_n(0, max_blocks - s.block_table.len()))
        });
        let block_tables = take(&mut words, &mut tables);
        let logit_rows = take(&mut words, &mut batch.logit_rows.iter().map(|&r| r as u32));
        let max_context = batch.positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
        StepMetadata {
            words,
            positions,
            slots,
            row_seq,
            block_tables,
            logit_rows,
            num_rows: rows,
            num_seqs: batch.seqs.len(),
            max_blocks,
            max_context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SeqInput;

    #[test]
    fn one_buffer_holds_every_field_of_a_mixed_step() {
        // A 3-token prompt chunk after 4 cached tokens, and a decode at position 9.
        let seqs = vec![
            SeqInput { tokens: vec![7, 8, 9], cached_len: 4, block_table: vec![5, 6], wants_logits: false },
            SeqInput { tokens: vec![1], cached_len: 9, block_table: vec![2, 3, 0], wants_logits: true },
        ];
        let batch = BatchInput::new(seqs, 4, 8).unwrap();
        let m = StepMetadata::new(&batch);
        let field = |r: &Range<usize>| m.words[r.clone()].to_vec();
        assert_eq!(field(&m.positions), [4, 5, 6, 9]);
        assert_eq!(field(&m.slots), [24, 25, 26, 1], "positions 4..7 in block 6, 9 in block 0");
        assert_eq!(field(&m.row_seq), [0, 0, 0, 1]);
        assert_eq!(field(&m.block_tables), [5, 6, 0, 2, 3, 0], "tables padded to 3 blocks");
        assert_eq!(field(&m.logit_rows), [3]);
        assert_eq!((m.num_rows, m.num_seqs, m.max_blocks, m.max_context), (4, 2, 3, 10));
        assert_eq!(m.words.len(), 4 * 3 + 6 + 1);
    }
}
