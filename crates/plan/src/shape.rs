//! What each rank of a TP × PP group holds and computes, from the code that shards for real:
//! `GroupLayout` (which layers each stage runs) and `ShardPlan` (which heads, intermediate
//! columns and vocab rows each TP rank holds, uneven splits included), with bytes from the
//! loader's accounting (`shardline_model::footprint`).

use shardline_model::footprint::{shard_weight_bytes, ShardBytes, TensorFormats};
use shardline_model::{ModelConfig, ShardPlan};
use shardline_worker::GroupLayout;

use crate::error::Result;

/// One rank's share.
#[derive(Clone, Debug, PartialEq)]
pub struct RankShape {
    pub stage: usize,
    pub tp_rank: usize,
    pub layers: usize,
    pub bytes: ShardBytes,
    /// Weights of the decoder layers' matmuls (elements).
    pub layer_params: f64,
    /// Weights of the LM head slice, on the last stage (elements).
    pub head_params: f64,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
}

/// Every rank of one TP × PP group, stage by stage.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupShape {
    pub tp: usize,
    pub pp: usize,
    pub ranks: Vec<RankShape>,
}

impl GroupShape {
    pub fn new(cfg: &ModelConfig, tp: usize, pp: usize, fmt: &dyn TensorFormats) -> Result<GroupShape> {
        let layout = GroupLayout::new(tp, pp, cfg.num_layers, None)?;
        let (h, hd) = (cfg.hidden_size as f64, cfg.head_dim);
        let mut ranks = Vec::with_capacity(tp * pp);
        for stage in 0..pp {
            let layers = layout.layers_of_stage(stage);
            let last = layers.end == cfg.num_layers;
            for tp_rank in 0..tp {
                let plan = ShardPlan::new(cfg, tp_rank, tp)?;
                let (q, kv, inter) = (plan.num_q_heads(), plan.num_kv_heads(), plan.intermediate.len());
                // q|k|v and o_proj over the local heads, gate|up and down over the local slice.
                let per_layer = ((q + 2 * kv) * hd + q * hd) as f64 * h + 3.0 * inter as f64 * h;
                ranks.push(RankShape {
                    stage,
                    tp_rank,
                    layers: layers.len(),
                    bytes: shard_weight_bytes(cfg, &plan, layers.clone(), fmt),
                    layer_params: per_layer * layers.len() as f64,
                    head_params: if last { plan.vocab.len() as f64 * h } else { 0.0 },
                    q_heads: q,
                    kv_heads: kv,
                    intermediate: inter,
                    vocab: plan.vocab.len(),
                });
            }
        }
        Ok(GroupShape { tp, pp, ranks })
    }

    pub fn stage(&self, stage: usize) -> &[RankShape] {
        &self.ranks[stage * self.tp..(stage + 1) * self.tp]
    }

    /// The busiest rank of a stage (uneven splits give the first ranks the larger shares).
    pub fn slowest_of_stage(&self, stage: usize) -> &RankShape {
        self.stage(stage)
            .iter()
            .max_by(|a, b| a.layer_params.total_cmp(&b.layer_params).then(a.bytes.total().cmp(&b.bytes.total())))
            .expect("a stage has at least one rank")
    }
}
