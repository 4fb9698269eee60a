//! `shardline plan --calibrate`: measures this machine with the kernels, communicator and
//! engine Shardline runs, and writes the `cpu` hardware profile from the results.
//!
//! - the MLP matmuls of `--model`'s shapes in each weight format: at 256 rows (compute-bound:
//!   FLOP/s per compute type) and at 1 row over 128 MiB of copies (memory-bound: the rate a
//!   decode step streams that format, which block decoding can hold below the bus's);
//! - attention over a 1,024-token paged context (its FLOP/s);
//! - all-reduce between two ranks over loopback TCP: latency from 8-byte messages, bandwidth
//!   from 8 MiB ones (the communicator sends every rank its whole buffer: `direct`);
//! - a tiny model's decode steps at 1 and 9 layers: the step's and each layer's fixed cost.
//!
//! Each figure is the best of several timed rounds: the planner predicts a quiet machine.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::DType;
use shardline_comm::{rendezvous, Group, GroupSecret, RendezvousConfig};
use shardline_engine::{Engine, EngineConfig};
use shardline_ops::{matmul_nt, matmul_nt_quant, paged_attention, KvLayout, QuantMatrix, QuantType, SeqSpan};
use shardline_plan::hardware::{AllReduce, Efficiency, Hardware, Link, Overhead};
use shardline_sampling::SamplingParams;
use shardline_worker::LocalExecutor;

/// Seconds per call of `f`: the best of 5 rounds of at least `round` each.
fn time(round: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut reps = 0u32;
        while start.elapsed() < round {
            f();
            reps += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / f64::from(reps));
    }
    best
}

const ROUND: Duration = Duration::from_millis(200);

fn test_values(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 31 + salt * 7) % 97) as f32 * 0.01 - 0.48).collect()
}

fn quantized(ty: QuantType, n: usize, k: usize, w: &[f32]) -> anyhow::Result<QuantMatrix> {
    let m = match ty {
        QuantType::BF16 => {
            let bytes: Vec<u8> = w.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
            QuantMatrix::from_bytes(ty, n, k, &bytes)
        }
        _ => QuantMatrix::quantize(ty, n, k, w),
    };
    m.map_err(|e| anyhow::anyhow!("{e}"))
}

/// One weight matrix: f32, or blocks of a format.
enum Matrix {
    F32 { n: usize, k: usize, w: Vec<f32> },
    Blocks(QuantMatrix),
}

impl Matrix {
    fn new(ty: Option<QuantType>, n: usize, k: usize, salt: usize) -> anyhow::Result<Matrix> {
        let w = test_values(n * k, salt);
        Ok(match ty {
            None => Matrix::F32 { n, k, w },
            Some(ty) => Matrix::Blocks(quantized(ty, n, k, &w)?),
        })
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Matrix::F32 { n, k, .. } => (*n, *k),
            Matrix::Blocks(q) => (q.rows(), q.cols()),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Matrix::F32 { w, .. } => w.len() * 4,
            Matrix::Blocks(q) => q.bytes().len(),
        }
    }

    fn run(&self, x: &[f32], m: usize, out: &mut [f32]) {
        match self {
            Matrix::F32 { n, k, w } => matmul_nt(x, m, *k, w, *n, out),
            Matrix::Blocks(q) => matmul_nt_quant(x, m, q.cols(), std::slice::from_ref(q), out),
        }
    }
}

/// Copies of a model's MLP pair (gate|up: 2·inter × hidden, down: hidden × inter).
struct MlpCopies(Vec<[Matrix; 2]>);

impl MlpCopies {
    fn new(ty: Option<QuantType>, hidden: usize, inter: usize, copies: usize) -> anyhow::Result<MlpCopies> {
        let pair = |c: usize| -> anyhow::Result<[Matrix; 2]> {
            Ok([Matrix::new(ty, 2 * inter, hidden, 2 * c)?, Matrix::new(ty, hidden, inter, 2 * c + 1)?])
        };
        Ok(MlpCopies((0..copies).map(pair).collect::<anyhow::Result<_>>()?))
    }

    fn bytes_per_copy(&self) -> usize {
        self.0[0].iter().map(Matrix::bytes).sum()
    }

    fn flops(&self, m: usize) -> f64 {
        self.0[0].iter().map(|w| (2 * m * w.shape().0 * w.shape().1) as f64).sum()
    }

    /// Seconds for x[m, ·] through one pair, cycling through the copies.
    fn seconds(&self, m: usize) -> f64 {
        let widest = self.0[0].iter().map(|w| w.shape().0.max(w.shape().1)).max().unwrap_or(0);
        let x = test_values(m * widest, 1);
        let mut out = vec![0.0f32; m * widest];
        let mut next = 0;
        time(ROUND, || {
            for w in &self.0[next] {
                let (n, k) = w.shape();
                w.run(&x[..m * k], m, &mut out[..m * n]);
            }
            next = (next + 1) % self.0.len();
        })
    }
}

/// FLOP/s of 64 query rows attending over 1,024 cached tokens, 8 heads of 64.
fn attention_flops() -> f64 {
    let (heads, hd, ctx, rows, block) = (8, 64, 1024, 64, 16);
    let layout = KvLayout { block_size: block, num_kv_heads: heads, head_dim: hd };
    let cache = test_values(ctx * heads * hd, 5);
    let table: Vec<u32> = (0..(ctx / block) as u32).collect();
    let q = test_values(rows * heads * hd, 6);
    let mut out = vec![0.0f32; q.len()];
    let spans = [SeqSpan { q_start: 0, q_len: rows, context_len: ctx, block_table: &table }];
    let kv_of_q: Vec<usize> = (0..heads).collect();
    let s = time(ROUND, || paged_attention(&q, heads, &kv_of_q, &spans, &layout, &cache, &cache, 0.125, &mut out));
    // Rows attend causally to the context before them and themselves: ctx − rows/2 on average.
    (4 * rows * heads * hd) as f64 * (ctx - rows / 2) as f64 / s
}

/// (latency µs, GB/s) of an f64 all-reduce between two ranks on loopback.
fn all_reduce_link() -> anyhow::Result<(f64, f64)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let secret = GroupSecret::from_text("shardline-plan-calibration")?;
    let config = |rank: usize| RendezvousConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size: 2,
        timeout: Duration::from_secs(30),
        group_blob: Vec::new(),
        secret: secret.clone(),
    };
    let big = 1 << 20; // 8 MiB of f64
    let rounds = |comm: &shardline_comm::Comm, len: usize, reps: usize| -> anyhow::Result<f64> {
        let group = Group::new(vec![0, 1]);
        let mut data = vec![1.0f64; len];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..reps {
                group.all_reduce_sum_f64(comm, &mut data)?;
            }
            best = best.min(start.elapsed().as_secs_f64() / reps as f64);
        }
        Ok(best)
    };
    std::thread::scope(|s| {
        let peer = s.spawn(|| -> anyhow::Result<()> {
            let comm = rendezvous(&config(1))?;
            rounds(&comm, 1, 200)?;
            rounds(&comm, big, 4)?;
            Ok(())
        });
        let comm = rendezvous(&config(0))?;
        let small = rounds(&comm, 1, 200)?;
        let large = rounds(&comm, big, 4)?;
        peer.join().map_err(|_| anyhow::anyhow!("the calibration peer panicked"))??;
        let bandwidth = (big * 8) as f64 / (large - small).max(1e-9);
        Ok((small * 1e6, bandwidth / 1e9))
    })
}

/// Seconds per decode step of a tiny random model with `layers` layers: all fixed cost.
fn step_seconds(layers: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", 300, true);
    cfg["num_hidden_layers"] = serde_json::json!(layers);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 1)?;
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300))?;
    let model = shardline_model::ModelSpec::cpu(dir.path().to_str().context("temp dir path")?, DType::F32).load()?;
    let tokenizer = Arc::new(shardline_tokenizer::Tokenizer::from_path(dir.path())?);
    let exec = LocalExecutor::new(model, 64, 16)?;
    let mut engine = Engine::new(Box::new(exec), tokenizer, &[], EngineConfig::default())?;
    let tokens = 200;
    let params = SamplingParams { max_tokens: tokens, ignore_eos: true, ..SamplingParams::greedy() };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let id = engine.add_request(vec![1, 2, 3, 4], params.clone())?;
        let start = Instant::now();
        engine.run_to_completion(&[id], |_| {})?;
        best = best.min(start.elapsed().as_secs_f64() / tokens as f64);
    }
    Ok(best)
}

/// `x` to 3 significant digits: measurements are not more precise, and the file stays legible.
fn rounded(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn total_memory_gib() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib / (1024.0 * 1024.0))
}

pub fn calibrate(path: &Path, model: &str) -> anyhow::Result<()> {
    let machine = shardline_experiment::machine::machine_line();
    eprintln!("calibrating on {machine} (about a minute)…");
    let model = shardline_plan::PlanModel::open(model)?;
    let cfg = &model.cfg;
    let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let (q_dim, kv_dim) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let params = cfg.num_layers * hidden * (2 * q_dim + 2 * kv_dim + 3 * inter) + cfg.vocab_size * hidden;
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    type Table = std::collections::BTreeMap<String, f64>;
    let (mut tflops, mut thread_tflops) = (Table::new(), Table::new());
    let (mut stream_gbs, mut thread_stream_gbs) = (Table::new(), Table::new());
    let (mut bandwidth, mut overlaps): (f64, Vec<f64>) = (0.0, Vec::new());
    for (kind, ty, bytes_per_weight) in [
        ("f32", None, 4.0),
        ("bf16", Some(QuantType::BF16), 2.0),
        ("int8", Some(QuantType::Q8_0), 34.0 / 32.0),
        ("int4", Some(QuantType::Q4_1), 20.0 / 32.0),
    ] {
        // Compute: 256 rows (a prefill chunk) through matrices that stay in cache.
        let hot = MlpCopies::new(ty, hidden, inter, 1)?;
        let flops = hot.flops(256) / hot.seconds(256);
        let thread_flops = hot.flops(256) / one_thread.install(|| hot.seconds(256));
        // Streaming: one row through as many bytes as the model's weights in this format, as
        // a decode step reads them (a model that fits in cache streams from it).
        let model_bytes = params as f64 * bytes_per_weight;
        let copies = (model_bytes / hot.bytes_per_copy() as f64).ceil().clamp(2.0, 512.0) as usize;
        let cold = MlpCopies::new(ty, hidden, inter, copies)?;
        let t1 = cold.seconds(1);
        let gbs = cold.bytes_per_copy() as f64 / t1 / 1e9;
        let thread_gbs = cold.bytes_per_copy() as f64 / one_thread.install(|| cold.seconds(1)) / 1e9;
        // Overlap of streaming and computing, from 32 rows: t = max(a, b) + (1 − o)·min(a, b).
        let (a, b) = (t1, cold.flops(32) / flops);
        overlaps.push((1.0 - (cold.seconds(32) - a.max(b)) / a.min(b)).clamp(0.0, 1.0));
        eprintln!(
            "  matmul {kind:4} (MLP {hidden}·{inter}): {:.1} GFLOP/s at 256 rows ({:.1} on one thread); 1 row streams {gbs:.1} GB/s ({thread_gbs:.1})",
            flops / 1e9,
            thread_flops / 1e9
        );
        tflops.insert(kind.to_string(), rounded(flops / 1e12));
        thread_tflops.insert(kind.to_string(), rounded(thread_flops / 1e12));
        stream_gbs.insert(kind.to_string(), rounded(gbs));
        thread_stream_gbs.insert(kind.to_string(), rounded(thread_gbs));
        bandwidth = bandwidth.max(gbs);
    }
    let overlap = overlaps.iter().sum::<f64>() / overlaps.len() as f64;
    eprintln!("  streaming and computing overlap: {overlap:.2}");
    let attention = attention_flops();
    thread_tflops.insert("attention".to_string(), rounded(one_thread.install(attention_flops) / 1e12));
    eprintln!("  attention: {:.1} GFLOP/s", attention / 1e9);
    tflops.insert("attention".to_string(), rounded(attention / 1e12));
    let (latency_us, link_gbs) = all_reduce_link()?;
    eprintln!("  all-reduce over loopback: {latency_us:.1} µs + bytes / {link_gbs:.2} GB/s");
    let (one, nine) = (step_seconds(1)?, step_seconds(9)?);
    let layer_us = ((nine - one) / 8.0).max(0.0) * 1e6;
    let step_us = (one * 1e6 - layer_us).max(0.0);
    eprintln!("  decode step overhead: {step_us:.0} µs + {layer_us:.1} µs per layer");
    let hw = Hardware {
        name: "cpu".into(),
        description: format!("{machine} (calibrated {})", shardline_experiment::machine::utc_stamp_now()),
        sources: vec!["shardline plan --calibrate".into()],
        memory_gib: rounded(total_memory_gib()?),
        memory_utilization: 0.9,
        reserved_gib: 0.3,
        memory_bandwidth_gbs: rounded(bandwidth),
        stream_gbs,
        thread_stream_gbs,
        thread_tflops,
        cores: Some(rayon::current_num_threads()),
        tflops,
        efficiency: Efficiency { compute: 1.0, memory: 1.0, overlap: rounded(overlap) },
        overhead: Overhead { step_us: rounded(step_us), layer_us: rounded(layer_us) },
        devices_per_node: 64,
        shares_host: true,
        all_reduce: AllReduce::Direct,
        intra_node: Link {
            kind: "loopback TCP".into(),
            bandwidth_gbs: rounded(link_gbs),
            latency_us: rounded(latency_us),
        },
        inter_node: Link { kind: "TCP between hosts (assumed 10 Gb/s)".into(), bandwidth_gbs: 1.2, latency_us: 60.0 },
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!("# Written by `shardline plan --calibrate` on {machine}.\n{}", hw.to_toml());
    Hardware::parse(&text, path)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
