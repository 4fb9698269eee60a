//! Memory per rank: the runtime's reserve, the weights and the activation workspace of the
//! largest step come first; KV blocks take the rest, by one of two rules. vLLM's (and
//! Shardline's): everything up to `memory × memory_utilization`; TensorRT-LLM's: a fraction of
//! what is free after the rest (`kv_cache_free_gpu_mem_fraction`, 0.9 by default). A group holds as many KV tokens as its tightest rank allows (every rank keeps K/V
//! of every token for its own layers and heads), and a layout fits when that is at least one
//! full request.

use crate::hardware::Hardware;
use crate::shape::{GroupShape, RankShape};

/// How much of the memory left KV blocks take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvRule {
    /// Everything up to this fraction of the device's memory (`--gpu-memory-utilization`).
    Utilization(f64),
    /// This fraction of what is free after weights, activations and the reserve.
    FreeFraction(f64),
}

/// The engine's limits (`serve`'s flags of the same names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineLimits {
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Memory {
    /// Weights of every rank, in rank order (stage-major).
    pub weights_per_rank: Vec<u64>,
    /// Largest of weights + activations + reserve + KV over the ranks.
    pub per_gpu_bytes: u64,
    /// KV bytes one token takes on the rank where it weighs most.
    pub kv_bytes_per_token: u64,
    /// Tokens of KV the group holds (0 when not even weights fit).
    pub kv_tokens: u64,
    /// Why it does not fit, if it does not.
    pub short: Option<String>,
}

/// K and V of one token on `rank`: its layers × its KV heads × head_dim, twice.
pub fn kv_bytes_per_token(rank: &RankShape, head_dim: usize, kv_bytes: u64) -> u64 {
    2 * (rank.layers * rank.kv_heads * head_dim) as u64 * kv_bytes
}

/// The transient buffers of a step of `limits.max_batch_tokens` tokens: residual and normed
/// rows, q|k|v, attention output, gate|up and the activated product, plus f32 logits of every
/// sampled row on the last stage.
fn activation_bytes(rank: &RankShape, hidden: usize, head_dim: usize, act_bytes: u64, limits: EngineLimits) -> u64 {
    let per_token = 2 * hidden + (2 * rank.q_heads + 2 * rank.kv_heads) * head_dim + 3 * rank.intermediate;
    let logits = if rank.head_params > 0.0 { limits.max_num_seqs * rank.vocab * 4 } else { 0 };
    (limits.max_batch_tokens * per_token) as u64 * act_bytes + logits as u64
}

pub struct MemoryInputs<'a> {
    pub hw: &'a Hardware,
    pub hidden: usize,
    pub head_dim: usize,
    pub activation_bytes: u64,
    pub kv_bytes: u64,
    pub limits: EngineLimits,
    /// Ranks sharing one host's memory (CPU ranks), else 1.
    pub ranks_per_host: usize,
    /// Tokens one request needs (input + output).
    pub request_tokens: u64,
    /// `None`: the hardware's `memory_utilization`.
    pub rule: Option<KvRule>,
}

pub fn memory(shape: &GroupShape, m: &MemoryInputs) -> Memory {
    let capacity = m.hw.memory_bytes() / m.ranks_per_host as f64;
    let rule = m.rule.unwrap_or(KvRule::Utilization(m.hw.memory_utilization));
    let usable = match rule {
        KvRule::Utilization(u) => capacity * u,
        KvRule::FreeFraction(_) => capacity,
    } - m.hw.reserved_bytes() / m.ranks_per_host as f64;
    let mut kv_tokens = u64::MAX;
    let mut short = None;
    let mut fixed = Vec::with_capacity(shape.ranks.len());
    for (i, rank) in shape.ranks.iter().enumerate() {
        let act = activation_bytes(rank, m.hidden, m.head_dim, m.activation_bytes, m.limits);
        let weights = rank.bytes.total();
        let free = usable - (weights + act) as f64;
        let room = match rule {
            KvRule::Utilization(_) => free,
            KvRule::FreeFraction(f) => free * f,
        };
        let per_token = kv_bytes_per_token(rank, m.head_dim, m.kv_bytes).max(1);
        if room <= 0.0 && short.is_none() {
            short = Some(format!(
                "rank {i} needs {:.1} GiB for weights and {:.1} GiB for activations, over the {:.1} GiB usable",
                gib(weights),
                gib(act),
                usable / GIB
            ));
        }
        kv_tokens = kv_tokens.min((room.max(0.0) / per_token as f64) as u64);
        fixed.push((weights + act, per_token));
    }
    if short.is_none() && kv_tokens < m.request_tokens {
        short = Some(format!("KV room for {kv_tokens} tokens, less than one request's {}", m.request_tokens));
    }
    let reserve = (m.hw.reserved_bytes() / m.ranks_per_host as f64) as u64;
    let per_gpu_bytes = fixed.iter().map(|&(f, t)| f + reserve + t * kv_tokens).max().unwrap_or(0);
    Memory {
        weights_per_rank: shape.ranks.iter().map(|r| r.bytes.total()).collect(),
        per_gpu_bytes,
        kv_bytes_per_token: fixed.iter().map(|f| f.1).max().unwrap_or(0),
        kv_tokens,
        short,
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}
