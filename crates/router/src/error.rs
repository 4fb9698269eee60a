//! Router errors, each mapping to one gRPC status and one HTTP status.

use shardline_engine::EngineError;
use shardline_tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The request is malformed or breaks a limit: INVALID_ARGUMENT / 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// The prompt could not be rendered or tokenized (a role the chat template refuses, a model
    /// without a template): INVALID_ARGUMENT / 400.
    #[error("the prompt could not be tokenized: {0}")]
    Prompt(#[from] TokenizerError),
    /// The waiting queue is full: RESOURCE_EXHAUSTED / 429.
    #[error("the server is at capacity ({0} requests in flight); retry later")]
    QueueFull(usize),
    /// The engine stopped (a rank failed or the server is shutting down): UNAVAILABLE / 503.
    #[error("the engine is not running: {0}")]
    Unavailable(String),
    /// The engine failed while generating this request: INTERNAL / 500.
    #[error("generation failed: {0}")]
    Internal(String),
}

impl From<EngineError> for RouterError {
    fn from(e: EngineError) -> Self {
        if e.is_invalid_request() {
            // Drop the engine's "invalid request: " prefix; the status already says so.
            let msg = e.to_string();
            RouterError::InvalidRequest(msg.strip_prefix("invalid request: ").unwrap_or(&msg).to_string())
        } else {
            RouterError::Internal(e.to_string())
        }
    }
}

impl From<RouterError> for tonic::Status {
    fn from(e: RouterError) -> Self {
        let msg = e.to_string();
        match e {
            RouterError::InvalidRequest(_) | RouterError::Prompt(_) => tonic::Status::invalid_argument(msg),
            RouterError::QueueFull(_) => tonic::Status::resource_exhausted(msg),
            RouterError::Unavailable(_) => tonic::Status::unavailable(msg),
            RouterError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
