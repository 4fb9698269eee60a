//! Tensor-parallel shard layout (Megatron-LM, Shoeybi et al. 2019), including uneven splits.
//!
//! Peers require the TP degree to divide the head counts. We split by KV-head groups as evenly as
//! possible so every query head stays on the rank holding its KV head; when there are more ranks
//! than KV heads, query heads are split evenly and a KV head whose group straddles two ranks is
//! held (replicated) by both. Intermediate and vocab dimensions are split as evenly as possible.

use std::ops::Range;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// `parts` contiguous ranges covering 0..n, sizes differing by at most one (larger ones first).
pub fn even_split(n: usize, parts: usize, index: usize) -> Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = index * base + index.min(extra);
    let len = base + usize::from(index < extra);
    start..start + len
}

/// What one TP rank holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    pub rank: usize,
    pub size: usize,
    /// Query heads computed on this rank (global head indices).
    pub q_heads: Range<usize>,
    /// KV heads held on this rank (global indices); covers the KV head of every local query head.
    pub kv_heads: Range<usize>,
    /// Slice of the MLP intermediate dimension.
    pub intermediate: Range<usize>,
    /// Slice of the vocabulary (embedding rows and LM-head rows).
    pub vocab: Range<usize>,
}

impl ShardPlan {
    pub fn single(cfg: &ModelConfig) -> Self {
        Self::new(cfg, 0, 1).expect("a single shard is always valid")
    }

    pub fn new(cfg: &ModelConfig, rank: usize, size: usize) -> Result<Self> {
        if size == 0 || rank >= size {
            return Err(ModelError::Shard(format!("rank {rank} is outside a TP group of size {size}")));
        }
        if size > cfg.num_heads {
            return Err(ModelError::Shard(format!(
                "TP size {size} exceeds the number of attention heads ({})",
                cfg.num_heads
            )));
        }
        let group = cfg.num_heads / cfg.num_kv_heads;
        let (q_heads, kv_heads) = if size <= cfg.num_kv_heads {
            let kv = even_split(cfg.num_kv_heads, size, rank);
            (kv.start * group..kv.end * group, kv)
        } else {
            let q = even_split(cfg.num_heads, size, rank);
            let kv = q.start / group..(q.end - 1) / group + 1;
            (q, kv)
        };
        Ok(ShardPlan {
            rank,
            size,
            q_heads,
            kv_heads,
            intermediate: even_split(cfg.intermediate_size, size, rank),
            vocab: even_split(cfg.vocab_size, size, rank),
        })
    }

    pub fn num_q_heads(&self) -> usize {
        self.q_heads.len()
    }

    pub fn num_kv_heads(&self) -> usize {
        self.kv_heads.len()
    }

    /// For each local query head, the index of its KV head among the local KV heads.
    pub fn local_kv_of_q(&self, cfg: &ModelConfig) -> Vec<usize> {
        let group = cfg.num_heads / cfg.num_kv_heads;
        self.q_heads.clone().map(|h| h / group - self.kv_heads.start).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol() -> ModelConfig {
        ModelConfig::from_json(&serde_json::json!({"architectures": ["LlamaForCausalLM"],
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}))
        .unwrap()
    }

    #[test]
    fn even_split_covers_everything() {
        for n in [0, 1, 7, 9, 49152] {
            for parts in 1..6 {
                let ranges: Vec<_> = (0..parts).map(|i| even_split(n, parts, i)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
    }

    #[test]
    fn smollm2_uneven_layouts_keep_query_heads_with_their_kv_head() {
        let cfg = smol();
        for size in 1..=9 {
            let plans: Vec<_> = (0..size).map(|r| ShardPlan::new(&cfg, r, size).unwrap()).collect();
            let total_q: usize = plans.iter().map(|p| p.num_q_heads()).sum();
            assert_eq!(total_q, 9, "size {size}");
            for p in &plans {
                assert!(p.num_q_heads() > 0);
                for (i, h) in p.q_heads.clone().enumerate() {
                    assert_eq!(p.kv_heads.start + p.local_kv_of_q(&cfg)[i], h / 3);
                }
            }
        }
        let two: Vec<_> = (0..2).map(|r| ShardPlan::new(&cfg, r, 2).unwrap()).collect();
        assert_eq!((two[0].q_heads.clone(), two[1].q_heads.clone()), (0..6, 6..9));
        assert!(ShardPlan::new(&cfg, 0, 10).is_err());
    }
}
