//! Every kernel against its naive reference on random inputs, odd sizes included.

use shardline_ops::{reference, KvLayout, SeqSpan};

/// xorshift64*: deterministic random floats in [-1, 1) without a dependency.
struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn matmul_matches_reference_across_shapes() {
    let mut rng = Rng(1);
    for &m in &[1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32, 33, 64] {
        for &(k, n) in &[(1, 1), (7, 3), (16, 16), (33, 70), (576, 200), (100, 1000)] {
            let (x, w) = (rng.vec(m * k), rng.vec(n * k));
            let mut out = vec![f32::NAN; m * n];
            shardline_ops::matmul_nt(&x, m, k, &w, n, &mut out);
            assert_close(&out, &reference::matmul_nt(&x, m, k, &w, n), 1e-4, &format!("matmul m={m} k={k} n={n}"));
        }
    }
}

#[test]
fn rowwise_kernels_match_reference() {
    let mut rng = Rng(2);
    // (64, 576) is large enough for the row-parallel path.
    for &(rows, n) in &[(1, 64), (3, 576), (70, 130), (64, 576)] {
        let (x, w) = (rng.vec(rows * n), rng.vec(n));
        let mut out = vec![0.0; rows * n];
        shardline_ops::rms_norm(&x, &w, 1e-5, &mut out);
        assert_close(&out, &reference::rms_norm(&x, &w, 1e-5), 1e-5, "rms_norm");

        // Gate values out to ±12 reach both tails of silu.
        let gu: Vec<f32> = rng.vec(rows * 2 * n).iter().map(|v| v * 12.0).collect();
        let mut out = vec![0.0; rows * n];
        shardline_ops::silu_mul(&gu, n, &mut out);
        assert_close(&out, &reference::silu_mul(&gu, n), 1e-5, "silu_mul");
    }
    for &(t, heads, hd) in &[(1, 1, 2), (5, 3, 64), (2, 9, 16)] {
        let x = rng.vec(t * heads * hd);
        let (cos, sin) = (rng.vec(t * hd / 2), rng.vec(t * hd / 2));
        let mut got = x.clone();
        shardline_ops::rope_rotate_half(&mut got, heads, hd, &cos, &sin);
        assert_close(&got, &reference::rope_rotate_half(&x, heads, hd, &cos, &sin), 1e-6, "rope");
    }
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    shardline_ops::add_bias(&mut x, &[10.0, 20.0]);
    assert_eq!(x, vec![11.0, 22.0, 13.0, 24.0]);
}

#[test]
fn paged_attention_matches_reference_on_ragged_shuffled_blocks() {
    let mut rng = Rng(3);
    let layout = KvLayout { block_size: 4, num_kv_heads: 3, head_dim: 16 };
    let num_blocks = 64;
    let w = layout.token_width();
    let (mut kc, mut vc) = (vec![0.0; num_blocks * 4 * w], vec![0.0; num_blocks * 4 * w]);
    // (context_len, q_len, block table): a decode, a whole prefill, a prefill chunk after a
    // cached prefix, and a long decode; blocks deliberately scattered.
    // The last two spans are long enough for the GEMM formulation (whole prompt, and a chunk).
    let tables: Vec<Vec<u32>> = vec![
        vec![7, 3],
        vec![12, 0, 25, 9, 1],
        vec![30, 2, 39],
        (13..23).rev().collect(),
        (40..52).rev().collect(),
        vec![55, 53, 57, 54, 56, 58, 59, 52, 60],
    ];
    let shape = [(6, 1), (17, 17), (11, 4), (37, 1), (45, 45), (36, 33)];
    // Fill each sequence's context in the cache through write_kv, in its own order.
    for (tbl, &(ctx, _)) in tables.iter().zip(&shape) {
        let slots: Vec<u32> = (0..ctx).map(|p| tbl[p / 4] * 4 + (p % 4) as u32).collect();
        let (k, v) = (rng.vec(ctx * w), rng.vec(ctx * w));
        shardline_ops::write_kv(&k, &v, &slots, &layout, &mut kc, &mut vc);
    }
    let mut spans = Vec::new();
    let mut rows = 0;
    for (tbl, &(ctx, q_len)) in tables.iter().zip(&shape) {
        spans.push(SeqSpan { q_start: rows, q_len, context_len: ctx, block_table: tbl });
        rows += q_len;
    }
    let heads = 9;
    let head_map: Vec<usize> = (0..heads).map(|h| h / 3).collect();
    let q = rng.vec(rows * heads * 16);
    let mut out = vec![f32::NAN; q.len()];
    shardline_ops::paged_attention(&q, heads, &head_map, &spans, &layout, &kc, &vc, 0.25, &mut out);
    let want = reference::paged_attention(&q, heads, &head_map, &spans, &layout, &kc, &vc, 0.25);
    assert_close(&out, &want, 1e-5, "paged_attention");
}

#[test]
fn paged_attention_model_shapes_with_arbitrary_head_map() {
    // SmolLM2's head_dim and a 16-slot block, so the 8-keys-at-a-time and register-resident V
    // paths run; a prefill of 150 rows splits into two GEMM chunks (128 + 22).
    let mut rng = Rng(4);
    let layout = KvLayout { block_size: 16, num_kv_heads: 3, head_dim: 64 };
    let w = layout.token_width();
    let num_blocks = 40;
    let (mut kc, mut vc) = (rng.vec(num_blocks * 16 * w), rng.vec(num_blocks * 16 * w));
    // Blocks handed out in a scrambled order: block b goes to position (b * 17) % 40.
    let order: Vec<u32> = (0..num_blocks as u32).map(|b| (b * 17) % num_blocks as u32).collect();
    let tables = [order[0..3].to_vec(), order[3..10].to_vec(), order[10..20].to_vec(), order[20..21].to_vec()];
    // (context_len, q_len): decode at a block boundary + 1, chunked prefill, whole prefill,
    // decode at position 0.
    let shape = [(33, 1), (100, 40), (150, 150), (1, 1)];
    let mut spans = Vec::new();
    let mut rows = 0;
    for (tbl, &(ctx, q_len)) in tables.iter().zip(&shape) {
        let slots: Vec<u32> = (0..ctx).map(|p| tbl[p / 16] * 16 + (p % 16) as u32).collect();
        // Scores of a few units, as real attention has; write_kv overwrites the noise.
        let (k, v) = (rng.vec(ctx * w).iter().map(|x| x * 4.0).collect::<Vec<_>>(), rng.vec(ctx * w));
        shardline_ops::write_kv(&k, &v, &slots, &layout, &mut kc, &mut vc);
        spans.push(SeqSpan { q_start: rows, q_len, context_len: ctx, block_table: tbl });
        rows += q_len;
    }
    let heads = 5;
    let head_map = [2, 0, 2, 1, 0];
    let q = rng.vec(rows * heads * 64);
    let mut out = vec![f32::NAN; q.len()];
    shardline_ops::paged_attention(&q, heads, &head_map, &spans, &layout, &kc, &vc, 0.125, &mut out);
    let want = reference::paged_attention(&q, heads, &head_map, &spans, &layout, &kc, &vc, 0.125);
    assert_close(&out, &want, 1e-5, "paged_attention");
}

/// Quantized matmul against dequantize-then-f32: the only difference is the activations'
/// 8-bit rounding (half a step of max|x|/127 per element at most), bounded here by 1% of
/// Σ|w|·max|x| per output.
#[test]
fn quantized_matmul_matches_dequantize_then_f32_for_every_format() {
    use shardline_ops::{matmul_nt_quant, QuantMatrix, QuantType};
    let mut rng = Rng(7);
    for ty in QuantType::ALL {
        let b = ty.block_elems();
        for k in [b, 2 * b, 3 * b] {
            // 37 rows keep GGUF's layout; Q4_1's and Q8_0's 48 are interleaved in groups of 16.
            for (m, n) in [(1, 37), (2, 37), (5, 37), (33, 37), (1, 48), (5, 48)] {
                let (x, w) = (rng.vec(m * k), rng.vec(n * k));
                let q = QuantMatrix::quantize(ty, n, k, &w).unwrap();
                let deq = q.dequantize();
                let want = reference::matmul_nt(&x, m, k, &deq, n);
                let mut got = vec![f32::NAN; m * n];
                matmul_nt_quant(&x, m, k, std::slice::from_ref(&q), &mut got);
                let xmax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for i in 0..m {
                    for j in 0..n {
                        let scale: f32 = deq[j * k..(j + 1) * k].iter().map(|v| v.abs()).sum::<f32>() * xmax;
                        let (g, wv) = (got[i * n + j], want[i * n + j]);
                        assert!((g - wv).abs() <= 0.01 * scale, "{ty} k={k} m={m} [{i},{j}]: {g} vs {wv}");
                    }
                }
            }
        }
    }
}

/// A fused projection (parts of different formats) equals its parts run one by one, side by
/// side; and a row's outputs do not depend on the rows batched with it.
#[test]
fn quantized_parts_fuse_and_rows_are_batch_invariant() {
    use shardline_ops::{matmul_nt_quant, QuantMatrix, QuantType};
    let mut rng = Rng(11);
    let k = 512;
    let parts: Vec<QuantMatrix> =
        [(QuantType::Q4K, 20), (QuantType::Q6K, 9), (QuantType::Q4_1, 13), (QuantType::Q4_1, 32)]
            .iter()
            .map(|&(ty, rows)| QuantMatrix::quantize(ty, rows, k, &rng.vec(rows * k)).unwrap())
            .collect();
    let n: usize = parts.iter().map(QuantMatrix::rows).sum();
    let m = 6;
    let x = rng.vec(m * k);
    let mut fused = vec![0.0; m * n];
    matmul_nt_quant(&x, m, k, &parts, &mut fused);
    let mut col = 0;
    for p in &parts {
        let mut alone = vec![0.0; m * p.rows()];
        matmul_nt_quant(&x, m, k, std::slice::from_ref(p), &mut alone);
        for i in 0..m {
            assert_eq!(&fused[i * n + col..i * n + col + p.rows()], &alone[i * p.rows()..(i + 1) * p.rows()]);
        }
        col += p.rows();
    }
    let mut first = vec![0.0; n];
    matmul_nt_quant(&x[..k], 1, k, &parts, &mut first);
    assert_eq!(first, fused[..n], "row 0 alone equals row 0 of the batch of {m}");
}

#[test]
fn block_formats_reject_rows_that_are_not_whole_blocks() {
    use shardline_ops::{QuantMatrix, QuantType};
    let err = QuantMatrix::quantize(QuantType::Q4K, 2, 576, &vec![0.0; 2 * 576]).unwrap_err();
    assert!(err.to_string().contains("not whole Q4_K blocks of 256"), "{err}");
    assert!(QuantMatrix::from_bytes(QuantType::Q8_0, 2, 64, &[0u8; 10]).is_err());
}

/// What tensor parallelism relies on: a row-parallel layer split over ranks at block
/// boundaries (unevenly too), each rank's exact f64 partial sums added in f64 and rounded once,
/// gives the single process's rounded exact sum bit for bit (Q8_0 and Q4_1, whose block terms
/// are exact).
#[test]
fn split_k_partial_sums_in_f64_round_to_the_whole_sum() {
    use shardline_ops::{matmul_nt_quant_f64, QuantMatrix, QuantType};
    let mut rng = Rng(13);
    let (m, k) = (3, 576);
    // 32 rows run the interleaved kernels, 29 the row-at-a-time ones.
    for (ty, n) in [(QuantType::Q8_0, 29), (QuantType::Q8_0, 32), (QuantType::Q4_1, 29), (QuantType::Q4_1, 32)] {
        let (x, w) = (rng.vec(m * k), rng.vec(n * k));
        let mut whole = vec![0.0f64; m * n];
        matmul_nt_quant_f64(&x, m, k, &[QuantMatrix::quantize(ty, n, k, &w).unwrap()], &mut whole);
        let whole: Vec<f32> = whole.iter().map(|&v| v as f32).collect();
        for splits in [vec![0, 320, 576], vec![0, 192, 320, 448, 576]] {
            let mut sum = vec![0.0f64; m * n];
            for r in splits.windows(2) {
                let kr = r[1] - r[0];
                let cols = |v: &[f32], rows: usize| -> Vec<f32> {
                    (0..rows).flat_map(|i| v[i * k + r[0]..i * k + r[1]].to_vec()).collect()
                };
                let part = QuantMatrix::quantize(ty, n, kr, &cols(&w, n)).unwrap();
                let mut partial = vec![0.0f64; m * n];
                matmul_nt_quant_f64(&cols(&x, m), m, kr, &[part], &mut partial);
                sum.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
            }
            let rounded: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
            assert_eq!(rounded, whole, "{ty} split at {splits:?}");
        }
    }
}
