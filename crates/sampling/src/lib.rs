//! Turning a row of logits into the next token, and deciding when a sequence is done, with the
//! semantics vLLM and TGI users expect (parameter names, order of logit processors, logprobs of
//! the raw distribution, stop strings excluded from the output).

mod candidates;
mod error;
mod logprobs;
mod params;
mod sampler;
mod stop;

pub use candidates::{Candidates, MAX_CANDIDATES};
pub use error::SamplingError;
pub use logprobs::{log_softmax_top, logprob_of, score_token, ScoredToken, TokenLogprob};
pub use params::{SamplingParams, MAX_LOGPROBS};
pub use sampler::{draw, SampledToken, Sampler, SamplerSettings};
pub use stop::{check_token_stop, FinishReason, StopMatcher, StopOutcome};
