//! Kernel throughput at SmolLM2-135M shapes: `cargo bench -p shardline-ops`.
//! Decode matmuls report GB/s of weights streamed (they are memory-bound); prefill reports GFLOP/s.
//! "hot" runs reuse one weight matrix (it may sit in cache); "cold" cycles through 30 copies, one
//! per layer, so the weights come from DRAM as in a real decode step.

use std::time::Instant;

use shardline_ops::{
    matmul_nt, matmul_nt_quant, paged_attention, rms_norm, rope_rotate_half, silu_mul, KvLayout, QuantMatrix,
    QuantType, SeqSpan,
};

/// Seconds on the clock the bench reads: wall time, or with `SHARDLINE_BENCH_CLOCK=cpu` this
/// process's CPU time, which a busy machine disturbs far less (run it with
/// `RAYON_NUM_THREADS=1` to get per-core kernel speed).
fn now() -> f64 {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *CPU.get_or_init(|| std::env::var("SHARDLINE_BENCH_CLOCK").is_ok_and(|v| v == "cpu")) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid out-pointer; the clock id is a constant the kernel knows.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

/// Best of five ~0.2 s rounds (on the clock of [`now`]), seconds per call.
fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = now();
        let mut reps = 0;
        while now() - t < 0.2 {
            f();
            reps += 1;
        }
        best = best.min((now() - t) / reps as f64);
    }
    best
}

fn report(what: &str, m: usize, n: usize, k: usize, s: f64) {
    let gbs = (n * k * 4) as f64 / s / 1e9;
    let gflops = (2 * m * n * k) as f64 / s / 1e9;
    println!("matmul {what:13} m={m:3} n={n:5} k={k:4}: {:8.1} us  {gbs:6.1} GB/s  {gflops:6.1} GFLOP/s", s * 1e6);
}

/// `cargo bench -p shardline-ops -- lm_head` runs only benchmarks whose label contains it.
fn wanted(label: &str) -> bool {
    // cargo passes `--bench` to harness-less benches; flags are not filters.
    std::env::args().skip(1).filter(|a| !a.starts_with("--")).all(|f| label.contains(&f))
}

fn bench_matmul(m: usize, n: usize, k: usize, label: &str, copies: usize) {
    let what = format!("{label}{}", if copies > 1 { " cold" } else { "" });
    if !wanted(&what) {
        return;
    }
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let ws: Vec<Vec<f32>> = (0..copies).map(|c| vec![0.01 * (c + 1) as f32; n * k]).collect();
    let mut out = vec![0.0f32; m * n];
    let mut next = 0;
    let s = time(|| {
        matmul_nt(&x, m, k, &ws[next], n, &mut out);
        next = (next + 1) % copies;
    });
    report(&what, m, n, k, s);
}

/// A block-format matmul; GB/s counts the quantized weight bytes (what decode streams).
fn bench_quant(ty: QuantType, m: usize, n: usize, k: usize, label: &str, copies: usize) {
    let what = format!("{label} {ty}{}", if copies > 1 { " cold" } else { "" });
    if !wanted(&what) {
        return;
    }
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01).collect();
    let q = QuantMatrix::quantize(ty, n, k, &w).unwrap();
    let ws: Vec<[QuantMatrix; 1]> = (0..copies).map(|_| [q.clone()]).collect();
    let mut out = vec![0.0f32; m * n];
    let mut next = 0;
    let s = time(|| {
        matmul_nt_quant(&x, m, k, &ws[next], &mut out);
        next = (next + 1) % copies;
    });
    let gbs = q.bytes().len() as f64 / s / 1e9;
    let gflops = (2 * m * n * k) as f64 / s / 1e9;
    println!("qmatmul {what:20} m={m:3} n={n:5} k={k:4}: {:8.1} us  {gbs:6.1} GB/s  {gflops:6.1} GFLOP/s", s * 1e6);
}

/// The cheap kernels at prefill (512 rows) and batched-decode (8 rows) sizes; GB/s counts
/// bytes read and written once.
fn bench_rowwise(t: usize) {
    let (hidden, inter, heads, hd) = (576, 1536, 9, 64);
    let x: Vec<f32> = (0..t * hidden).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
    let weight = vec![1.0f32; hidden];
    let mut out = vec![0.0f32; t * hidden];
    let s = time(|| rms_norm(&x, &weight, 1e-5, &mut out));
    println!("rms_norm  T={t:3} x {hidden}: {:8.1} us  {:6.1} GB/s", s * 1e6, (2 * t * hidden * 4) as f64 / s / 1e9);
    let gu: Vec<f32> = (0..t * 2 * inter).map(|i| (i % 13) as f32 * 0.3 - 2.0).collect();
    let mut act = vec![0.0f32; t * inter];
    let s = time(|| silu_mul(&gu, inter, &mut act));
    println!("silu_mul  T={t:3} x {inter}: {:8.1} us  {:6.1} GB/s", s * 1e6, (3 * t * inter * 4) as f64 / s / 1e9);
    let mut qk = vec![0.5f32; t * heads * hd];
    let (cos, sin) = (vec![0.8f32; t * hd / 2], vec![0.6f32; t * hd / 2]);
    let s = time(|| rope_rotate_half(&mut qk, heads, hd, &cos, &sin));
    println!(
        "rope      T={t:3} x {heads}x{hd}: {:8.1} us  {:6.1} GB/s",
        s * 1e6,
        (2 * t * heads * hd * 4) as f64 / s / 1e9
    );
}

/// The machine's streaming bandwidth, to read the matmuls' GB/s against: a 256 MiB copy split
/// over the threads (bytes read; as many are written).
fn bench_memcpy() {
    let n = 64 << 20; // f32s: 256 MiB each way
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let chunk = n / rayon::current_num_threads().max(1);
    let s = time(|| {
        use rayon::prelude::*;
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    println!("memcpy 256 MiB: {:8.1} us  {:6.1} GB/s read (+ as much written)", s * 1e6, (n * 4) as f64 / s / 1e9);
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    if wanted("memcpy") {
        bench_memcpy();
    }
    for &m in &[1, 8] {
        bench_matmul(m, 1536, 576, "mlp_up", 1);
        bench_matmul(m, 1536, 576, "mlp_up", 30);
        bench_matmul(m, 576, 1536, "mlp_down", 1);
        bench_matmul(m, 576, 1536, "mlp_down", 30);
        bench_matmul(m, 49152, 576, "lm_head", 1);
    }
    // Where the streaming kernel hands over to gemm (STREAM_MAX_M).
    for &m in &[2, 4, 16, 32, 48, 64] {
        bench_matmul(m, 1536, 576, "mlp_up", 1);
    }
    bench_matmul(512, 1536, 576, "mlp_up", 1);
    bench_matmul(512, 576, 1536, "mlp_down", 1);
    bench_matmul(512, 49152, 576, "lm_head", 1);
    // The default model's formats (Q4_1 layers, Q8_0 embeddings), then K-quants at k = 1536.
    for m in [1, 8, 32, 512] {
        for ty in [QuantType::Q4_1, QuantType::Q8_0, QuantType::BF16] {
            bench_quant(ty, m, 3072, 576, "gate_up", if m == 1 { 30 } else { 1 });
        }
        bench_quant(QuantType::Q8_0, m, 49152, 576, "lm_head", 1);
        for ty in [QuantType::Q4_0, QuantType::Q4K, QuantType::Q5K, QuantType::Q6K] {
            bench_quant(ty, m, 576, 1536, "down", if m == 1 { 30 } else { 1 });
        }
    }

    if wanted("rowwise") {
        bench_rowwise(512);
        bench_rowwise(8);
    }
    if !wanted("attention") {
        return;
    }
    let layout = KvLayout { block_size: 16, num_kv_heads: 3, head_dim: 64 };
    let ctx = 512;
    let blocks_per_seq = ctx / layout.block_size;
    // Interleaved block tables, as an allocator serving several sequences would hand out.
    let tables: Vec<Vec<u32>> = (0..8).map(|s| (0..blocks_per_seq as u32).map(|b| b * 8 + s).collect()).collect();
    let cache: Vec<f32> = (0..8 * ctx * layout.token_width()).map(|i| (i % 13) as f32 * 0.01).collect();
    let map: Vec<usize> = (0..9).map(|h| h / 3).collect();
    let decode: Vec<SeqSpan> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| SeqSpan { q_start: i, q_len: 1, context_len: ctx, block_table: t })
        .collect();
    let q = vec![0.1f32; 8 * 9 * 64];
    let mut out = vec![0.0f32; q.len()];
    let s = time(|| paged_attention(&q, 9, &map, &decode, &layout, &cache, &cache, 0.125, &mut out));
    // K and V of 3 KV heads × 512 positions × 8 sequences are read once per step.
    let kv_bytes = (2 * 8 * ctx * layout.token_width() * 4) as f64;
    println!("attention decode 8 seqs x ctx {ctx}: {:8.1} us  {:6.1} GB/s of KV", s * 1e6, kv_bytes / s / 1e9);
    let prefill = [SeqSpan { q_start: 0, q_len: ctx, context_len: ctx, block_table: &tables[0] }];
    let q = vec![0.1f32; ctx * 9 * 64];
    let mut out = vec![0.0f32; q.len()];
    let s = time(|| paged_attention(&q, 9, &map, &prefill, &layout, &cache, &cache, 0.125, &mut out));
    // Causal: QKᵀ and PV each cost about T²/2 · head_dim multiply-adds per head.
    let flops = (2 * 2 * 9 * 64 * ctx * ctx / 2) as f64;
    println!("attention prefill {ctx} rows: {:8.1} us  {:6.1} GFLOP/s", s * 1e6, flops / s / 1e9);
}
