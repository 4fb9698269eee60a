//! A rank's weight bytes without loading a byte of weights: the tensors [`Llama::load`] reads
//! for a shard plan and a pipeline stage's layers, each sized the way the loader would hold
//! it. `shardline plan` sizes every layout with it; a test holds it equal to
//! [`Llama::weight_bytes`] (what READY reports) for real loads.
//!
//! The walk mirrors `Llama::load` tensor for tensor: vocab rows of the embedding (first stage,
//! or the last one when the head is tied), q/k/v rows of the local heads (one fused matrix: dense
//! as a whole if any part is), o_proj columns of the local heads, gate/up rows and down columns
//! of the local intermediate slice, norms whole, and the final norm and LM head on the last
//! stage.
//!
//! [`Llama::load`]: crate::Llama::load
//! [`Llama::weight_bytes`]: crate::Llama::weight_bytes

use std::ops::Range;

use candle_core::DType;
use shardline_ops::QuantType;
use shardline_weights::{Slice, WeightSource};

use crate::config::ModelConfig;
use crate::llama::LoadOptions;
use crate::shard::ShardPlan;
use crate::weight::Quantization;

/// How a rank holds each tensor.
pub trait TensorFormats {
    /// Bytes of `name`'s `slice` (`rows` × `cols` of it) when the matrix stays compact (GGUF
    /// blocks, 16-bit, or a planner's assumed weight format); `None` when it is held dense at
    /// the activation dtype.
    fn compact_bytes(&self, name: &str, rows: usize, cols: usize, slice: &Slice) -> Option<u64>;
    /// Bytes per element of dense tensors: norms, biases, dense matrices.
    fn dense_elem_bytes(&self) -> u64;
    /// Whether the checkpoint has an `lm_head.weight` of its own (else the embedding serves).
    fn has_lm_head(&self) -> bool;
}

/// The loader's own rules (`Loader::linear`) over a real checkpoint's stored formats.
pub struct LoaderFormats<'a> {
    pub src: &'a dyn WeightSource,
    pub opts: &'a LoadOptions,
}

impl TensorFormats for LoaderFormats<'_> {
    fn compact_bytes(&self, name: &str, rows: usize, cols: usize, slice: &Slice) -> Option<u64> {
        let q = self.opts.quantization;
        if q == Quantization::None || !self.opts.device.is_cpu() || self.opts.dtype != DType::F32 {
            return None;
        }
        let blocks = |ty: QuantType| (rows * (cols / ty.block_elems()) * ty.block_bytes()) as u64;
        let whole_blocks = |ty: QuantType| {
            let aligned = |i: usize| i.is_multiple_of(ty.block_elems());
            cols.is_multiple_of(ty.block_elems())
                && match slice {
                    Slice::Cols(c) => aligned(c.start) && aligned(c.end),
                    Slice::Full | Slice::Rows(_) => true,
                }
        };
        // Stored blocks stay as they are; a slice through blocks (or a format without a
        // kernel) is dequantized, then treated as unquantized below.
        if let Some(ty) = self.src.block_type(name).and_then(QuantType::from_ggml).filter(|&ty| whole_blocks(ty)) {
            return Some(blocks(ty));
        }
        if q == Quantization::Auto
            && matches!(self.src.stored_dtype(name), Some(DType::BF16 | DType::F16))
            && whole_blocks(QuantType::BF16)
        {
            return Some((rows * cols * 2) as u64);
        }
        let mut ty = q.in_situ()?;
        if !cols.is_multiple_of(ty.block_elems()) {
            ty = QuantType::Q8_0;
        }
        cols.is_multiple_of(ty.block_elems()).then(|| blocks(ty))
    }

    fn dense_elem_bytes(&self) -> u64 {
        self.opts.dtype.size_in_bytes() as u64
    }

    fn has_lm_head(&self) -> bool {
        self.src.contains("lm_head.weight")
    }
}

/// Bytes of weights one rank holds, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardBytes {
    /// The embedding's vocab rows (first stage; also the last one's when the head is tied).
    pub embedding: u64,
    /// Decoder layers (projections, biases, norms) and the final norm.
    pub layers: u64,
    /// The LM head when it is stored apart from this rank's embedding (0 on a stage without
    /// it, and when the tied embedding serves as the head).
    pub head: u64,
    /// Whether this rank computes logits (the last stage).
    pub computes_logits: bool,
}

impl ShardBytes {
    /// What `Llama::weight_bytes` reports.
    pub fn total(&self) -> u64 {
        self.embedding + self.layers + self.head
    }

    /// Bytes a forward step reads in full: the layers, and the head's matrix (the embedding is
    /// only gathered from, unless it is the head).
    pub fn streamed(&self) -> u64 {
        let head = if self.head == 0 && self.computes_logits { self.embedding } else { self.head };
        self.layers + head
    }
}

/// Bytes of weights the rank holding `plan`'s share of `layers` keeps: in total, what
/// `Llama::weight_bytes` reports after loading it.
pub fn shard_weight_bytes(
    cfg: &ModelConfig,
    plan: &ShardPlan,
    layers: Range<usize>,
    fmt: &dyn TensorFormats,
) -> ShardBytes {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let dense = |elems: usize| elems as u64 * fmt.dense_elem_bytes();
    // (compact bytes if it stays compact, bytes if dense)
    let matrix = |name: &str, rows: usize, cols: usize, slice: Slice| {
        (fmt.compact_bytes(name, rows, cols, &slice), dense(rows * cols))
    };
    let held = |(compact, dense): (Option<u64>, u64)| compact.unwrap_or(dense);
    // A fused projection stays compact only if every part does (`Weight::stack`).
    let fused = |parts: &[(Option<u64>, u64)]| match parts.iter().map(|p| p.0).sum::<Option<u64>>() {
        Some(compact) => compact,
        None => parts.iter().map(|p| p.1).sum(),
    };
    let (first, last) = (layers.start == 0, layers.end == cfg.num_layers);
    let vocab = plan.vocab.len();
    let rows_of = |r: &Range<usize>, scale: usize| Slice::Rows(r.start * scale..r.end * scale);
    let embedding = |name: &str| held(matrix(name, vocab, h, rows_of(&plan.vocab, 1)));
    let has_embed = first || (last && cfg.tie_word_embeddings);
    let mut out = ShardBytes { computes_logits: last, ..Default::default() };
    if has_embed {
        out.embedding = embedding("model.embed_tokens.weight");
    }
    let mut bytes = 0;
    let (q_rows, kv_rows, inter) = (plan.num_q_heads() * hd, plan.num_kv_heads() * hd, plan.intermediate.len());
    for i in layers {
        let p = format!("model.layers.{i}");
        let attn = |w: &str, rows: usize, heads: &Range<usize>| {
            matrix(&format!("{p}.self_attn.{w}.weight"), rows, h, rows_of(heads, hd))
        };
        let mlp = |w: &str| matrix(&format!("{p}.mlp.{w}.weight"), inter, h, rows_of(&plan.intermediate, 1));
        bytes += fused(&[
            attn("q_proj", q_rows, &plan.q_heads),
            attn("k_proj", kv_rows, &plan.kv_heads),
            attn("v_proj", kv_rows, &plan.kv_heads),
        ]);
        if cfg.attention_bias {
            bytes += dense(q_rows + 2 * kv_rows);
        }
        let cols_of = |r: &Range<usize>, scale: usize| Slice::Cols(r.start * scale..r.end * scale);
        bytes += held(matrix(&format!("{p}.self_attn.o_proj.weight"), h, q_rows, cols_of(&plan.q_heads, hd)));
        bytes += fused(&[mlp("gate_proj"), mlp("up_proj")]);
        bytes += held(matrix(&format!("{p}.mlp.down_proj.weight"), h, inter, cols_of(&plan.intermediate, 1)));
        bytes += dense(2 * h); // the two norms
    }
    if last {
        bytes += dense(h); // the final norm
        let tied = cfg.tie_word_embeddings || !fmt.has_lm_head();
        out.head = match (has_embed, tied) {
            (true, true) => 0, // the embedding's storage serves as the head
            (false, true) => embedding("model.embed_tokens.weight"),
            (_, false) => embedding("lm_head.weight"),
        };
    }
    out.layers = bytes;
    out
}
