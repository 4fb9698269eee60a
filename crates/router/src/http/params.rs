//! OpenAI requests → the engine's prompt token ids and sampling parameters. Prompts are
//! rendered and tokenized here, so template errors become 400s naming `messages`.

use shardline_engine::GenerationOutput;
use shardline_sampling::SamplingParams;
use shardline_tokenizer::{ChatMessage, Prompt, Tokenizer};

use super::error::ApiError;
use super::structured::constraint;
use super::tools::ToolSet;
use crate::engine_core::{CoreEvent, Submitted};
use crate::error::RouterError;
use crate::openai::{ChatCompletionRequest, CompletionRequest, PromptInput, StopInput, StreamOptions};
use crate::ServerInfo;

/// The shared sampling fields of a completion or chat-completion request (both structs carry
/// them under the same names, as OpenAI's API does).
macro_rules! knobs {
    ($req:expr) => {
        Knobs {
            temperature: $req.temperature,
            top_p: $req.top_p,
            top_k: $req.top_k,
            min_p: $req.min_p,
            repetition_penalty: $req.repetition_penalty,
            seed: $req.seed,
            stop: &$req.stop,
            stop_token_ids: &$req.stop_token_ids,
            ignore_eos: $req.ignore_eos,
            n: $req.n,
            presence_penalty: $req.presence_penalty,
            frequency_penalty: $req.frequency_penalty,
            logit_bias: &$req.logit_bias,
        }
    };
}

/// Most samples one request may ask for (`n`).
const MAX_N: usize = 64;

/// The sampling fields both endpoints share.
pub(super) struct Knobs<'a> {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: &'a Option<StopInput>,
    stop_token_ids: &'a Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    n: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: &'a Option<serde_json::Map<String, serde_json::Value>>,
}

impl Knobs<'_> {
    pub(super) fn params(&self, max_tokens: usize, logprobs: Option<usize>) -> Result<SamplingParams, ApiError> {
        if let Some(n) = self.n.filter(|&n| n == 0 || n > MAX_N) {
            return Err(ApiError::bad_request(format!("n must be in [1, {MAX_N}], got {n}")).with_param("n"));
        }
        let logit_bias = self.logit_bias()?;
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(
                    ApiError::bad_request(format!("top_k must be -1 (off) or positive, got {k}")).with_param("top_k")
                )
            }
        };
        let d = SamplingParams::default();
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias,
            seed: self.seed,
            logprobs,
            max_tokens,
            stop: self.stop.clone().map(|s| s.0).unwrap_or_default(),
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            constraint: None,
            prompt_logprobs: None,
        })
    }
}

impl Knobs<'_> {
    /// `n` samples of `params`: a seeded request's i-th sample uses seed + i, so that they
    /// differ and each repeats (unseeded ones get the engine's own random seeds).
    pub(super) fn samples(&self, params: SamplingParams) -> Vec<SamplingParams> {
        (0..self.n.unwrap_or(1) as u64)
            .map(|i| SamplingParams { seed: params.seed.map(|s| s.wrapping_add(i)), ..params.clone() })
            .collect()
    }

    /// OpenAI's `logit_bias`: token ids as JSON object keys ("50256": -100), biases as numbers;
    /// ranges are the engine's to check.
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let bad = |m: String| Err(ApiError::bad_request(m).with_param("logit_bias"));
        let mut out = Vec::new();
        for (key, value) in self.logit_bias.iter().flatten() {
            let Ok(id) = key.trim().parse::<u32>() else {
                return bad(format!("logit_bias keys must be token ids, got `{key}`"));
            };
            let Some(bias) = value.as_f64() else {
                return bad(format!("logit_bias[{key}] must be a number, got {value}"));
            };
            out.push((id, bias as f32));
        }
        out.sort_unstable_by_key(|b| b.0);
        Ok(out)
    }
}

/// Whether to stream, and whether to send a usage chunk at the end.
pub(super) fn stream_mode(stream: Option<bool>, options: &Option<StreamOptions>) -> Result<(bool, bool), ApiError> {
    let stream = stream.unwrap_or(false);
    if options.is_some() && !stream {
        return Err(
            ApiError::bad_request("stream_options is only allowed with stream = true").with_param("stream_options")
        );
    }
    let usage = options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok((stream, usage))
}

/// vLLM's `prompt_logprobs` come whole with the response, so not with a stream (as vLLM).
fn no_streamed_prompt_logprobs(prompt_logprobs: Option<usize>, stream: Option<bool>) -> Result<(), ApiError> {
    match (prompt_logprobs, stream) {
        (Some(_), Some(true)) => {
            Err(ApiError::bad_request("prompt_logprobs are not available when stream = true")
                .with_param("prompt_logprobs"))
        }
        _ => Ok(()),
    }
}

pub(super) fn completion_prompt_and_params(
    req: &CompletionRequest,
    info: &ServerInfo,
) -> Result<(Vec<u32>, Vec<SamplingParams>), ApiError> {
    no_streamed_prompt_logprobs(req.prompt_logprobs, req.stream)?;
    if let Some(b) = req.best_of.filter(|&b| b != 1) {
        return Err(ApiError::bad_request(format!("best_of = {b} is not supported")).with_param("best_of"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("suffix is not supported").with_param("suffix"));
    }
    let prompt = match &req.prompt {
        PromptInput::Text(t) if t.is_empty() => None,
        PromptInput::Tokens(ids) if ids.is_empty() => None,
        PromptInput::Text(t) => Some(Prompt::Text(t.clone())),
        PromptInput::Tokens(ids) => Some(Prompt::Tokens(ids.clone())),
    }
    .ok_or_else(|| ApiError::bad_request("the prompt is empty").with_param("prompt"))?;
    let knobs = knobs!(req);
    let mut params = knobs.params(req.max_tokens.unwrap_or(16), req.logprobs)?;
    params.constraint = constraint(&req.structured)?;
    // `echo` with `logprobs` lists the prompt's tokens with theirs. Every sample scores its
    // prompt (rather than share the first's): samples then never wait on each other's scores.
    let echo_top = req.logprobs.filter(|_| req.echo == Some(true));
    params.prompt_logprobs = echo_top.into_iter().chain(req.prompt_logprobs).max();
    let ids = info.encode(&prompt).map_err(|e| ApiError::from(e).with_param("prompt"))?;
    Ok((ids, knobs.samples(params)))
}

/// A chat request made ready for the engine.
pub(super) struct ChatPlan {
    pub(super) prompt: Vec<u32>,
    /// One per choice (`n`).
    pub(super) samples: Vec<SamplingParams>,
    pub(super) tools: Option<ToolSet>,
}

pub(super) fn chat_prompt_and_params(req: &ChatCompletionRequest, info: &ServerInfo) -> Result<ChatPlan, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
    }
    no_streamed_prompt_logprobs(req.prompt_logprobs, req.stream)?;
    let tools = ToolSet::parse(&req.tools, &req.tool_choice)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::bad_request("top_logprobs requires logprobs = true").with_param("top_logprobs"))
        }
        (_, Some(k)) if k > shardline_sampling::MAX_LOGPROBS => {
            return Err(ApiError::bad_request(format!(
                "top_logprobs must be at most {}, got {k}",
                shardline_sampling::MAX_LOGPROBS
            ))
            .with_param("top_logprobs"))
        }
        (true, k) => Some(k.unwrap_or(0)),
        (false, _) => None,
    };
    let tok = &info.tokenizer;
    if tok.chat_template().is_none() {
        return Err(ApiError::bad_request(
            "this model has no chat template; use /v1/completions with a formatted prompt",
        ));
    }
    let messages: Vec<ChatMessage> = req.messages.iter().map(history_message).collect();
    let rendered = render_chat(tok, messages, tools.as_ref().zip(req.tools.as_deref()))?;
    let ids = tok.encode(&rendered, false).map_err(|e| ApiError::from(RouterError::Prompt(e)))?;
    // Without a limit: the rest of the context; 1 when nothing is left, so the engine reports it.
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or_else(|| info.limits.max_request_tokens().saturating_sub(ids.len()).max(1));
    let knobs = knobs!(req);
    let mut params = knobs.params(max_tokens, logprobs)?;
    params.constraint = constraint(&req.structured)?;
    params.prompt_logprobs = req.prompt_logprobs;
    if let Some(tools) = &tools {
        if params.constraint.is_some() {
            return Err(ApiError::bad_request("give tools or a structured-output constraint, not both"));
        }
        params.constraint = Some(tools.constraint());
    }
    Ok(ChatPlan { prompt: ids, samples: knobs.samples(params), tools })
}

/// The prompt of a chat: the template's own tools section describes the tools if it has one
/// (it then renders differently with them), otherwise a system message does. Rendering here
/// turns template errors (e.g. a role the template refuses) into 400s.
fn render_chat(
    tok: &Tokenizer,
    mut messages: Vec<ChatMessage>,
    tools: Option<(&ToolSet, &[serde_json::Value])>,
) -> Result<String, ApiError> {
    let template_error =
        |e| ApiError::bad_request(format!("the chat template failed on these messages: {e}")).with_param("messages");
    let plain = tok.apply_chat_template(&messages, true).map_err(template_error)?;
    let Some((tools, list)) = tools else { return Ok(plain) };
    let with_tools = tok.apply_chat_template_with_tools(&messages, list, true).map_err(template_error)?;
    if with_tools != plain {
        return Ok(with_tools);
    }
    messages.insert(0, ChatMessage::new("system".to_string(), tools.system_prompt()));
    tok.apply_chat_template(&messages, true).map_err(template_error)
}

/// A history message as the template sees it: an assistant turn that called a tool shows
/// the call as the JSON the model wrote.
fn history_message(m: &crate::openai::ChatMessageIn) -> ChatMessage {
    let call = m.tool_calls.as_ref().and_then(|calls| calls.first()).and_then(|c| c.get("function"));
    let content = match call {
        Some(f) => {
            let arguments = f.get("arguments").and_then(|a| a.as_str()).and_then(|a| serde_json::from_str(a).ok());
            serde_json::json!({"name": f.get("name"), "arguments": arguments.unwrap_or_else(|| serde_json::json!({}))})
                .to_string()
        }
        None => m.content.0.clone(),
    };
    ChatMessage::new(m.role.clone(), content)
}

/// Waits for every sample's result, in order (they run at once in the engine).
pub(super) async fn collect_all(subs: Vec<Submitted>) -> Result<Vec<GenerationOutput>, ApiError> {
    let mut outs = Vec::with_capacity(subs.len());
    for sub in subs {
        outs.push(collect(sub).await?);
    }
    Ok(outs)
}

/// Waits for the request's result.
pub(super) async fn collect(mut sub: Submitted) -> Result<GenerationOutput, ApiError> {
    while let Some(ev) = sub.events.recv().await {
        match ev {
            CoreEvent::Token(_) => {}
            CoreEvent::Finished(out) => return Ok(*out),
            CoreEvent::Failed(msg) => return Err(RouterError::Internal(msg).into()),
        }
    }
    Err(RouterError::Unavailable("it stopped before the request finished".into()).into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A tokenizer whose chat template is `template`.
    fn tokenizer(template: &str) -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let json = shardline_tokenizer::testing::tiny_tokenizer_json(300);
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
        Tokenizer::from_dir(dir.path()).unwrap()
    }

    #[test]
    fn tools_are_described_by_the_template_when_it_can_else_by_a_system_message() {
        let list = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        let tools = ToolSet::parse(&Some(list.clone()), &None).unwrap().unwrap();
        let messages = vec![ChatMessage::new("user", "Hi")];
        let own = "{% if tools %}[tools: {{ tools[0].function.name }}]{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
        let rendered = render_chat(&tokenizer(own), messages.clone(), Some((&tools, &list))).unwrap();
        assert_eq!(rendered, "[tools: get_weather]<user>Hi");
        let plain = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
        let rendered = render_chat(&tokenizer(plain), messages.clone(), Some((&tools, &list))).unwrap();
        assert_eq!(rendered, format!("<system>{}<user>Hi", tools.system_prompt()));
        assert_eq!(render_chat(&tokenizer(own), messages, None).unwrap(), "<user>Hi");
    }
}
