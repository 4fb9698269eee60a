//! GGUF → `tokenizers::Tokenizer` conversion.
//!
//! A GGUF file carries no tokenizer.json; llama.cpp stores the vocabulary, merges / scores, token
//! types and special ids as `tokenizer.ggml.*` metadata. We rebuild an equivalent HF tokenizer from
//! it, following llama.cpp's `llama-vocab.cpp` (and transformers' GGUF integration where llama.cpp
//! has no HF-side equivalent): `gpt2` → byte-level BPE (see [`byte_level`]), `llama` →
//! SentencePiece-style BPE with byte fallback (see [`spm`]).

pub(crate) mod byte_level;
mod meta;
mod spm;

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::AddedToken;

use crate::error::{Result, TokenizerError};
use crate::Parts;
use meta::Meta;

pub(crate) use byte_level::byte_alphabet;

/// llama.cpp token types (`enum llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Read the metadata of a GGUF file (header only, tensor data is not touched) and convert it.
pub(crate) fn load(path: &Path) -> Result<Parts> {
    let file = std::fs::File::open(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| TokenizerError::GgufRead { path: path.to_path_buf(), message: e.to_string() })?;
    from_metadata(path, &content.metadata)
}

/// Convert already-read GGUF metadata; `path` is only used in error messages.
pub(crate) fn from_metadata(
    path: &Path,
    metadata: &std::collections::HashMap<String, gguf_file::Value>,
) -> Result<Parts> {
    let meta = Meta::new(path, metadata);
    let model = meta.required_string("tokenizer.ggml.model")?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?;
    let token_types = meta.i32s("tokenizer.ggml.token_type")?;
    if let Some(types) = &token_types {
        if types.len() != tokens.len() {
            return Err(meta.bad_value(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }
    }
    let bos = meta.u32("tokenizer.ggml.bos_token_id")?;
    let eos = meta.u32("tokenizer.ggml.eos_token_id")?;
    let unk = meta.u32("tokenizer.ggml.unknown_token_id")?;
    for (key, id) in [("bos", bos), ("eos", eos), ("unknown", unk)] {
        if let Some(id) = id {
            if id as usize >= tokens.len() {
                return Err(meta.bad_value(
                    &format!("tokenizer.ggml.{key}_token_id"),
                    format!("id {id} is outside the {}-token vocabulary", tokens.len()),
                ));
            }
        }
    }
    // CONTROL (and UNKNOWN) tokens become special added tokens, USER_DEFINED ones plain added
    // tokens: either way they are matched whole in the input text, as llama.cpp does.
    // bos/eos/unk are made special even when the file mislabels them, as transformers does.
    let forced: Vec<u32> = [bos, eos, unk].into_iter().flatten().collect();
    let flags = special_flags(&tokens, token_types.as_deref(), &forced);
    let build_err =
        |message: String| TokenizerError::GgufBuild { path: path.to_path_buf(), kind: model.to_string(), message };

    // llama.cpp's defaults when the file does not say: SPM vocabularies add BOS, BPE ones do not.
    let (mut inner, default_add_bos) = match model {
        "gpt2" => {
            let merges = meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| meta.missing("tokenizer.ggml.merges"))?;
            let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
            let tok = byte_level::build(&tokens, &merges, &flags, pre).map_err(build_err)?;
            (tok, false)
        }
        "llama" => {
            let scores = meta.f32s("tokenizer.ggml.scores")?;
            let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let unk_token = unk.map(|id| tokens[id as usize]);
            let merges = meta.strings("tokenizer.ggml.merges")?;
            let tok = spm::build(&tokens, merges.as_deref(), scores.as_deref(), unk_token, add_space_prefix)
                .map_err(build_err)?;
            (tok, true)
        }
        other => {
            return Err(TokenizerError::GgufUnsupportedModel { path: path.to_path_buf(), model: other.to_string() })
        }
    };

    let mut specials = Vec::new();
    let mut user_defined = Vec::new();
    for (token, flag) in tokens.iter().zip(&flags) {
        match flag {
            Some(true) => specials.push(AddedToken::from(*token, true)),
            Some(false) => user_defined.push(AddedToken::from(*token, false).normalized(false)),
            None => {}
        }
    }
    inner.add_special_tokens(&specials);
    inner.add_tokens(&user_defined);

    let mut eos_ids: Vec<u32> = eos.into_iter().collect();
    // llama.cpp stops generation on end-of-turn / end-of-message tokens too (`llama_vocab_is_eog`).
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = meta.u32(key)? {
            if (id as usize) < tokens.len() && !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    let chat_template = meta.string("tokenizer.chat_template")?.map(str::to_string);
    Ok(Parts { inner, bos, eos: eos_ids, add_bos: Some(add_bos), chat_template })
}

/// Per token: `Some(true)` special added token, `Some(false)` non-special added token, `None` plain
/// vocabulary entry. `forced` ids are special whatever their type.
fn special_flags(tokens: &[&str], types: Option<&[i32]>, forced: &[u32]) -> Vec<Option<bool>> {
    (0..tokens.len())
        .map(|i| {
            if forced.contains(&(i as u32)) {
                return Some(true);
            }
            match types.map(|t| t[i]) {
                Some(TOKEN_TYPE_CONTROL) | Some(TOKEN_TYPE_UNKNOWN) => Some(true),
                Some(TOKEN_TYPE_USER_DEFINED) => Some(false),
                _ => None,
            }
        })
        .collect()
}
