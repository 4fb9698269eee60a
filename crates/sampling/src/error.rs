//! Validation errors for sampling parameters, worded so a caller can fix the request.

/// Why a [`crate::SamplingParams`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A numeric field outside its range, e.g. "temperature must be >= 0, got -1".
    #[error("{field} must be {rule}, got {value}")]
    OutOfRange { field: &'static str, rule: &'static str, value: String },
    /// An empty stop string would match everywhere and end generation at once.
    #[error("stop strings must not be empty")]
    EmptyStop,
    #[error("stop_token_id {id} is outside the vocabulary (size {vocab_size})")]
    StopTokenOutOfVocab { id: u32, vocab_size: usize },
}
