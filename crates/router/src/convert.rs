//! Between the public protobuf API (`shardline.v1`) and the engine's types.

use shardline_engine::{GenerationMetrics, GenerationOutput, TokenLogprobs};
use shardline_proto::v1 as pb;
use shardline_sampling::{FinishReason, SamplingParams};
use shardline_tokenizer::{ChatMessage, Prompt};

use crate::error::RouterError;
use shardline_structured::Constraint;

/// The prompt a request carries; an empty one is refused here (text would otherwise still
/// tokenize to a lone BOS).
pub fn prompt(input: Option<pb::generate_request::Input>) -> Result<Prompt, RouterError> {
    use pb::generate_request::Input;
    let invalid = |m: &str| Err(RouterError::InvalidRequest(m.to_string()));
    match input {
        None => invalid("the request has no input: set `text`, `token_ids` or `chat`"),
        Some(Input::Text(t)) if t.is_empty() => invalid("the prompt is empty"),
        Some(Input::Text(t)) => Ok(Prompt::Text(t)),
        Some(Input::TokenIds(t)) if t.ids.is_empty() => invalid("the prompt is empty"),
        Some(Input::TokenIds(t)) => Ok(Prompt::Tokens(t.ids)),
        Some(Input::Chat(c)) if c.messages.is_empty() => invalid("the chat has no messages"),
        Some(Input::Chat(c)) => {
            Ok(Prompt::Chat(c.messages.into_iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect()))
        }
    }
}

/// vLLM's defaults for every unset field; ranges and constraints are checked later by the
/// engine (a JSON schema that is not JSON is refused here).
pub fn sampling(p: Option<pb::SamplingParameters>) -> Result<SamplingParams, RouterError> {
    let d = SamplingParams::default();
    let Some(p) = p else { return Ok(d) };
    let constraint = match p.constraint {
        None | Some(pb::sampling_parameters::Constraint::JsonObject(false)) => None,
        Some(pb::sampling_parameters::Constraint::JsonObject(true)) => Some(Constraint::JsonObject),
        Some(pb::sampling_parameters::Constraint::JsonSchema(s)) => Some(Constraint::JsonSchema(
            serde_json::from_str(&s)
                .map_err(|e| RouterError::InvalidRequest(format!("json_schema is not JSON: {e}")))?,
        )),
        Some(pb::sampling_parameters::Constraint::Regex(r)) => Some(Constraint::Regex(r)),
        Some(pb::sampling_parameters::Constraint::Choice(c)) => Some(Constraint::Choice(c.options)),
        Some(pb::sampling_parameters::Constraint::Grammar(g)) => Some(Constraint::Grammar(g)),
    };
    Ok(SamplingParams {
        temperature: p.temperature.unwrap_or(d.temperature),
        top_p: p.top_p.unwrap_or(d.top_p),
        top_k: p.top_k.map_or(d.top_k, |k| k as usize),
        min_p: p.min_p.unwrap_or(d.min_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: p.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(d.frequency_penalty),
        logit_bias: {
            let mut bias: Vec<(u32, f32)> = p.logit_bias.into_iter().collect();
            bias.sort_unstable_by_key(|b| b.0);
            bias
        },
        seed: p.seed.or(d.seed),
        max_tokens: p.max_tokens.map_or(d.max_tokens, |m| m as usize),
        stop: p.stop,
        stop_token_ids: p.stop_token_ids,
        ignore_eos: p.ignore_eos,
        logprobs: p.logprobs.map(|k| k as usize).or(d.logprobs),
        // The gRPC API streams tokens; the prompt's scores are an HTTP (vLLM) extra.
        prompt_logprobs: None,
        constraint,
    })
}

pub fn finish_reason(f: FinishReason) -> pb::FinishReason {
    match f {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
    }
}

pub fn logprobs(l: &TokenLogprobs) -> pb::TokenLogprobs {
    pb::TokenLogprobs {
        token_id: l.token_id,
        logprob: l.logprob,
        top: l.top.iter().map(|t| pb::TopLogprob { token_id: t.token_id, logprob: t.logprob }).collect(),
    }
}

pub fn timings(m: &GenerationMetrics) -> pb::Timings {
    pb::Timings {
        queue_ms: m.queue_ms,
        prefill_ms: m.prefill_ms,
        decode_ms: m.decode_ms,
        ttft_ms: m.ttft_ms,
        e2e_ms: m.e2e_ms,
    }
}

pub fn usage(out: &GenerationOutput) -> pb::Usage {
    pb::Usage {
        prompt_tokens: out.prompt_token_ids.len() as u32,
        completion_tokens: out.token_ids.len() as u32,
        cached_prompt_tokens: out.num_cached_tokens as u32,
    }
}

pub fn response(request_id: String, out: &GenerationOutput) -> pb::GenerateResponse {
    pb::GenerateResponse {
        request_id,
        text: out.text.clone(),
        prompt_token_ids: out.prompt_token_ids.clone(),
        token_ids: out.token_ids.clone(),
        finish_reason: finish_reason(out.finish_reason) as i32,
        logprobs: out.logprobs.iter().flatten().map(logprobs).collect(),
        usage: Some(usage(out)),
        timings: Some(timings(&out.metrics)),
    }
}

/// The stream's last message: no new text, just how it ended.
pub fn final_chunk(request_id: String, out: &GenerationOutput) -> pb::GenerateStreamResponse {
    pb::GenerateStreamResponse {
        request_id,
        finish_reason: finish_reason(out.finish_reason) as i32,
        usage: Some(usage(out)),
        timings: Some(timings(&out.metrics)),
        ..Default::default()
    }
}
