//! Loading a Hugging Face tokenizer directory: `tokenizer.json` plus the optional
//! `tokenizer_config.json` (special tokens, `add_bos_token`, chat template), `chat_template.jinja` /
//! `chat_template.json` (where newer repos keep the template), `generation_config.json` (extra EOS
//! ids) and `config.json` (fallback bos/eos ids).

use std::path::Path;

use serde_json::Value;

use crate::error::{Result, TokenizerError};
use crate::Parts;

pub(crate) fn load(dir: &Path) -> Result<Parts> {
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(TokenizerError::MissingTokenizerJson { dir: dir.to_path_buf() });
    }
    let inner = tokenizers::Tokenizer::from_file(&tokenizer_json)
        .map_err(|e| TokenizerError::Load { path: tokenizer_json.clone(), message: e.to_string() })?;

    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let model_config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);

    let token_id = |field: &str| token_content(config.get(field)).and_then(|t| inner.token_to_id(t));
    let bos = token_id("bos_token")
        .or_else(|| ids(generation.get("bos_token_id")).first().copied())
        .or_else(|| ids(model_config.get("bos_token_id")).first().copied());

    let mut eos: Vec<u32> = token_id("eos_token").into_iter().collect();
    for id in ids(generation.get("eos_token_id")) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        eos = ids(model_config.get("eos_token_id"));
    }

    let add_bos = config.get("add_bos_token").and_then(Value::as_bool);
    let chat_template = chat_template(dir, &config)?;
    Ok(Parts { inner, bos, eos, add_bos, chat_template })
}

/// Parse a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TokenizerError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source })
}

/// A special token in tokenizer_config.json is either a string or a serialized `AddedToken`.
fn token_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// An id field that may be a single integer or a list of integers.
fn ids(v: Option<&Value>) -> Vec<u32> {
    let as_id = |v: &Value| v.as_u64().and_then(|i| u32::try_from(i).ok());
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(as_id).collect(),
        Some(v) => as_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// transformers' precedence: `chat_template.jinja`, then `chat_template.json`, then the
/// `chat_template` field of tokenizer_config.json (a string, or a list of named templates of which
/// we take "default").
fn chat_template(dir: &Path, config: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TokenizerError::Io { path: jinja, source }),
    }
    if let Some(v) = read_json(&dir.join("chat_template.json"))? {
        if let Some(t) = template_field(v.get("chat_template")) {
            return Ok(Some(t));
        }
    }
    Ok(template_field(config.get("chat_template")))
}

fn template_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}
