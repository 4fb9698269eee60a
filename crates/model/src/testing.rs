//! Tiny random models for tests: an HF-style config and a safetensors file written to a
//! directory, so tests exercise the same loading path as a real checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use shardline_weights::{DummySource, Slice, WeightSource};

use crate::config::ModelConfig;
use crate::error::Result;

/// An HF config.json for a 2-layer model with GQA (4 query, 2 KV heads, head_dim 16), whose
/// BOS/EOS ids (256, 257) match `shardline_tokenizer::testing::tiny_tokenizer_json`.
/// `architecture` is e.g. "LlamaForCausalLM" or "Qwen2ForCausalLM" (which gets q/k/v biases).
pub fn tiny_config(architecture: &str, vocab_size: usize, tie_word_embeddings: bool) -> serde_json::Value {
    serde_json::json!({
        "architectures": [architecture],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 256,
        "eos_token_id": 257,
    })
}

/// Every tensor a checkpoint of `cfg` holds, with its shape, under HF names.
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let mut specs = vec![
        ("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        specs.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        specs.push((format!("{p}.input_layernorm.weight"), vec![h]));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        specs.push((format!("{p}.self_attn.q_proj.weight"), vec![cfg.num_heads * hd, h]));
        specs.push((format!("{p}.self_attn.k_proj.weight"), vec![cfg.num_kv_heads * hd, h]));
        specs.push((format!("{p}.self_attn.v_proj.weight"), vec![cfg.num_kv_heads * hd, h]));
        specs.push((format!("{p}.self_attn.o_proj.weight"), vec![h, cfg.num_heads * hd]));
        if cfg.attention_bias {
            specs.push((format!("{p}.self_attn.q_proj.bias"), vec![cfg.num_heads * hd]));
            specs.push((format!("{p}.self_attn.k_proj.bias"), vec![cfg.num_kv_heads * hd]));
            specs.push((format!("{p}.self_attn.v_proj.bias"), vec![cfg.num_kv_heads * hd]));
        }
        specs.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        specs.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        specs.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    specs
}

/// Writes `config.json` and `model.safetensors` (f32 random weights from `seed`) into `dir`.
pub fn write_tiny_model(dir: &Path, config: &serde_json::Value, seed: u64) -> Result<()> {
    write_tiny_model_as(dir, config, seed, DType::F32)
}

/// [`write_tiny_model`] with the tensors stored in `dtype` (an HF bf16 checkpoint, say).
pub fn write_tiny_model_as(dir: &Path, config: &serde_json::Value, seed: u64, dtype: DType) -> Result<()> {
    let cfg = ModelConfig::from_json(config)?;
    let src = DummySource::new(config.clone(), seed);
    let mut tensors = HashMap::new();
    for (name, shape) in tensor_specs(&cfg) {
        let t = src.load(&name, &shape, &Slice::Full, DType::F32, &Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(name, t);
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::ModelError::Config(format!("{}: {e}", dir.display())))?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config).expect("json"))
        .map_err(|e| crate::ModelError::Config(format!("{}: {e}", dir.display())))?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}
