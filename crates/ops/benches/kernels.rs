//! Kernel throughput at SmolLM2-135M shapes: `cargo bench -p shardline-ops`.
//! Decode matmuls report GB/s of weights streamed (they are memory-bound); prefill reports GFLOP/s.

use std::time::Instant;

use shardline_ops::{matmul_nt, paged_attention, KvLayout, SeqSpan};

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut reps = 0;
        while t.elapsed().as_secs_f64() < 0.2 {
            f();
            reps += 1;
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    for &(m, n, k, label) in &[
        (1, 1728, 576, "qkv"),
        (1, 3072, 576, "gate_up"),
        (1, 576, 1536, "down"),
        (1, 49152, 576, "lm_head"),
        (8, 3072, 576, "gate_up"),
        (8, 49152, 576, "lm_head"),
        (512, 3072, 576, "gate_up"),
        (512, 576, 1536, "down"),
    ] {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let mut out = vec![0.0f32; m * n];
        let s = time(|| matmul_nt(&x, m, k, &w, n, &mut out));
        let gbs = (n * k * 4) as f64 / s / 1e9;
        let gflops = (2 * m * n * k) as f64 / s / 1e9;
        println!("matmul {label:8} m={m:3} n={n:5} k={k:4}: {:8.1} us  {gbs:6.1} GB/s  {gflops:6.1} GFLOP/s", s * 1e6);
    }
    let layout = KvLayout { block_size: 16, num_kv_heads: 3, head_dim: 64 };
    let ctx = 512;
    let blocks_per_seq = ctx / 16;
    let tables: Vec<Vec<u32>> = (0..8).map(|s| (0..blocks_per_seq as u32).map(|b| b + s * blocks_per_seq as u32).collect()).collect();
    let cache = vec![0.01f32; 8 * ctx * layout.token_width()];
    let map: Vec<usize> = (0..9).map(|h| h / 3).collect();
    let decode: Vec<SeqSpan> =
        tables.iter().enumerate().map(|(i, t)| SeqSpan { q_start: i, q_len: 1, context_len: ctx, block_table: t }).collect();
    let q = vec![0.1f32; 8 * 9 * 64];
    let mut out = vec![0.0f32; q.len()];
    let s = time(|| paged_attention(&q, 9, &map, &decode, &layout, &cache, &cache, 0.125, &mut out));
    println!("attention decode 8 seqs x ctx {ctx}: {:8.1} us", s * 1e6);
    let prefill = [SeqSpan { q_start: 0, q_len: ctx, context_len: ctx, block_table: &tables[0] }];
    let q = vec![0.1f32; ctx * 9 * 64];
    let mut out = vec![0.0f32; q.len()];
    let s = time(|| paged_attention(&q, 9, &map, &prefill, &layout, &cache, &cache, 0.125, &mut out));
    println!("attention prefill {ctx} rows: {:8.1} us", s * 1e6);
}
