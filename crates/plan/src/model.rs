//! The model being planned: its config (a built-in family's, a `config.json`, an HF directory,
//! a GGUF or an alias such as `smollm2-135m`), and how a rank would hold its weights.
//!
//! With a checkpoint planned for CPU ranks, the loader's own rules size every tensor from the
//! formats the file stores (`shardline_model::footprint::LoaderFormats`), so the bytes equal
//! what READY reports. For GPUs (or with `--weights-dtype`), matrices take the chosen format's
//! bytes and everything else the activation dtype's: what the peers we compare with hold.

use std::path::Path;

use candle_core::DType;
use shardline_model::footprint::{LoaderFormats, TensorFormats};
use shardline_model::{LoadOptions, ModelConfig, Quantization};
use shardline_weights::WeightSource;
use strum::{Display, EnumString, VariantNames};

use crate::error::{PlanError, Result};

/// Configs of common families, so that planning a 405B model needs no download.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "llama-3.1-8b",
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": false}"#,
    ),
    (
        "llama-3.1-70b",
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": false}"#,
    ),
    (
        "llama-3.3-70b",
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": false}"#,
    ),
    (
        "llama-3.1-405b",
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": false}"#,
    ),
    (
        "qwen2.5-7b",
        r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": false}"#,
    ),
];

pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// `--weights-dtype`: the format matrices are held in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Display, EnumString, VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum WeightsDtype {
    Bf16,
    Fp16,
    /// One byte per weight (per-tensor scales).
    Fp8,
    /// Four bits per weight plus an 8-bit scale per 16 (NVFP4; AWQ/GPTQ's group-128 scales
    /// are about the same).
    Int4,
    F32,
}

impl WeightsDtype {
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightsDtype::Bf16 | WeightsDtype::Fp16 => 2.0,
            WeightsDtype::Fp8 => 1.0,
            WeightsDtype::Int4 => 0.5 + 1.0 / 16.0,
            WeightsDtype::F32 => 4.0,
        }
    }

    /// Compute types a matmul over these weights runs at, best first.
    pub fn compute(self) -> &'static [&'static str] {
        match self {
            WeightsDtype::Bf16 | WeightsDtype::Fp16 => &["bf16"],
            WeightsDtype::Fp8 => &["fp8", "bf16"],
            WeightsDtype::Int4 => &["fp4", "int4", "bf16"],
            WeightsDtype::F32 => &["f32"],
        }
    }
}

/// `--kv-dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Display, EnumString, VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum KvDtype {
    Bf16,
    Fp8,
    F32,
}

impl KvDtype {
    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
            KvDtype::F32 => 4,
        }
    }
}

/// Matrices at one format's bytes per weight, everything else at the activation dtype's; the
/// embedding and LM head stay at the activation dtype, as FP8 and 4-bit checkpoints keep them.
pub struct UniformFormats {
    pub weights: WeightsDtype,
    pub dense_bytes: u64,
    pub has_lm_head: bool,
}

impl TensorFormats for UniformFormats {
    fn compact_bytes(&self, name: &str, rows: usize, cols: usize, _: &shardline_weights::Slice) -> Option<u64> {
        let vocab = name.contains("embed_tokens") || name == "lm_head.weight";
        (!vocab).then(|| ((rows * cols) as f64 * self.weights.bytes_per_weight()).ceil() as u64)
    }

    fn dense_elem_bytes(&self) -> u64 {
        self.dense_bytes
    }

    fn has_lm_head(&self) -> bool {
        self.has_lm_head
    }
}

/// How one rank holds the weights, and what its matmuls compute in.
pub struct Formats<'a> {
    pub tensors: Box<dyn TensorFormats + 'a>,
    /// Compute types of the matmuls, best first (keys of `Hardware::tflops`).
    pub compute: &'static [&'static str],
    /// Activation bytes per element (f32 on CPUs, bf16 on GPUs).
    pub activation_bytes: u64,
    /// Bytes per element of the row-parallel layers' all-reduce (compact CPU weights sum
    /// their partial products in f64, so that every layout rounds alike).
    pub reduce_bytes: u64,
    /// What the weights are, for the report ("Q4_1 blocks as stored", "fp8").
    pub label: String,
}

pub struct PlanModel {
    pub name: String,
    pub cfg: ModelConfig,
    source: Option<Box<dyn WeightSource>>,
    cpu_load: LoadOptions,
}

impl PlanModel {
    /// A built-in name, an alias, a `config.json`, an HF directory or a GGUF file.
    pub fn open(spec: &str) -> Result<PlanModel> {
        let bad = |message: String| PlanError::BadModel { spec: spec.to_string(), message };
        let (config, source) = if let Some((_, json)) = BUILT_IN.iter().find(|(n, _)| *n == spec) {
            (serde_json::from_str(json).expect("built-in configs are valid JSON"), None)
        } else {
            let path = Path::new(spec);
            let config_only = path.is_file() && path.extension().is_some_and(|e| e == "json");
            let bare_dir = path.is_dir() && !has_safetensors(path);
            if config_only || bare_dir {
                let file = if bare_dir { path.join("config.json") } else { path.to_path_buf() };
                let text =
                    std::fs::read_to_string(&file).map_err(|source| PlanError::Read { path: file.clone(), source })?;
                let json =
                    serde_json::from_str(&text).map_err(|e| bad(format!("{} is not JSON: {e}", file.display())))?;
                (json, None)
            } else {
                let resolved = shardline_weights::resolve_model(spec).map_err(|e| {
                    bad(format!("{e} (or one of the built-in configs: {})", built_in_names().join(", ")))
                })?;
                let src = shardline_weights::open(&resolved)?;
                (src.config().clone(), Some(src))
            }
        };
        let cfg = ModelConfig::from_json(&config).map_err(|e| bad(e.to_string()))?;
        let cpu_load = LoadOptions { quantization: Quantization::Auto, ..LoadOptions::cpu(DType::F32) };
        Ok(PlanModel { name: spec.to_string(), cfg, source, cpu_load })
    }

    pub fn has_checkpoint(&self) -> bool {
        self.source.is_some()
    }

    /// How ranks hold the weights: the loader's rules over the checkpoint for CPU ranks, else
    /// `weights` (default bf16 on GPUs, f32 on CPUs) for every matrix.
    pub fn formats(&self, cpu: bool, weights: Option<WeightsDtype>) -> Formats<'_> {
        let activation_bytes = if cpu { 4 } else { 2 };
        if let (Some(src), true, None) = (&self.source, cpu, weights) {
            let probe = "model.layers.0.mlp.gate_proj.weight";
            let (compute, label): (&'static [&'static str], String) = match src.block_type(probe) {
                Some(t) if format!("{t:?}") == "Q8_0" => (&["int8", "f32"], "Q8_0 blocks as stored".into()),
                Some(t) => (&["int4", "int8", "f32"], format!("{t:?} blocks as stored")),
                None => match src.stored_dtype(probe) {
                    Some(DType::BF16 | DType::F16) => (&["bf16", "f32"], "16-bit as stored".into()),
                    _ => (&["f32"], "f32".into()),
                },
            };
            let tensors = Box::new(LoaderFormats { src: src.as_ref(), opts: &self.cpu_load });
            let reduce_bytes = if compute == ["f32"] { 4 } else { 8 };
            return Formats { tensors, compute, activation_bytes, reduce_bytes, label };
        }
        let weights = weights.unwrap_or(if cpu { WeightsDtype::F32 } else { WeightsDtype::Bf16 });
        let has_lm_head = match &self.source {
            Some(src) => src.contains("lm_head.weight"),
            None => !self.cfg.tie_word_embeddings,
        };
        Formats {
            tensors: Box::new(UniformFormats { weights, dense_bytes: activation_bytes, has_lm_head }),
            compute: weights.compute(),
            activation_bytes,
            reduce_bytes: activation_bytes,
            label: weights.to_string(),
        }
    }
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
}
