//! LLaMA: Open and Efficient Foundation Language Models (Touvron et al. 2023), and the variants
//! sharing its decoder: Llama 2/3 (GQA, Ainslie et al. 2023), Mistral, Qwen2 (q/k/v biases).
//!
//! At load time q/k/v are fused into one projection and gate/up into another, so a layer runs
//! four matmuls. A `Llama` holds one pipeline stage's layers of one tensor-parallel rank.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use shardline_ops::{KvLayout, QuantMatrix, QuantType};
use shardline_weights::{BlockBytes, LoadProgress, Slice, WeightSource};

use crate::batch::BatchInput;
use crate::collective::Collective;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv::{KvCache, KvKind};
use crate::ops::{self, QkvDims};
use crate::rope::RopeTable;
use crate::shard::ShardPlan;
use crate::weight::{FormatCounts, Quantization, Weight};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// This rank's tensor-parallel share (`None`: the whole model).
    pub plan: Option<ShardPlan>,
    /// This pipeline stage's layers (`None`: all of them).
    pub layers: Option<Range<usize>>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Which weights stay in (or are quantized to) block formats.
    pub quantization: Quantization,
}

impl LoadOptions {
    pub fn cpu(dtype: DType) -> Self {
        LoadOptions {
            dtype,
            device: Device::Cpu,
            plan: None,
            layers: None,
            progress: false,
            quantization: Quantization::default(),
        }
    }
}

pub(crate) struct Layer {
    pub input_norm: Tensor,
    pub qkv: Weight,
    pub qkv_bias: Option<Tensor>,
    pub o_proj: Weight,
    pub post_norm: Tensor,
    pub gate_up: Weight,
    pub down: Weight,
}

pub struct Llama {
    cfg: ModelConfig,
    plan: ShardPlan,
    embed: Option<Weight>,
    layers: Vec<Layer>,
    norm: Option<Tensor>,
    lm_head: Option<Weight>,
    /// Matrices per format, for the READY line.
    formats: FormatCounts,
    rope: RopeTable,
    kv_head_of_q: Vec<usize>,
    dims: QkvDims,
    /// Our own kernels, on a CUDA device (see [`crate::gpu`]).
    #[cfg(feature = "cuda")]
    gpu: Option<crate::gpu::GpuForward>,
    inter: usize,
    dtype: DType,
    device: Device,
}

/// Loads tensors by HF name, counting them on the progress bar.
struct Loader<'a> {
    src: &'a dyn WeightSource,
    opts: &'a LoadOptions,
    bar: LoadProgress,
    /// Why matrices were dequantized after all, each reason logged once.
    dequantized: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize], slice: Slice) -> Result<Tensor> {
        let t = self.src.load(name, shape, &slice, self.opts.dtype, &self.opts.device)?;
        self.bar.inc(1);
        Ok(t)
    }

    /// A matrix stored as bf16 or f16, kept 16-bit (f32 accumulation): half the bytes of f32.
    /// `None` for other dtypes, and for rows that are not whole 32-weight blocks (with a note).
    fn linear_16bit(&self, name: &str, shape: &[usize], slice: &Slice) -> Result<Option<Weight>> {
        let ty = match self.src.stored_dtype(name) {
            Some(DType::BF16) => QuantType::BF16,
            Some(DType::F16) => QuantType::F16,
            _ => return Ok(None),
        };
        let stored = if ty == QuantType::BF16 { DType::BF16 } else { DType::F16 };
        let t = self.src.load(name, shape, slice, stored, &self.opts.device)?;
        let (rows, cols) = t.dims2()?;
        let bits: Vec<u16> = match ty {
            QuantType::BF16 => t.flatten_all()?.to_vec1::<half::bf16>()?.into_iter().map(half::bf16::to_bits).collect(),
            _ => t.flatten_all()?.to_vec1::<half::f16>()?.into_iter().map(half::f16::to_bits).collect(),
        };
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        match QuantMatrix::from_bytes(ty, rows, cols, &bytes) {
            Ok(m) => {
                self.bar.inc(1);
                Ok(Some(Weight::blocks(m)))
            }
            Err(e) => {
                self.note(format!("{e}; loaded at the activation dtype"));
                Ok(None)
            }
        }
    }

    /// A matrix a matmul runs: in its stored block format when the options and the slice
    /// allow, quantized on load when asked, else dense.
    fn linear(&self, name: &str, shape: &[usize], slice: Slice) -> Result<Weight> {
        let q = self.opts.quantization;
        // The block matmul runs on the CPU with f32 activations.
        if q == Quantization::None || !self.opts.device.is_cpu() || self.opts.dtype != DType::F32 {
            return Ok(Weight::Dense(self.get(name, shape, slice)?));
        }
        if let Some(raw) = self.src.load_blocks(name, shape, &slice)? {
            match QuantType::from_ggml(raw.dtype) {
                Some(ty) => {
                    let m = match &raw.bytes {
                        BlockBytes::Mapped { file, range } => {
                            QuantMatrix::mapped(ty, raw.rows, raw.cols, file.clone(), range.clone())
                        }
                        BlockBytes::Owned(bytes) => QuantMatrix::from_bytes(ty, raw.rows, raw.cols, bytes),
                    }
                    .map_err(|e| ModelError::Shard(format!("{name}: {e}")))?;
                    if !m.is_mapped() {
                        // Regrouped for its kernels: the file's pages are not read again.
                        raw.bytes.release();
                    }
                    self.bar.inc(1);
                    return Ok(Weight::blocks(m));
                }
                None => self.note(format!("{:?} has no block kernel", raw.dtype)),
            }
        } else if slice != Slice::Full && self.src.load_blocks(name, shape, &Slice::Rows(0..0))?.is_some() {
            self.note("a tensor-parallel slice cuts through blocks".into());
        }
        if q == Quantization::Auto {
            if let Some(w) = self.linear_16bit(name, shape, &slice)? {
                return Ok(w);
            }
        }
        let dense = self.get(name, shape, slice)?;
        let Some(mut ty) = q.in_situ() else { return Ok(Weight::Dense(dense)) };
        let (rows, cols) = dense.dims2()?;
        if cols % ty.block_elems() != 0 {
            self.note(format!("rows of {cols} are not whole {ty} blocks; Q8_0 instead"));
            ty = QuantType::Q8_0;
        }
        match QuantMatrix::quantize(ty, rows, cols, &dense.flatten_all()?.to_vec1::<f32>()?) {
            Ok(m) => Ok(Weight::blocks(m)),
            Err(e) => {
                self.note(e.to_string());
                Ok(Weight::Dense(dense))
            }
        }
    }

    /// Logs (once per reason) why a matrix is kept dense rather than in blocks.
    fn note(&self, why: String) {
        if self.dequantized.borrow_mut().insert(why.clone()) {
            tracing::info!("some weights load dequantized to f32: {why}");
        }
    }
}

impl Llama {
    /// Loads this rank's and stage's share of the model described by `src.config()`.
    pub fn load(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        let cfg = ModelConfig::from_json(src.config())?;
        let plan = match &opts.plan {
            Some(p) => p.clone(),
            None => ShardPlan::single(&cfg),
        };
        let layer_range = opts.layers.clone().unwrap_or(0..cfg.num_layers);
        if layer_range.start >= layer_range.end || layer_range.end > cfg.num_layers {
            return Err(ModelError::Shard(format!(
                "layer range {}..{} is not inside the model's {} layers",
                layer_range.start, layer_range.end, cfg.num_layers
            )));
        }
        let (first, last) = (layer_range.start == 0, layer_range.end == cfg.num_layers);
        let per_layer = 9 + if cfg.attention_bias { 3 } else { 0 };
        let total = layer_range.len() * per_layer + usize::from(first) + 2 * usize::from(last);
        let bar = if opts.progress {
            LoadProgress::new(total as u64, "loading weights")
        } else {
            LoadProgress::hidden(total as u64)
        };
        let ld = Loader { src, opts, bar, dequantized: Default::default() };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let rows = |r: &Range<usize>, scale: usize| Slice::Rows(r.start * scale..r.end * scale);
        let cols = |r: &Range<usize>, scale: usize| Slice::Cols(r.start * scale..r.end * scale);
        // Vocab-parallel: each TP rank holds its vocab rows (the whole table when alone).
        let embed = if first || (last && cfg.tie_word_embeddings) {
            Some(ld.linear("model.embed_tokens.weight", &[cfg.vocab_size, h], rows(&plan.vocab, 1))?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(layer_range.len());
        for i in layer_range.clone() {
            let p = format!("model.layers.{i}");
            let attn = |w: &str, n: usize, r: &Range<usize>| {
                ld.linear(&format!("{p}.self_attn.{w}.weight"), &[n * hd, h], rows(r, hd))
            };
            let q = attn("q_proj", cfg.num_heads, &plan.q_heads)?;
            let k = attn("k_proj", cfg.num_kv_heads, &plan.kv_heads)?;
            let v = attn("v_proj", cfg.num_kv_heads, &plan.kv_heads)?;
            let qkv_bias = if cfg.attention_bias {
                let bias = |w: &str, n: usize, r: &Range<usize>| {
                    ld.get(&format!("{p}.self_attn.{w}.bias"), &[n * hd], rows(r, hd))
                };
                let (qb, kb, vb) = (
                    bias("q_proj", cfg.num_heads, &plan.q_heads)?,
                    bias("k_proj", cfg.num_kv_heads, &plan.kv_heads)?,
                    bias("v_proj", cfg.num_kv_heads, &plan.kv_heads)?,
                );
                Some(Tensor::cat(&[qb, kb, vb], 0)?)
            } else {
                None
            };
            let mlp = |w: &str| {
                ld.linear(&format!("{p}.mlp.{w}.weight"), &[cfg.intermediate_size, h], rows(&plan.intermediate, 1))
            };
            let (gate, up) = (mlp("gate_proj")?, mlp("up_proj")?);
            layers.push(Layer {
                input_norm: ld.get(&format!("{p}.input_layernorm.weight"), &[h], Slice::Full)?,
                qkv: Weight::stack(vec![q, k, v], opts.dtype, &opts.device)?,
                qkv_bias,
                o_proj: ld.linear(
                    &format!("{p}.self_attn.o_proj.weight"),
                    &[h, cfg.q_dim()],
                    cols(&plan.q_heads, hd),
                )?,
                post_norm: ld.get(&format!("{p}.post_attention_layernorm.weight"), &[h], Slice::Full)?,
                gate_up: Weight::stack(vec![gate, up], opts.dtype, &opts.device)?,
                down: ld.linear(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[h, cfg.intermediate_size],
                    cols(&plan.intermediate, 1),
                )?,
            });
        }
        let (norm, lm_head) = if last {
            let norm = ld.get("model.norm.weight", &[h], Slice::Full)?;
            let tied = cfg.tie_word_embeddings || !src.contains("lm_head.weight");
            let head = match (&embed, tied) {
                (Some(e), true) => e.clone(),
                (None, true) => ld.linear("model.embed_tokens.weight", &[cfg.vocab_size, h], rows(&plan.vocab, 1))?,
                (_, false) => ld.linear("lm_head.weight", &[cfg.vocab_size, h], rows(&plan.vocab, 1))?,
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        ld.bar.finish();
        let mut formats = FormatCounts::default();
        for l in &layers {
            [&l.qkv, &l.o_proj, &l.gate_up, &l.down].into_iter().for_each(|w| formats.add(w));
        }
        for w in embed.iter().chain(lm_head.iter().filter(|h| !embed.as_ref().is_some_and(|e| e.same_as(h)))) {
            formats.add(w);
        }
        let rope = RopeTable::new(&cfg);
        let kv_head_of_q = plan.local_kv_of_q(&cfg);
        let dims = QkvDims { q_heads: plan.num_q_heads(), kv_heads: plan.num_kv_heads(), head_dim: hd };
        #[cfg(feature = "cuda")]
        let gpu = match crate::gpu::cuda_device(&opts.device) {
            Some(dev) if crate::gpu::usable(&opts.device, opts.dtype, hd) => Some(crate::gpu::GpuForward::new(
                dev,
                &rope,
                cfg.max_position_embeddings,
                dims,
                &kv_head_of_q,
                plan.intermediate.len(),
                cfg.rms_norm_eps,
            )?),
            _ => None,
        };
        Ok(Llama {
            rope,
            kv_head_of_q,
            dims,
            #[cfg(feature = "cuda")]
            gpu,
            inter: plan.intermediate.len(),
            dtype: opts.dtype,
            device: opts.device.clone(),
            cfg,
            plan,
            embed,
            layers,
            norm,
            lm_head,
            formats,
        })
    }

    /// Matrices per format this rank holds ("210 Q4_1, 1 Q8_0").
    pub fn weight_formats(&self) -> String {
        self.formats.to_string()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The form of KV cache this model's forward path reads.
    fn kv_kind(&self) -> KvKind {
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            return KvKind::Gpu;
        }
        if self.device.is_cpu() && self.dtype == DType::F32 {
            KvKind::Host
        } else {
            KvKind::Candle
        }
    }

    /// A paged KV cache for this stage's layers.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        let layout = KvLayout { block_size, num_kv_heads: self.dims.kv_heads, head_dim: self.dims.head_dim };
        KvCache::new(self.layers.len(), layout, num_blocks, self.kv_kind(), self.dtype, &self.device)
    }

    /// Each logits row's best `k` candidates and log-sum-exps, computed on the GPU where the
    /// logits are (only those come back); `None` off the GPU path.
    #[cfg(feature = "cuda")]
    pub fn device_topk(
        &self,
        logits: &Tensor,
        inv_temperature: &[f32],
        k: usize,
    ) -> Result<Option<crate::gpu::RowCandidates>> {
        match &self.gpu {
            Some(g) if !logits.device().is_cpu() => g.topk(logits, inv_temperature, k).map(Some),
            _ => Ok(None),
        }
    }

    /// Token embeddings [T, hidden] (first stage only). Under TP each rank looks up the ids in
    /// its vocab slice, zeroes the rest, and the group sums.
    pub fn embed(&self, tokens: &[u32], comm: &dyn Collective) -> Result<Tensor> {
        let embed = self.embed.as_ref().ok_or_else(|| {
            ModelError::Shard("this pipeline stage does not hold the embedding (not the first stage)".into())
        })?;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Batch(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let vocab = &self.plan.vocab;
        if vocab.len() == self.cfg.vocab_size {
            return embed.lookup(tokens, &self.device);
        }
        let local: Vec<u32> =
            tokens.iter().map(|&t| if vocab.contains(&(t as usize)) { t - vocab.start as u32 } else { 0 }).collect();
        let mask: Vec<f32> = tokens.iter().map(|&t| if vocab.contains(&(t as usize)) { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (tokens.len(), 1), &self.device)?.to_dtype(self.dtype)?;
        let partial = embed.lookup(&local, &self.device)?.broadcast_mul(&mask)?;
        comm.all_reduce_sum_owned(partial)
    }

    /// Bytes of weights this rank and stage hold.
    pub fn weight_bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut n: usize =
            self.embed.iter().map(Weight::bytes).sum::<usize>() + self.norm.iter().map(size).sum::<usize>();
        if let Some(h) = &self.lm_head {
            if !self.embed.as_ref().is_some_and(|e| e.same_as(h)) {
                n += h.bytes();
            }
        }
        for l in &self.layers {
            n += [&l.qkv, &l.o_proj, &l.gate_up, &l.down].into_iter().map(Weight::bytes).sum::<usize>();
            n += [&l.input_norm, &l.post_norm].into_iter().map(size).sum::<usize>();
            n += l.qkv_bias.as_ref().map_or(0, size);
        }
        n
    }

    /// Runs this stage's decoder layers over `hidden` [T, hidden], reading and extending `cache`.
    pub fn forward_layers(
        &self,
        mut x: Tensor,
        batch: &BatchInput,
        cache: &mut KvCache,
        comm: &dyn Collective,
    ) -> Result<Tensor> {
        if x.dim(0)? != batch.num_rows() {
            return Err(ModelError::Batch(format!("{} hidden rows for {} batch rows", x.dim(0)?, batch.num_rows())));
        }
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            let block_size = cache.block_size();
            return g.forward_layers(x, &self.layers, batch, &mut cache.gpu_layers()?, block_size, comm);
        }
        let (cos, sin) = self.rope.cos_sin(&batch.positions);
        let eps = self.cfg.rms_norm_eps;
        for (li, l) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &l.input_norm, eps)?;
            let qkv = ops::linear(&h, &l.qkv, l.qkv_bias.as_ref())?;
            let (q, k, v) = ops::split_qkv_rope(&qkv, &self.dims, &cos, &sin)?;
            let a = ops::attention(&q, &k, &v, cache, li, batch, &self.dims, &self.kv_head_of_q)?;
            let o = self.row_parallel(&a, &l.o_proj, comm)?;
            x = ops::add(&x, &o)?;
            let h = ops::rms_norm(&x, &l.post_norm, eps)?;
            let gu = ops::linear(&h, &l.gate_up, None)?;
            let m = ops::silu_mul(&gu, self.inter)?;
            let d = self.row_parallel(&m, &l.down, comm)?;
            x = ops::add(&x, &d)?;
        }
        Ok(x)
    }

    /// x · wᵀ for a row-parallel layer (o_proj, down): under TP each rank multiplies its slice
    /// of x's columns and the group sums the partial results. Block weights take the exact f64
    /// path on every layout, a group of one included, so that all round the same sum.
    fn row_parallel(&self, x: &Tensor, w: &Weight, comm: &dyn Collective) -> Result<Tensor> {
        let partial = ops::linear_partial(x, w)?;
        let summed = if comm.size() > 1 { comm.all_reduce_sum_owned(partial)? } else { partial };
        Ok(summed.to_dtype(self.dtype)?)
    }

    /// f32 logits [rows.len(), vocab] of the chosen rows of the last stage's output.
    pub fn logits(&self, hidden: &Tensor, rows: &[usize], comm: &dyn Collective) -> Result<Tensor> {
        let (norm, head) = match (&self.norm, &self.lm_head) {
            (Some(n), Some(h)) => (n, h),
            _ => {
                return Err(ModelError::Shard(
                    "this pipeline stage does not hold the LM head (not the last stage)".into(),
                ))
            }
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let picked = hidden.index_select(&Tensor::from_vec(idx, rows.len(), &self.device)?, 0)?;
        let h = ops::rms_norm(&picked, norm, self.cfg.rms_norm_eps)?;
        let mut logits = ops::linear(&h, head, None)?.to_dtype(DType::F32)?;
        if comm.size() > 1 {
            logits = comm.all_gather_last_dim(&logits)?;
        }
        Ok(logits)
    }

    /// Embedding → layers → logits for the rows the batch asks for (single-stage models).
    pub fn forward(&self, batch: &BatchInput, cache: &mut KvCache, comm: &dyn Collective) -> Result<Tensor> {
        let x = self.embed(&batch.tokens, comm)?;
        let x = self.forward_layers(x, batch, cache, comm)?;
        self.logits(&x, &batch.logit_rows, comm)
    }
}
