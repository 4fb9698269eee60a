//! Turning a row of logits into the next token, and deciding when a sequence is done, with the
//! semantics vLLM and TGI users expect (parameter names, order of logit processors, logprobs of
//! the raw distribution, stop strings excluded from the output).

mod params;
mod sampler;
mod stop;

pub use params::{SamplingError, SamplingParams, MAX_LOGPROBS};
pub use sampler::{log_softmax_top, logprob_of, SampledToken, Sampler, TokenLogprob};
pub use stop::{check_token_stop, FinishReason, StopMatcher, StopOutcome};
