//! Synthesizes an HF-style `config.json` object from GGUF metadata so the model code can treat
//! GGUF and safetensors checkpoints identically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{TensorInfo, Value};
use serde_json::json;

use crate::error::{Result, WeightsError};

/// Architectures we can serve, with whether llama.cpp permuted their q/k rows.
pub(crate) struct Arch {
    pub name: String,
    pub hf_class: &'static str,
    pub model_type: &'static str,
    pub rope_permuted: bool,
}

pub(crate) fn arch(file: &Path, metadata: &HashMap<String, Value>) -> Result<Arch> {
    let name = match metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(WeightsError::BadGguf {
                file: file.to_path_buf(),
                reason: "missing string metadata `general.architecture`".to_string(),
            })
        }
    };
    let (hf_class, model_type, rope_permuted) = match name.as_str() {
        // Mistral GGUFs are written with the llama converter (and its q/k permutation).
        "llama" | "mistral" => ("LlamaForCausalLM", "llama", true),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2", false),
        other => {
            return Err(WeightsError::BadGguf {
                file: file.to_path_buf(),
                reason: format!("unsupported architecture `{other}` (supported: llama, mistral, qwen2)"),
            })
        }
    };
    Ok(Arch { name, hf_class, model_type, rope_permuted })
}

fn as_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) => u64::try_from(*x).ok()?,
        Value::I16(x) => u64::try_from(*x).ok()?,
        Value::I32(x) => u64::try_from(*x).ok()?,
        Value::I64(x) => u64::try_from(*x).ok()?,
        _ => return None,
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => as_u64(other).map(|x| x as f64),
    }
}

/// Reads metadata for one GGUF file, producing `BadGguf` errors that name the key.
struct Meta<'a> {
    file: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn bad(&self, reason: String) -> WeightsError {
        WeightsError::BadGguf { file: self.file.to_path_buf(), reason }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(Some)
                .ok_or_else(|| self.bad(format!("metadata `{key}` is not an unsigned integer: {v:?}"))),
        }
    }

    fn req_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.bad(format!("missing metadata `{key}`")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v).map(Some).ok_or_else(|| self.bad(format!("metadata `{key}` is not a number: {v:?}"))),
        }
    }
}

/// Builds the HF config object. `tensors` is used for the tied-embedding check and as the
/// vocabulary-size fallback when the file carries no tokenizer.
pub(crate) fn synthesize(
    file: &Path,
    arch: &Arch,
    metadata: &HashMap<String, Value>,
    tensors: &HashMap<String, TensorInfo>,
) -> Result<serde_json::Value> {
    let m = Meta { file, md: metadata };
    let a = &arch.name;
    let hidden = m.req_u64(&format!("{a}.embedding_length"))?;
    let heads = m.req_u64(&format!("{a}.attention.head_count"))?;
    if heads == 0 {
        return Err(m.bad(format!("metadata `{a}.attention.head_count` is 0")));
    }
    let kv_heads = m.opt_u64(&format!("{a}.attention.head_count_kv"))?.unwrap_or(heads);
    let vocab = match metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens.len(),
        _ => tensors.get("token_embd.weight").map(|t| t.shape.dims()[0]).ok_or_else(|| {
            m.bad("no tokenizer.ggml.tokens and no token_embd.weight to size the vocabulary".to_string())
        })?,
    };
    let head_dim = m.opt_u64(&format!("{a}.attention.key_length"))?.unwrap_or(hidden / heads);

    let mut cfg = json!({
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "intermediate_size": m.req_u64(&format!("{a}.feed_forward_length"))?,
        "num_hidden_layers": m.req_u64(&format!("{a}.block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": m
            .opt_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| m.bad(format!("missing metadata `{a}.attention.layer_norm_rms_epsilon`")))?,
        "rope_theta": m.opt_f64(&format!("{a}.rope.freq_base"))?.unwrap_or(10000.0),
        "vocab_size": vocab,
        "tie_word_embeddings": !tensors.contains_key("output.weight"),
    });
    let obj = cfg.as_object_mut().expect("json! object");
    if let Some(ctx) = m.opt_u64(&format!("{a}.context_length"))? {
        obj.insert("max_position_embeddings".into(), ctx.into());
    }
    for (key, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = m.opt_u64(key)? {
            obj.insert(hf.into(), id.into());
        }
    }
    if let Some(scaling) = rope_scaling(&m, a)? {
        obj.insert("rope_scaling".into(), scaling);
    }
    Ok(cfg)
}

/// `rope_scaling` from `<arch>.rope.scaling.*`, absent when the type is missing or "none".
fn rope_scaling(m: &Meta<'_>, a: &str) -> Result<Option<serde_json::Value>> {
    let kind = match m.md.get(&format!("{a}.rope.scaling.type")) {
        Some(Value::String(s)) if s != "none" => s.clone(),
        _ => return Ok(None),
    };
    let mut s = json!({ "type": kind, "rope_type": kind });
    let obj = s.as_object_mut().expect("json! object");
    if let Some(f) = m.opt_f64(&format!("{a}.rope.scaling.factor"))? {
        obj.insert("factor".into(), f.into());
    }
    if let Some(n) = m.opt_u64(&format!("{a}.rope.scaling.original_context_length"))? {
        obj.insert("original_max_position_embeddings".into(), n.into());
    }
    Ok(Some(s))
}
