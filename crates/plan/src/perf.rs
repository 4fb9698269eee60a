//! Time: a roofline per op, alpha–beta collectives, pipeline microbatches, and continuous
//! batching with chunked prefill in steady state.
//!
//! - **A stage's forward** on its busiest rank: the layers' matmuls take
//!   max(weight bytes / bandwidth, 2 · tokens · weights / FLOP/s); attention takes
//!   max(KV bytes read / bandwidth, 4 · context · heads · head_dim / FLOP/s) per token and
//!   layer; the LM head runs for sampled rows only; TP adds two all-reduces of the hidden
//!   rows per layer (and the vocab-parallel embedding's and logits' collectives), each the
//!   cheaper of ring and tree for its link; each layer adds a fixed overhead.
//! - **A round** (every running request advances one step): the engine keeps `pp` steps in
//!   flight, each with 1/`pp` of the running requests (`Scheduler::schedule`). A microbatch
//!   crosses every stage (plus a send/recv per boundary); with fewer microbatches than stages
//!   the others idle: the pipeline bubble.
//! - **Steady state** at R running requests of I prompt and O output tokens: over O rounds, R
//!   prompts' R · I tokens are prefilled too, in chunks that fill each step's token budget
//!   beside the decodes (one request's prompt at a time when requests are few). Output
//!   tok/s = R · O / (time of those rounds); TTFT = the rounds a prompt takes; TPOT = the rest
//!   of that time over O − 1 tokens. When more clients than R wait (the KV cache or
//!   `max_num_seqs` is full), TTFT adds the closed loop's queueing: each client waits C / R
//!   lifetimes per request (Little's law).

use crate::hardware::{AllReduce, Hardware, Link};
use crate::memory::{kv_bytes_per_token, EngineLimits};
use crate::shape::{GroupShape, RankShape};

/// What the group runs on and how.
pub struct Machine<'a> {
    pub hw: &'a Hardware,
    pub hidden: usize,
    pub head_dim: usize,
    pub activation_bytes: u64,
    /// Bytes per element of the row-parallel all-reduces.
    pub reduce_bytes: u64,
    pub kv_bytes: u64,
    /// Compute types of the weights' matmuls, best first.
    pub matmul_compute: &'static [&'static str],
    /// Ranks sharing a host's cores and bandwidth (CPU ranks), else 1.
    pub ranks_per_host: usize,
    /// The TP group's link.
    pub tp_link: &'a Link,
    /// The link across each stage boundary (pp − 1 of them).
    pub pp_links: Vec<&'a Link>,
    pub limits: EngineLimits,
}

/// Tokens of one microbatch at one stage.
#[derive(Clone, Copy, Debug, Default)]
struct Tokens {
    decode: f64,
    /// Mean context a decode row attends to.
    decode_context: f64,
    prefill: f64,
    /// Mean context a prefill row attends to.
    prefill_context: f64,
    /// Rows whose logits are computed.
    sampled: f64,
}

impl Machine<'_> {
    /// Bytes/s one rank streams `kinds` weights at while `active` ranks of its host work: a
    /// host's ranks share its bus, and each has only its share of the threads.
    fn stream(&self, kinds: &[&str], active: usize) -> f64 {
        let threads = self.hw.cores.map(|c| (c / self.ranks_per_host).max(1));
        let share = self.hw.stream_bandwidth(kinds, None) / active.clamp(1, self.ranks_per_host) as f64;
        share.min(self.hw.stream_bandwidth(kinds, threads))
    }

    /// FLOP/s of one rank while `active` ranks of its host work: each has its share of the
    /// threads; with more ranks than cores, the ones at work share the cores.
    fn flops(&self, kinds: &[&str], active: usize) -> f64 {
        let Some(cores) = self.hw.cores else { return self.hw.flops(kinds) / self.ranks_per_host as f64 };
        let own = self.hw.flops_with_threads(kinds, (cores / self.ranks_per_host).max(1));
        match self.ranks_per_host > cores {
            true => own * (cores as f64 / active.max(1) as f64).min(1.0),
            false => own,
        }
    }

    /// All-reduce of `bytes` over `n` ranks. NCCL: the cheaper of ring (2(n−1) latency hops,
    /// 2(n−1)/n of the data each way) and tree (2·log₂n hops, the data twice); direct: one
    /// latency, and each rank sends its buffer to the n − 1 others.
    fn all_reduce(&self, bytes: f64, n: usize) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let (l, n_f) = (self.tp_link, n as f64);
        let lat = l.latency_us * 1e-6;
        let bw = l.bandwidth_gbs * 1e9;
        if self.hw.all_reduce == AllReduce::Direct {
            return lat + (n_f - 1.0) * bytes / bw;
        }
        let ring = 2.0 * (n_f - 1.0) * lat + 2.0 * (n_f - 1.0) / n_f * bytes / bw;
        let tree = 2.0 * n_f.log2().ceil() * lat + 2.0 * bytes / bw;
        ring.min(tree)
    }

    fn all_gather(&self, bytes: f64, n: usize) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let (l, n_f) = (self.tp_link, n as f64);
        (n_f - 1.0) * l.latency_us * 1e-6 + (n_f - 1.0) / n_f * bytes / (l.bandwidth_gbs * 1e9)
    }

    /// One microbatch through one stage, on the stage's busiest rank, while `active` ranks of
    /// its host work.
    fn stage_seconds(&self, rank: &RankShape, tp: usize, first: bool, t: Tokens, active: usize) -> f64 {
        let hw = self.hw;
        let (stream, lin) = (self.stream(self.matmul_compute, active), self.flops(self.matmul_compute, active));
        let act = if self.activation_bytes >= 4 { ["attention", "f32"] } else { ["attention", "bf16"] };
        let (kv_stream, act) = (self.stream(&act, active), self.flops(&act, active));
        let rows = t.decode + t.prefill;
        let layers = rank.layers as f64;
        let mut s = hw.combine(rank.bytes.layers as f64 / stream, 2.0 * rows * rank.layer_params / lin);
        if rank.bytes.computes_logits {
            let head = (rank.bytes.streamed() - rank.bytes.layers) as f64;
            s += hw.combine(head / stream, 2.0 * t.sampled * rank.head_params / lin);
        }
        // Attention: q · K and p · V over the context, per layer.
        let kv_layer = kv_bytes_per_token(rank, self.head_dim, self.kv_bytes) as f64 / layers.max(1.0);
        let per_ctx_flops = 4.0 * (rank.q_heads * self.head_dim) as f64;
        let read = t.decode * t.decode_context * kv_layer + (t.prefill_context + t.prefill) * kv_layer;
        let flops = per_ctx_flops * (t.decode * t.decode_context + t.prefill * t.prefill_context);
        s += layers * hw.combine(read / kv_stream, flops / act);
        let rows_of = |bytes: u64| rows * (self.hidden as f64) * bytes as f64;
        s += 2.0 * layers * self.all_reduce(rows_of(self.reduce_bytes), tp);
        if first {
            s += self.all_reduce(rows_of(self.activation_bytes), tp); // vocab-parallel embedding
        }
        if rank.bytes.computes_logits {
            s += self.all_gather(t.sampled * (rank.vocab * tp) as f64 * 4.0, tp);
        }
        s + layers * self.hw.overhead.layer_us * 1e-6
    }

    /// One round: `running` requests advance one step, `decode` and `prefill` tokens among
    /// them, split into microbatches. Returns (seconds, fraction of stage time idle).
    fn round(&self, shape: &GroupShape, running: f64, mut t: Tokens) -> (f64, f64) {
        let pp = shape.pp;
        let m = (pp as f64).min(running.ceil()).max(1.0);
        t.decode /= m;
        t.prefill /= m;
        t.sampled /= m;
        // Ranks at work at once on a host: every TP rank of the stages holding a microbatch,
        // in every replica.
        let replicas = (self.ranks_per_host / (shape.tp * pp)).max(1);
        let active = replicas * shape.tp * m as usize;
        let stages: Vec<f64> =
            (0..pp).map(|s| self.stage_seconds(shape.slowest_of_stage(s), shape.tp, s == 0, t, active)).collect();
        let hop_bytes = (t.decode + t.prefill) * (self.hidden as f64) * self.activation_bytes as f64;
        let hops: f64 = self.pp_links.iter().map(|l| l.seconds(hop_bytes)).sum();
        let through = stages.iter().sum::<f64>() + hops;
        let busiest = stages.iter().copied().fold(0.0, f64::max);
        // Rank 0 plans each microbatch in turn: a microbatch waits for its own plan, and a
        // round for all m of them.
        let step = self.hw.overhead.step_us * 1e-6;
        let round = (through + step).max(m * busiest).max(m * step);
        let busy = m * stages.iter().sum::<f64>() / pp as f64;
        (round, (1.0 - busy / round).clamp(0.0, 1.0))
    }
}

/// A prediction for one replica at one load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Requests running at once (≤ clients, `max_num_seqs` and what the KV cache holds).
    pub running: usize,
    pub ttft_s: f64,
    pub tpot_s: f64,
    pub output_tok_s: f64,
    /// Mean fraction of time a stage idles (pipeline bubbles and overheads).
    pub idle: f64,
}

/// Steady state of one replica with `clients` closed-loop clients (see the module header).
pub fn predict(
    machine: &Machine,
    shape: &GroupShape,
    kv_tokens: u64,
    clients: usize,
    input: usize,
    output: usize,
) -> Prediction {
    let (i, o) = (input as f64, output.max(1) as f64);
    let kv_seqs = (kv_tokens / (input + output) as u64).max(1) as usize;
    let running = clients.min(machine.limits.max_num_seqs).min(kv_seqs).max(1);
    let r = running as f64;
    let microbatches = (shape.pp as f64).min(r);
    // Prefill room per round: each microbatch's token budget less its decode rows.
    let room = (machine.limits.max_batch_tokens as f64 * microbatches - r).max(1.0);
    let chunk = room.min(f64::max(i / (i / room).ceil(), r * i / o)).max(1.0);
    let prefill_rounds = (r * i / chunk).ceil();
    let rounds = o.max(prefill_rounds);
    let decode = r * o / rounds;
    let base = Tokens { decode, decode_context: i + o / 2.0, sampled: decode, ..Default::default() };
    let mixed =
        Tokens { prefill: chunk, prefill_context: (chunk / 2.0).max(i / 2.0), sampled: decode + chunk / i, ..base };
    let (t_mixed, idle_mixed) = machine.round(shape, r, mixed);
    let (t_decode, idle_decode) = machine.round(shape, r, base);
    let cycle = prefill_rounds * t_mixed + (rounds - prefill_rounds) * t_decode;
    // A new prompt takes the whole room, first come first served.
    let ttft_service = (i / room).ceil() * t_mixed;
    // Its other tokens take the rest of the cycle (other prompts' chunks included).
    let tpot = if o > 1.0 { (cycle - ttft_service).max(0.0) / (o - 1.0) } else { cycle };
    let lifetime = ttft_service + (o - 1.0) * tpot;
    let waiting = if clients > running { lifetime * (clients as f64 / r - 1.0) } else { 0.0 };
    let idle = (prefill_rounds * t_mixed * idle_mixed + (rounds - prefill_rounds) * t_decode * idle_decode) / cycle;
    Prediction { running, ttft_s: ttft_service + waiting, tpot_s: tpot, output_tok_s: r * o / cycle, idle }
}
