//! Test support shared by the CPU tests (tests/reference.rs), the emulator tests (tests/emu.rs)
//! and the GPU tests (tests/gpu.rs): deterministic random data, random paged-attention batches,
//! and one `check_*` per kernel that builds its cases, hands each to a caller's `run` (the
//! kernel emulated or on a GPU, with the reference's signature) and compares what comes back
//! with the reference, so the emulator and a GPU check the same cases to the same tolerances.

use crate::dtype::{convert, widen, KernelDType};
use crate::reference::{self, AttentionInputs, RopeInputs, TopK};
use crate::shape::{AttentionShape, QkvShape};
use crate::split::{plan_splits, KEY_TILE};

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
            keys_per_split: KEY_TILE,
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

/// (rtol, atol) for row-wise kernels: f32 differs from the reference only by summation order
/// and libm's last bits; bf16/f16 by an occasional flipped rounding.
fn tol<T: KernelDType>() -> (f32, f32) {
    if T::SUFFIX == "f32" {
        (1e-5, 1e-6)
    } else {
        (1e-2, 1e-2)
    }
}

/// Attention sums hundreds of products in a different order than the reference.
fn attention_tol<T: KernelDType>() -> (f32, f32) {
    if T::SUFFIX == "f32" {
        (1e-4, 1e-5)
    } else {
        (1e-2, 1e-2)
    }
}

/// rms_norm and add_rms_norm against their references, 1×64 to 2×8192; `rms_norm` and
/// `add_rms_norm` run the kernels, each with its reference's signature (add_rms_norm updates the
/// residual in place).
pub fn check_rms_norm<T: KernelDType>(
    mut rms_norm: impl FnMut(&[T], &[T], f32) -> Vec<T>,
    mut add_rms_norm: impl FnMut(&mut [T], &[T], &[T], f32) -> Vec<T>,
) {
    let mut rng = Rng(11);
    let (rtol, atol) = tol::<T>();
    for (rows, cols) in [(1, 64), (5, 576), (7, 130), (3, 4096), (2, 8192)] {
        let what = format!("{} {rows}x{cols}", T::SUFFIX);
        let x: Vec<T> = convert(&rng.vec(rows * cols, 3.0));
        let w: Vec<T> = convert(&rng.vec(cols, 1.0));
        let delta: Vec<T> = convert(&rng.vec(rows * cols, 1.0));
        let want = reference::rms_norm(&x, &w, 1e-5);
        assert_close(&widen(&rms_norm(&x, &w, 1e-5)), &widen(&want), rtol, atol, &format!("rms_norm {what}"));

        let mut residual = x.clone();
        let out = add_rms_norm(&mut residual, &delta, &w, 1e-5);
        let mut want_residual = x.clone();
        let want = reference::add_rms_norm(&mut want_residual, &delta, &w, 1e-5);
        assert_eq!(residual, want_residual, "add_rms_norm {what}: residual (one rounded add, exact)");
        assert_close(&widen(&out), &widen(&want), rtol, atol, &format!("add_rms_norm {what}"));
    }
}

/// silu_mul against its reference; `run(gate_up, inter)` runs the kernel.
pub fn check_silu_mul<T: KernelDType>(mut run: impl FnMut(&[T], usize) -> Vec<T>) {
    let mut rng = Rng(12);
    let (rtol, atol) = tol::<T>();
    for (rows, inter) in [(1, 64), (3, 1536), (5, 97), (64, 14336)] {
        let gu: Vec<T> = convert(&rng.vec(rows * 2 * inter, 12.0));
        let what = format!("silu_mul {} {rows}x{inter}", T::SUFFIX);
        assert_close(&widen(&run(&gu, inter)), &widen(&reference::silu_mul(&gu, inter)), rtol, atol, &what);
    }
}

/// rope_kv_write against its reference, bit for bit, with a padding row and a row past the
/// cos/sin table; `run(shape, inputs, k_cache, v_cache)` runs the kernel on the caches in place
/// and returns q_out, which must start as zeros.
pub fn check_rope_kv_write<T: KernelDType>(
    mut run: impl FnMut(&QkvShape, &RopeInputs<T>, &mut [T], &mut [T]) -> Vec<T>,
) {
    let mut rng = Rng(13);
    for (qh, kvh, hd) in [(32, 8, 128), (4, 2, 64), (7, 3, 16)] {
        let shape = QkvShape { num_q_heads: qh, num_kv_heads: kvh, head_dim: hd };
        let (rows, max_pos, num_slots) = (9, 300, 40);
        let qkv: Vec<T> = convert(&rng.vec(rows * shape.qkv_width(), 2.0));
        let cos_sin = rng.vec(max_pos * hd, 1.0);
        let mut positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
        let mut slots: Vec<u32> = (0..num_slots as u32).collect();
        rng.shuffle(&mut slots);
        slots.truncate(rows);
        slots[2] = u32::MAX; // padding: q rotated, nothing stored
        positions[5] = max_pos as u32; // past the table: the row is skipped entirely
        let k_cache: Vec<T> = convert(&rng.vec(num_slots * shape.kv_width(), 1.0));
        let v_cache: Vec<T> = convert(&rng.vec(num_slots * shape.kv_width(), 1.0));

        let (mut k, mut v) = (k_cache.clone(), v_cache.clone());
        let inputs = RopeInputs { qkv: &qkv, cos_sin: &cos_sin, positions: &positions, slots: &slots };
        let q_out = run(&shape, &inputs, &mut k, &mut v);

        // The reference on the same rows, the skipped row made harmless (position 0, no slot);
        // the kernel leaves that row of q_out as it found it (zeros).
        let (mut ref_pos, mut ref_slots) = (positions.clone(), slots.clone());
        (ref_pos[5], ref_slots[5]) = (0, u32::MAX);
        let (mut want_k, mut want_v) = (k_cache, v_cache);
        let ref_inputs = RopeInputs { qkv: &qkv, cos_sin: &cos_sin, positions: &ref_pos, slots: &ref_slots };
        let mut want_q = reference::rope_kv_write(&shape, &ref_inputs, &mut want_k, &mut want_v);
        want_q[5 * shape.q_width()..6 * shape.q_width()].fill(T::default());

        // The same IEEE operations in the same order (no FMA contraction): equal bits.
        let what = format!("rope {} q={qh} kv={kvh} hd={hd}", T::SUFFIX);
        assert_eq!(q_out, want_q, "{what}: q");
        assert_eq!(k, want_k, "{what}: k cache");
        assert_eq!(v, want_v, "{what}: v cache");
    }
}

/// A decode, a whole prefill, a prefill chunk after a cached prefix, and a long decode.
pub const MIXED: [SeqSpec; 4] = [
    SeqSpec { context_len: 37, q_len: 1 },
    SeqSpec { context_len: 20, q_len: 20 },
    SeqSpec { context_len: 300, q_len: 40 },
    SeqSpec { context_len: 700, q_len: 1 },
];

/// paged_attention against its reference: [`MIXED`] batches with shuffled rows under GQA 4:1,
/// an uneven 3:1 shard and plain maps, head_dim 32 to 256, and long-context decodes split as
/// [`plan_splits`] plans them for `num_sms` SMs. `run(shape, inputs)` runs the kernel with
/// `shape`'s splits and returns its output and, with more than one split, its workspace.
pub fn check_paged_attention<T: KernelDType>(
    num_sms: usize,
    mut run: impl FnMut(&AttentionShape, &AttentionInputs<T>) -> (Vec<T>, Vec<f32>),
) {
    let mut rng = Rng(14);
    let gqa: Vec<u32> = (0..8).map(|h| h / 4).collect();
    let uneven = [0, 0, 0, 1, 1, 1, 2];
    for (map, kvh, hd) in [(&gqa[..], 2, 64), (&uneven[..], 3, 128), (&[0, 1][..], 2, 32), (&[1, 0, 0][..], 2, 256)] {
        for q_amp in [1.0, 8.0] {
            let mut c = AttentionCase::new(&mut rng, map, kvh, hd, 16, &MIXED, q_amp);
            c.shuffle_rows(&mut rng);
            let what = format!("mixed batch, map {map:?}, hd {hd}, q ±{q_amp}");
            check_attention_case(&c, (1, KEY_TILE), &what, &mut run);
            // Splits shorter than most rows, so short rows end in empty splits.
            check_attention_case(&c, (4, KEY_TILE), &what, &mut run);
        }
    }
    // Long contexts, one decode row each (plus a short one): the planner splits them.
    let long = [
        SeqSpec { context_len: 9000, q_len: 1 },
        SeqSpec { context_len: 4100, q_len: 1 },
        SeqSpec { context_len: 150, q_len: 1 },
    ];
    for (map, kvh, hd) in [(&gqa[..], 2, 128), (&uneven[..], 3, 64)] {
        let c = AttentionCase::new(&mut rng, map, kvh, hd, 16, &long, 4.0);
        let plan = plan_splits(c.rows(), c.shape.num_q_heads, c.max_context(), num_sms);
        assert!(plan.0 > 1, "a long-context decode on {num_sms} SMs should split: {plan:?}");
        let what = format!("long contexts, map {map:?}, hd {hd}");
        check_attention_case(&c, plan, &what, &mut run);
        check_attention_case(&c, (1, KEY_TILE), &what, &mut run);
        check_attention_case(&c, (3, KEY_TILE), &format!("{what}, last split takes the rest"), &mut run);
    }
}

/// The kernel vs the reference for one case and split plan; with splits, the partials too.
fn check_attention_case<T: KernelDType>(
    c: &AttentionCase,
    splits: (usize, usize),
    what: &str,
    run: &mut impl FnMut(&AttentionShape, &AttentionInputs<T>) -> (Vec<T>, Vec<f32>),
) {
    let shape = AttentionShape { num_splits: splits.0, keys_per_split: splits.1, ..c.shape };
    let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) = (convert(&c.q), convert(&c.k_cache), convert(&c.v_cache));
    let inputs = AttentionInputs {
        q: &q,
        k_cache: &k,
        v_cache: &v,
        block_tables: &c.block_tables,
        row_seq: &c.row_seq,
        positions: &c.positions,
        kv_head_of_q: &c.kv_head_of_q,
    };
    let (out, partials) = run(&shape, &inputs);
    let what = format!("{what} {} {} × {}", T::SUFFIX, splits.0, splits.1);
    let (rtol, atol) = attention_tol::<T>();
    assert_close(&widen(&out), &widen(&reference::paged_attention(&shape, &inputs)), rtol, atol, &what);
    if shape.num_splits > 1 {
        // m and l and the accumulator, split by split; empty splits exactly (−inf, 0, 0…).
        let want = reference::attention_partials(&shape, &inputs);
        assert_close(&partials, &want, 1e-4, 1e-4, &format!("{what}: partials"));
    }
}

/// attention_merge against its reference, empty splits included; `run(partials, head_dim,
/// num_splits)` runs the kernel.
pub fn check_attention_merge(mut run: impl FnMut(&[f32], usize, usize) -> Vec<f32>) {
    let mut rng = Rng(15);
    let hd = 32;
    let empty: Vec<f32> = [vec![f32::NEG_INFINITY, 0.0], vec![0.0; hd]].concat();
    let split = |rng: &mut Rng| [vec![rng.f32() * 4.0, 1.0 + rng.f32().abs()], rng.vec(hd, 3.0)].concat();
    // Three (row, head) items of 3 splits: some empty, one all empty (zeros, never NaN).
    let partials: Vec<f32> = [
        split(&mut rng),
        empty.clone(),
        split(&mut rng),
        empty.clone(),
        empty.clone(),
        empty.clone(),
        empty.clone(),
        split(&mut rng),
        split(&mut rng),
    ]
    .concat();
    let out = run(&partials, hd, 3);
    assert_close(&out, &reference::attention_merge::<f32>(&partials, hd, 3), 1e-6, 1e-6, "merge");
    assert!(out[hd..2 * hd].iter().all(|&x| x == 0.0), "an item without keys merges to zeros");
}

/// logits_topk against its reference on [`logits`], k from 1 to 64 and up to the whole
/// vocabulary; `run(logits, inv_temperature, k)` runs the kernel.
pub fn check_logits_topk(mut run: impl FnMut(&[f32], &[f32], usize) -> TopK) {
    let mut rng = Rng(17);
    for (rows, vocab, k) in [(5, 1000, 64), (3, 151_936, 50), (4, 50, 50), (2, 7, 3), (2, 5000, 1)] {
        let mut logits = self::logits(&mut rng, rows, vocab);
        // The last row: nothing but NaN and −inf (stats −inf, picks by id).
        for (i, l) in logits[(rows - 1) * vocab..].iter_mut().enumerate() {
            *l = if i % 3 == 0 { f32::NAN } else { f32::NEG_INFINITY };
        }
        let inv_t: Vec<f32> = (0..rows).map(|r| [1.0, 0.7, 2.0, 0.0][r % 4]).collect();
        let got = run(&logits, &inv_t, k);
        let want = reference::logits_topk(&logits, &inv_t, k);
        let what = format!("topk {rows}x{vocab} k={k}");
        assert_eq!(got.ids, want.ids, "{what}: ids");
        assert_eq!(got.values, want.values, "{what}: values (chosen logits, exact)");
        assert_close(&got.stats, &want.stats, 1e-5, 1e-5, &format!("{what}: stats"));
    }
}
