//! The CPU references against independent implementations: `shardline_ops` (the CPU engine's
//! kernels and their own naive references) and `shardline_sampling` (f64 logprobs), in f32, so
//! the semantics the GPU kernels are held to are themselves checked in CI.

use half::bf16;
use shardline_kernels::reference::{self, AttentionInputs, RopeInputs};
use shardline_kernels::testing::{self, assert_close, AttentionCase, Rng, SeqSpec};
use shardline_kernels::{plan_splits, widen, AttentionShape, QkvShape, KEY_TILE, PARTIAL_HEADER};
use shardline_ops::{KvLayout, SeqSpan};

#[test]
fn rms_norm_and_add_rms_norm_match_ops() {
    let mut rng = Rng(1);
    for (rows, cols) in [(1, 64), (3, 576), (7, 130), (2, 4096)] {
        let (x, w, delta) = (rng.vec(rows * cols, 3.0), rng.vec(cols, 1.0), rng.vec(rows * cols, 1.0));
        let mut want = vec![0.0; rows * cols];
        shardline_ops::rms_norm(&x, &w, 1e-5, &mut want);
        assert_close(&reference::rms_norm(&x, &w, 1e-5), &want, 1e-5, 1e-6, &format!("rms_norm {rows}x{cols}"));

        let mut residual = x.clone();
        let out = reference::add_rms_norm(&mut residual, &delta, &w, 1e-5);
        let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        assert_eq!(residual, sum, "the residual becomes x + delta");
        shardline_ops::rms_norm(&sum, &w, 1e-5, &mut want);
        assert_close(&out, &want, 1e-5, 1e-6, &format!("add_rms_norm {rows}x{cols}"));
    }
}

#[test]
fn bf16_rms_norm_rounds_where_hf_does() {
    // HF: y = (x · rsqrt(mean(x²) + eps)).to(bf16); out = weight · y, itself a bf16 product.
    let x: Vec<bf16> = [0.3f32, -1.7, 2.9, 0.01].map(bf16::from_f32).to_vec();
    let w: Vec<bf16> = [1.1f32, 0.9, -0.7, 3.3].map(bf16::from_f32).to_vec();
    let xf = widen(&x);
    let inv = 1.0 / (xf.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() as f32 / 4.0 + 1e-6).sqrt();
    let want: Vec<bf16> =
        xf.iter().zip(&w).map(|(v, w)| bf16::from_f32(bf16::from_f32(v * inv).to_f32() * w.to_f32())).collect();
    assert_eq!(reference::rms_norm(&x, &w, 1e-6), want);
}

#[test]
fn silu_mul_matches_ops() {
    let mut rng = Rng(2);
    for (rows, inter) in [(1, 64), (3, 1536), (5, 97)] {
        // Gate values out to ±12 reach both tails of silu.
        let gu = rng.vec(rows * 2 * inter, 12.0);
        let mut want = vec![0.0; rows * inter];
        shardline_ops::silu_mul(&gu, inter, &mut want);
        assert_close(&reference::silu_mul(&gu, inter), &want, 1e-5, 1e-6, &format!("silu_mul {rows}x{inter}"));
    }
}

/// A cos/sin table as a model builds it: θ_i = base^(−2i/head_dim).
fn cos_sin_table(max_pos: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut t = vec![0.0; max_pos * head_dim];
    for p in 0..max_pos {
        for i in 0..half {
            let angle = p as f32 * 10000f32.powf(-2.0 * i as f32 / head_dim as f32);
            t[p * head_dim + i] = angle.cos();
            t[p * head_dim + half + i] = angle.sin();
        }
    }
    t
}

#[test]
fn rope_kv_write_matches_ops_rope_and_write_kv() {
    let mut rng = Rng(3);
    for (qh, kvh, hd) in [(4, 2, 64), (3, 1, 128), (7, 3, 16)] {
        let shape = QkvShape { num_q_heads: qh, num_kv_heads: kvh, head_dim: hd };
        let (rows, max_pos, num_slots) = (6, 50, 20);
        let qkv = rng.vec(rows * shape.qkv_width(), 2.0);
        let table = cos_sin_table(max_pos, hd);
        let positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
        let mut slots: Vec<u32> = (0..num_slots as u32).collect();
        rng.shuffle(&mut slots);
        slots.truncate(rows);
        slots[2] = u32::MAX; // a padding row: rotated q, nothing stored
        let (mut kc, mut vc) = (rng.vec(num_slots * shape.kv_width(), 1.0), rng.vec(num_slots * shape.kv_width(), 1.0));
        let (mut want_kc, mut want_vc) = (kc.clone(), vc.clone());
        let inputs = RopeInputs { qkv: &qkv, cos_sin: &table, positions: &positions, slots: &slots };
        let q_out = reference::rope_kv_write(&shape, &inputs, &mut kc, &mut vc);

        // ops: split q | k | v, rotate q and k with per-row cos/sin, write k/v of the real rows.
        let (half, qw, kvw) = (hd / 2, shape.q_width(), shape.kv_width());
        let part = |r: usize, start: usize, len: usize| qkv[r * shape.qkv_width() + start..][..len].to_vec();
        let mut q: Vec<f32> = (0..rows).flat_map(|r| part(r, 0, qw)).collect();
        let mut k: Vec<f32> = (0..rows).flat_map(|r| part(r, qw, kvw)).collect();
        let v: Vec<f32> = (0..rows).flat_map(|r| part(r, qw + kvw, kvw)).collect();
        let row_of = |p: u32, off: usize| table[p as usize * hd + off..][..half].to_vec();
        let cos: Vec<f32> = positions.iter().flat_map(|&p| row_of(p, 0)).collect();
        let sin: Vec<f32> = positions.iter().flat_map(|&p| row_of(p, half)).collect();
        shardline_ops::rope_rotate_half(&mut q, qh, hd, &cos, &sin);
        shardline_ops::rope_rotate_half(&mut k, kvh, hd, &cos, &sin);
        let real: Vec<usize> = (0..rows).filter(|&r| slots[r] != u32::MAX).collect();
        let pick = |x: &[f32]| real.iter().flat_map(|&r| x[r * kvw..][..kvw].to_vec()).collect::<Vec<f32>>();
        let real_slots: Vec<u32> = real.iter().map(|&r| slots[r]).collect();
        let layout = KvLayout { block_size: 1, num_kv_heads: kvh, head_dim: hd };
        shardline_ops::write_kv(&pick(&k), &pick(&v), &real_slots, &layout, &mut want_kc, &mut want_vc);

        let what = format!("rope q={qh} kv={kvh} hd={hd}");
        assert_eq!(q_out, q, "{what}: q (the same f32 operations, so the same bits)");
        assert_eq!(kc, want_kc, "{what}: k cache");
        assert_eq!(vc, want_vc, "{what}: v cache");
    }
}

fn inputs<'a, T>(c: &'a AttentionCase, q: &'a [T], k: &'a [T], v: &'a [T]) -> AttentionInputs<'a, T> {
    AttentionInputs {
        q,
        k_cache: k,
        v_cache: v,
        block_tables: &c.block_tables,
        row_seq: &c.row_seq,
        positions: &c.positions,
        kv_head_of_q: &c.kv_head_of_q,
    }
}

fn f32_inputs(c: &AttentionCase) -> AttentionInputs<'_, f32> {
    inputs(c, &c.q, &c.k_cache, &c.v_cache)
}

/// shardline_ops::paged_attention on the case's (grouped) rows.
fn ops_attention(c: &AttentionCase) -> Vec<f32> {
    let s = &c.shape;
    let spans: Vec<SeqSpan> = c
        .seqs
        .iter()
        .zip(c.q_starts())
        .enumerate()
        .map(|(i, (spec, q_start))| SeqSpan {
            q_start,
            q_len: spec.q_len,
            context_len: spec.context_len,
            block_table: &c.block_tables[i * s.max_blocks..][..spec.context_len.div_ceil(s.block_size)],
        })
        .collect();
    let layout = KvLayout { block_size: s.block_size, num_kv_heads: s.num_kv_heads, head_dim: s.head_dim };
    let map: Vec<usize> = c.kv_head_of_q.iter().map(|&h| h as usize).collect();
    let mut out = vec![0.0; c.q.len()];
    shardline_ops::paged_attention(
        &c.q,
        s.num_q_heads,
        &map,
        &spans,
        &layout,
        &c.k_cache,
        &c.v_cache,
        s.scale,
        &mut out,
    );
    out
}

/// A decode, a whole prefill, a prefill chunk after a cached prefix, and a long decode.
const MIXED: [SeqSpec; 4] = [
    SeqSpec { context_len: 37, q_len: 1 },
    SeqSpec { context_len: 20, q_len: 20 },
    SeqSpec { context_len: 300, q_len: 40 },
    SeqSpec { context_len: 700, q_len: 1 },
];

/// (kv_head_of_q, num_kv_heads, head_dim, block_size): MHA, GQA 4:1, an uneven 3:1 TP shard
/// (7 q heads over 3 KV heads), and a permuted map.
fn head_maps() -> Vec<(Vec<u32>, usize, usize, usize)> {
    vec![
        (vec![0, 1], 2, 32, 4),
        ((0..8).map(|h| h / 4).collect(), 2, 64, 16),
        (vec![0, 0, 0, 1, 1, 1, 2], 3, 128, 16),
        (vec![2, 0, 1, 1], 3, 64, 8),
    ]
}

#[test]
fn paged_attention_matches_ops_on_mixed_batches() {
    let mut rng = Rng(4);
    for (map, kvh, hd, bs) in head_maps() {
        for q_amp in [1.0, 8.0] {
            let c = AttentionCase::new(&mut rng, &map, kvh, hd, bs, &MIXED, q_amp);
            let got = reference::paged_attention(&c.shape, &f32_inputs(&c));
            let what = format!("attention map {map:?} hd {hd} bs {bs} q_amp {q_amp}");
            assert_close(&got, &ops_attention(&c), 1e-5, 1e-6, &what);
        }
    }
}

#[test]
fn split_k_equals_the_unsplit_softmax() {
    let mut rng = Rng(5);
    for (map, kvh, hd, bs) in head_maps() {
        let c = AttentionCase::new(&mut rng, &map, kvh, hd, bs, &MIXED, 4.0);
        let whole = reference::paged_attention(&c.shape, &f32_inputs(&c));
        let planned = plan_splits(c.rows(), c.shape.num_q_heads, c.max_context(), 132);
        // Even splits, many mostly-empty splits, the plan, and too few splits (the last one
        // takes the remaining keys).
        for (num_splits, keys_per_split) in [(2, 384), (12, KEY_TILE), planned, (3, KEY_TILE)] {
            let shape = AttentionShape { num_splits, keys_per_split, ..c.shape };
            let got = reference::paged_attention(&shape, &f32_inputs(&c));
            assert_close(&got, &whole, 1e-5, 1e-6, &format!("{num_splits} × {keys_per_split}, map {map:?}"));
        }
    }
}

#[test]
fn splits_past_a_rows_keys_are_empty_partials() {
    let mut rng = Rng(6);
    let c = AttentionCase::new(&mut rng, &[0, 0], 1, 32, 16, &[SeqSpec { context_len: 130, q_len: 130 }], 1.0);
    let shape = AttentionShape { num_splits: 4, keys_per_split: KEY_TILE, ..c.shape };
    let parts = reference::attention_partials(&shape, &f32_inputs(&c));
    let stride = PARTIAL_HEADER + 32;
    for r in 0..c.rows() {
        for h in 0..2 {
            for s in 0..4 {
                let p = &parts[((r * 2 + h) * 4 + s) * stride..][..stride];
                let keys = (c.positions[r] as usize + 1).saturating_sub(s * KEY_TILE).min(KEY_TILE);
                if keys == 0 {
                    assert!(p[0] == f32::NEG_INFINITY && p[1..].iter().all(|&x| x == 0.0), "row {r} split {s}: {p:?}");
                } else {
                    assert!(p[0].is_finite() && p[1] >= 1.0, "row {r} split {s}: the max key gives l ≥ 1");
                }
            }
        }
    }
}

#[test]
fn merge_weighs_empty_splits_zero_and_never_makes_nan() {
    let empty = [f32::NEG_INFINITY, 0.0, 0.0, 0.0];
    // Split 0: one key with score 2 and value (1, 3); split 1: one key, score 0, value (5, 7).
    let a = [2.0, 1.0, 1.0, 3.0];
    let b = [0.0, 1.0, 5.0, 7.0];
    let got: Vec<f32> = reference::attention_merge(&[a, empty, b].concat(), 2, 3);
    let (wa, wb) = (1.0, (-2.0f32).exp());
    let want = [(wa * 1.0 + wb * 5.0) / (wa + wb), (wa * 3.0 + wb * 7.0) / (wa + wb)];
    assert_close(&got, &want, 1e-6, 0.0, "merge");
    let none: Vec<f32> = reference::attention_merge(&[empty, empty].concat(), 2, 2);
    assert_eq!(none, vec![0.0, 0.0], "no keys at all: zeros, not NaN");
    let alone: Vec<f32> = reference::attention_merge(&[empty, b].concat(), 2, 2);
    assert_eq!(alone, vec![5.0, 7.0]);
}

#[test]
fn rows_may_come_in_any_order() {
    let mut rng = Rng(7);
    let mut c = AttentionCase::new(&mut rng, &[0, 0, 0, 1, 1, 1], 2, 64, 16, &MIXED, 4.0);
    let grouped = reference::paged_attention(&c.shape, &f32_inputs(&c));
    let perm = c.shuffle_rows(&mut rng);
    let shuffled = reference::paged_attention(&c.shape, &f32_inputs(&c));
    let w = 6 * 64;
    let want: Vec<f32> = perm.iter().flat_map(|&r| grouped[r * w..][..w].to_vec()).collect();
    assert_eq!(shuffled, want);
}

#[test]
fn bf16_attention_rounds_only_its_inputs_and_output() {
    let mut rng = Rng(8);
    let c = AttentionCase::new(&mut rng, &[0, 0, 1, 1], 2, 64, 16, &MIXED, 4.0);
    let (q, k, v) = (
        shardline_kernels::convert::<bf16>(&c.q),
        shardline_kernels::convert(&c.k_cache),
        shardline_kernels::convert(&c.v_cache),
    );
    let got = widen(&reference::paged_attention(&c.shape, &inputs(&c, &q, &k, &v)));
    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let exact = reference::paged_attention(&c.shape, &inputs(&c, &qf, &kf, &vf));
    let rounded: Vec<f32> = exact.iter().map(|&x| shardline_kernels::round::<bf16>(x)).collect();
    assert_eq!(got, rounded, "bf16 attention = f32 attention of the bf16 inputs, rounded once");
}

/// Every entry sorted by (value desc, id asc) with NaN as −inf: the order by definition.
fn full_sort(row: &[f32]) -> Vec<(f32, u32)> {
    let key = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let mut all: Vec<(f32, u32)> = row.iter().enumerate().map(|(i, &l)| (key(l), i as u32)).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    all
}

#[test]
fn topk_matches_a_full_sort_and_sampling_logprobs() {
    let mut rng = Rng(9);
    for (vocab, k) in [(1000, 64), (50, 50), (7, 3), (4099, 1)] {
        let rows = 4;
        let mut logits = testing::logits(&mut rng, rows, vocab);
        // A row of nothing but NaN and −inf: its stats are −inf, its picks −inf by id.
        for (i, l) in logits[3 * vocab..].iter_mut().enumerate() {
            *l = if i % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY };
        }
        let inv_t = [1.0, 0.5, 2.5, 1.0];
        let top = reference::logits_topk(&logits, &inv_t, k);
        for (r, row) in logits.chunks(vocab).enumerate() {
            let what = format!("vocab {vocab} k {k} row {r}");
            let sorted = &full_sort(row)[..k];
            assert_eq!(&top.ids[r * k..][..k], sorted.iter().map(|c| c.1).collect::<Vec<_>>(), "{what}: ids");
            assert_eq!(&top.values[r * k..][..k], sorted.iter().map(|c| c.0).collect::<Vec<_>>(), "{what}: values");

            // Stats against f64 math written independently, and sampling's own logprobs.
            let lse = |scale: f64| {
                let xs: Vec<f64> = row
                    .iter()
                    .map(|&l| (l * scale as f32) as f64)
                    .map(|x| if x.is_nan() { f64::NEG_INFINITY } else { x })
                    .collect();
                let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    m
                } else {
                    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
                }
            };
            let stats = &top.stats[r * 3..][..3];
            let want = [sorted[0].0, lse(1.0) as f32, lse(inv_t[r] as f64) as f32];
            assert_close(stats, &want, 1e-6, 1e-6, &format!("{what}: stats"));
            if !stats[1].is_finite() {
                continue; // logprobs of an all-(−inf) row are NaN on both sides
            }
            let logprobs = shardline_sampling::log_softmax_top(row, k);
            let ours: Vec<f32> = top.values[r * k..][..k].iter().map(|v| v - stats[1]).collect();
            let theirs: Vec<f32> = logprobs.iter().map(|t| t.logprob).collect();
            assert_eq!(top.ids[r * k..][..k], logprobs.iter().map(|t| t.token_id).collect::<Vec<_>>(), "{what}");
            assert_close(&ours, &theirs, 1e-5, 1e-5, &format!("{what}: logprobs"));
        }
    }
}
