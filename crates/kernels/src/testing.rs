//! Test support shared by the CPU tests (tests/reference.rs) and the GPU tests (tests/gpu.rs):
//! deterministic random data and random paged-attention batches, so both check the same cases.

use crate::shape::AttentionShape;

/// xorshift64*: deterministic random numbers without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// `n` values uniform in [-amp, amp).
    pub fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * amp).collect()
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Asserts |got − want| ≤ atol + rtol · |want| everywhere, naming the first element that is not.
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g == w);
        assert!(ok, "{what}[{i}]: got {g}, want {w} (rtol {rtol}, atol {atol})");
    }
}

/// Logits with what top-k must get right: ties (values on a 1/8 grid), NaNs and −infs.
pub fn logits(rng: &mut Rng, rows: usize, vocab: usize) -> Vec<f32> {
    (0..rows * vocab)
        .map(|_| match rng.below(100) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            _ => (rng.f32() * 80.0).round() / 8.0,
        })
        .collect()
}

/// One sequence of a batch: `context_len` keys, of which the last `q_len` positions are query
/// rows (q_len 1: a decode; q_len = context_len: a whole prefill; between: a prefill chunk
/// after a cached prefix).
#[derive(Clone, Copy, Debug)]
pub struct SeqSpec {
    pub context_len: usize,
    pub q_len: usize,
}

/// A random paged-attention batch in f32 (tests convert it to the dtype under test). Rows come
/// grouped by sequence, in order, until [`AttentionCase::shuffle_rows`]. Blocks are scattered
/// over a pool with spare blocks, and block-table entries past a sequence's last block hold
/// u32::MAX, so a kernel that reads past the visible keys fails loudly.
pub struct AttentionCase {
    pub shape: AttentionShape,
    pub seqs: Vec<SeqSpec>,
    /// `[rows, q_heads, head_dim]`.
    pub q: Vec<f32>,
    pub k_cache: Vec<f32>,
    pub v_cache: Vec<f32>,
    pub block_tables: Vec<u32>,
    pub row_seq: Vec<u32>,
    pub positions: Vec<u32>,
    pub kv_head_of_q: Vec<u32>,
}

impl AttentionCase {
    /// q values are uniform in ±`q_amp` (larger: peakier softmaxes), K and V in ±1. One split.
    pub fn new(
        rng: &mut Rng,
        kv_head_of_q: &[u32],
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        seqs: &[SeqSpec],
        q_amp: f32,
    ) -> Self {
        let blocks: Vec<usize> = seqs.iter().map(|s| s.context_len.div_ceil(block_size)).collect();
        let max_blocks = blocks.iter().max().copied().unwrap_or(0) + 1;
        let mut pool: Vec<u32> = (0..blocks.iter().sum::<usize>() as u32 + 3).collect();
        rng.shuffle(&mut pool);
        let mut block_tables = vec![u32::MAX; seqs.len() * max_blocks];
        let mut next = pool.iter();
        for (s, &n) in blocks.iter().enumerate() {
            for b in &mut block_tables[s * max_blocks..][..n] {
                *b = *next.next().expect("the pool holds every block");
            }
        }
        let (mut row_seq, mut positions) = (Vec::new(), Vec::new());
        for (s, spec) in seqs.iter().enumerate() {
            assert!(1 <= spec.q_len && spec.q_len <= spec.context_len, "{spec:?}");
            for p in spec.context_len - spec.q_len..spec.context_len {
                row_seq.push(s as u32);
                positions.push(p as u32);
            }
        }
        let (qh, cache) = (kv_head_of_q.len(), pool.len() * block_size * num_kv_heads * head_dim);
        let shape = AttentionShape {
            num_q_heads: qh,
            num_kv_heads,
            head_dim,
            block_size,
            max_blocks,
            scale: 1.0 / (head_dim as f32).sqrt(),
            num_splits: 1,
            keys_per_split: crate::split::KEY_TILE,
        };
        AttentionCase {
            shape,
            seqs: seqs.to_vec(),
            q: rng.vec(row_seq.len() * qh * head_dim, q_amp),
            k_cache: rng.vec(cache, 1.0),
            v_cache: rng.vec(cache, 1.0),
            block_tables,
            row_seq,
            positions,
            kv_head_of_q: kv_head_of_q.to_vec(),
        }
    }

    pub fn rows(&self) -> usize {
        self.row_seq.len()
    }

    /// The longest context of the batch.
    pub fn max_context(&self) -> usize {
        self.seqs.iter().map(|s| s.context_len).max().unwrap_or(0)
    }

    /// First row of each sequence, while rows are still grouped by sequence.
    pub fn q_starts(&self) -> Vec<usize> {
        self.seqs.iter().scan(0, |next, s| Some(std::mem::replace(next, *next + s.q_len))).collect()
    }

    /// Reorders the query rows at random (a kernel must not assume rows grouped by sequence);
    /// returns `perm` with new row i = old row `perm[i]`.
    pub fn shuffle_rows(&mut self, rng: &mut Rng) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..self.rows()).collect();
        rng.shuffle(&mut perm);
        let width = self.shape.num_q_heads * self.shape.head_dim;
        self.q = perm.iter().flat_map(|&r| self.q[r * width..][..width].to_vec()).collect();
        self.row_seq = perm.iter().map(|&r| self.row_seq[r]).collect();
        self.positions = perm.iter().map(|&r| self.positions[r]).collect();
        perm
    }
}
