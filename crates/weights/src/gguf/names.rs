//! Translation of HF/transformers tensor names to llama.cpp GGUF tensor names.

/// Which q/k projection a name refers to; those rows were permuted by llama.cpp's converter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RopeProj {
    Q,
    K,
}

/// A resolved GGUF name plus whether the tensor is a rotary q/k projection (weight or bias).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GgufName {
    pub name: String,
    pub rope: Option<RopeProj>,
}

/// Maps an HF name ("model.layers.3.self_attn.q_proj.weight") to its GGUF name
/// ("blk.3.attn_q.weight"); `None` for names with no GGUF counterpart.
pub(crate) fn hf_to_gguf(hf: &str) -> Option<GgufName> {
    let plain = |s: &str| Some(GgufName { name: s.to_string(), rope: None });
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight"),
        "model.norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let (gguf, rope) = match module {
        "input_layernorm" => ("attn_norm", None),
        "post_attention_layernorm" => ("ffn_norm", None),
        "self_attn.q_proj" => ("attn_q", Some(RopeProj::Q)),
        "self_attn.k_proj" => ("attn_k", Some(RopeProj::K)),
        "self_attn.v_proj" => ("attn_v", None),
        "self_attn.o_proj" => ("attn_output", None),
        "mlp.gate_proj" => ("ffn_gate", None),
        "mlp.up_proj" => ("ffn_up", None),
        "mlp.down_proj" => ("ffn_down", None),
        _ => return None,
    };
    Some(GgufName { name: format!("blk.{layer}.{gguf}.{suffix}"), rope })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_globals_and_layers() {
        assert_eq!(hf_to_gguf("model.embed_tokens.weight").unwrap().name, "token_embd.weight");
        assert_eq!(hf_to_gguf("model.norm.weight").unwrap().name, "output_norm.weight");
        assert_eq!(hf_to_gguf("lm_head.weight").unwrap().name, "output.weight");
        let q = hf_to_gguf("model.layers.12.self_attn.q_proj.bias").unwrap();
        assert_eq!(q.name, "blk.12.attn_q.bias");
        assert_eq!(q.rope, Some(RopeProj::Q));
        let k = hf_to_gguf("model.layers.0.self_attn.k_proj.weight").unwrap();
        assert_eq!((k.name.as_str(), k.rope), ("blk.0.attn_k.weight", Some(RopeProj::K)));
        let d = hf_to_gguf("model.layers.7.mlp.down_proj.weight").unwrap();
        assert_eq!((d.name.as_str(), d.rope), ("blk.7.ffn_down.weight", None));
        assert_eq!(hf_to_gguf("model.layers.3.post_attention_layernorm.weight").unwrap().name, "blk.3.ffn_norm.weight");
        assert_eq!(hf_to_gguf("model.layers.3.self_attn.o_proj.weight").unwrap().name, "blk.3.attn_output.weight");
    }

    #[test]
    fn rejects_unknown_names() {
        assert!(hf_to_gguf("model.layers.x.mlp.up_proj.weight").is_none());
        assert!(hf_to_gguf("model.layers.1.mlp.experts.weight").is_none());
        assert!(hf_to_gguf("model.layers.1.mlp.up_proj.scale").is_none());
        assert!(hf_to_gguf("transformer.wte.weight").is_none());
    }
}
