//! Error type for every weight source: each variant names the tensor and/or file it concerns so a
//! failure in a multi-rank load can be traced to the exact artifact without re-running.

use std::path::PathBuf;

/// Everything that can go wrong while locating, fetching, opening or reading model weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("tensor `{name}` not found in {file}")]
    MissingTensor { name: String, file: String },

    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { name: String, file: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("tensor `{name}` in {file} needs bytes up to offset {needed} but the file is only {len} bytes long (truncated?)")]
    Truncated { name: String, file: String, needed: u64, len: u64 },

    #[error("tensor `{name}` in {file} has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, file: String, dtype: String },

    #[error("invalid slice {slice} for tensor `{name}` of shape {shape:?} in {file}")]
    BadSlice { name: String, file: String, slice: String, shape: Vec<usize> },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("bad safetensors header in {file}: {reason}")]
    BadHeader { file: PathBuf, reason: String },

    #[error("bad index {file}: {reason}")]
    BadIndex { file: PathBuf, reason: String },

    #[error("bad model config {file}: {reason}")]
    BadConfig { file: PathBuf, reason: String },

    #[error("bad GGUF file {file}: {reason}")]
    BadGguf { file: PathBuf, reason: String },

    #[error("{path} is not a model: expected a directory with config.json and model.safetensors (or model.safetensors.index.json), or a .gguf file")]
    UnknownFormat { path: PathBuf },

    #[error("unknown model `{spec}`: not an existing path and not a known alias (known aliases: {known})")]
    UnknownModel { spec: String, known: String },

    #[error("fetching {what} failed: {reason}")]
    Fetch { what: String, reason: String },

    #[error("sha256 mismatch for {file}: expected {expected}, got {actual}")]
    HashMismatch { file: String, expected: String, actual: String },

    #[error("tensor `{name}` from {file}: {source}")]
    Candle {
        name: String,
        file: String,
        // Boxed: candle's error is large and would bloat every `Result` in the crate.
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, WeightsError>;

impl WeightsError {
    /// Wraps an `std::io::Error` together with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WeightsError::Io { path: path.into(), source }
    }

    /// Wraps a candle error with the tensor and file being processed.
    pub(crate) fn candle(name: &str, file: impl ToString, source: candle_core::Error) -> Self {
        WeightsError::Candle { name: name.to_string(), file: file.to_string(), source: Box::new(source) }
    }
}
