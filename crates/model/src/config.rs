//! Model configuration: the raw HF `config.json` (serde) resolved into a plain [`ModelConfig`].
//!
//! Follows candle's habit: deserialize permissively, then resolve every default and check every
//! invariant once, so the forward pass only ever sees validated numbers.

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The architectures the Llama-family forward pass covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3/3.1, TinyLlama, SmolLM/SmolLM2.
    Llama,
    /// Mistral (Llama layout; sliding window is clamped into the context length).
    Mistral,
    /// Qwen2/Qwen2.5: Llama layout plus biases on q/k/v.
    Qwen2,
}

/// Rotary frequency scaling variants read from `rope_scaling` / `rope_parameters`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1 wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// Resolved configuration used by the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize, Default)]
struct RawRope {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
    rope_theta: Option<f32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    rope_scaling: Option<RawRope>,
    /// transformers 5 moved rope settings here.
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

impl ModelConfig {
    /// Resolve an HF `config.json` value (or the one the weight loader synthesizes from GGUF).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_value(value.clone()).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let arch_name = raw.architectures.first().cloned().or_else(|| raw.model_type.clone()).unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MistralForCausalLM" | "mistral" => Architecture::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            "" => return Err(ModelError::Config("config has neither `architectures` nor `model_type`".into())),
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(ModelError::Config(format!("hidden_act `{act}` is not supported (only silu)")));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(ModelError::Config("mlp_bias = true is not supported".into()));
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads == 0 || num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(ModelError::Config(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            )));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Config(format!("head_dim must be even and positive, got {head_dim}")));
        }
        let rope = raw.rope_parameters.or(raw.rope_scaling).unwrap_or_default();
        let rope_theta = raw.rope_theta.or(rope.rope_theta).unwrap_or(10_000.0);
        let rope_scaling = resolve_rope(&rope)?;
        let mut max_pos = raw.max_position_embeddings.unwrap_or(2048);
        // Mistral's sliding window is not implemented as a window; keep contexts inside it so the
        // result is still exact.
        if architecture == Architecture::Mistral && raw.use_sliding_window != Some(false) {
            if let Some(w) = raw.sliding_window {
                max_pos = max_pos.min(w);
            }
        }
        let eos_token_ids = match raw.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => vec![],
        };
        let cfg = ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(architecture == Architecture::Qwen2),
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
        };
        if cfg.hidden_size == 0 || cfg.intermediate_size == 0 || cfg.num_layers == 0 || cfg.vocab_size == 0 {
            return Err(ModelError::Config(
                "hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive".into(),
            ));
        }
        Ok(cfg)
    }

    /// Width of the q projection output (num_heads × head_dim).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the k (or v) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn resolve_rope(r: &RawRope) -> Result<RopeScaling> {
    let kind = r.rope_type.as_deref().unwrap_or("default");
    let need = |v: Option<f32>, name: &str| {
        v.ok_or_else(|| ModelError::Config(format!("rope_scaling `{kind}` needs `{name}`")))
    };
    match kind {
        "default" | "none" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: need(r.factor, "factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need(r.factor, "factor")?,
            low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: r.original_max_position_embeddings.ok_or_else(|| {
                ModelError::Config("rope_scaling `llama3` needs `original_max_position_embeddings`".into())
            })?,
        }),
        other => {
            Err(ModelError::Config(format!("rope_scaling type `{other}` is not supported (default, linear, llama3)")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 300, "rms_norm_eps": 1e-5, "rope_theta": 10000.0})
    }

    #[test]
    fn resolves_defaults() {
        let c = ModelConfig::from_json(&base()).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.kv_dim(), 32);
        assert!(!c.tie_word_embeddings);
        assert!(!c.attention_bias);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let mut v = base();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn qwen2_has_bias_and_llama3_scaling_parses() {
        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        assert!(ModelConfig::from_json(&v).unwrap().attention_bias);
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert!(matches!(ModelConfig::from_json(&v).unwrap().rope_scaling, RopeScaling::Llama3 { .. }));
    }

    #[test]
    fn bad_heads_rejected() {
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_json(&v).is_err());
        let mut v = base();
        v["rope_scaling"] = json!({"type": "yarn", "factor": 2.0});
        assert!(ModelConfig::from_json(&v).unwrap_err().to_string().contains("yarn"));
    }
}
