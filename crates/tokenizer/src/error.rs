//! Error type for everything this crate does: loading tokenizer files, converting GGUF metadata,
//! encoding/decoding, and rendering chat templates.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer path {path} does not exist")]
    PathNotFound { path: PathBuf },

    #[error("tokenizer directory {dir} has no tokenizer.json")]
    MissingTokenizerJson { dir: PathBuf },

    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to parse JSON file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("failed to load tokenizer from {path}: {message}")]
    Load { path: PathBuf, message: String },

    #[error("failed to read GGUF metadata from {path}: {message}")]
    GgufRead { path: PathBuf, message: String },

    #[error("GGUF file {path} has no metadata key `{key}`")]
    GgufMissingKey { path: PathBuf, key: String },

    #[error("GGUF metadata key `{key}` in {path} has an unexpected type: {message}")]
    GgufBadValue { path: PathBuf, key: String, message: String },

    #[error("GGUF file {path} uses tokenizer model `{model}`, which is not supported (supported: gpt2, llama)")]
    GgufUnsupportedModel { path: PathBuf, model: String },

    #[error("failed to build the `{kind}` tokenizer from GGUF file {path}: {message}")]
    GgufBuild { path: PathBuf, kind: String, message: String },

    #[error("failed to encode text ({len} bytes): {message}")]
    Encode { len: usize, message: String },

    #[error("failed to decode {count} token ids: {message}")]
    Decode { count: usize, message: String },

    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    UnknownTokenId { id: u32, vocab_size: usize },

    #[error("this tokenizer has no chat template (no `chat_template` in tokenizer_config.json / GGUF `tokenizer.chat_template`)")]
    NoChatTemplate,

    #[error("chat template failed: {message}")]
    ChatTemplate { message: String },
}
