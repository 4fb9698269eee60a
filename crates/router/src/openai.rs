//! OpenAI-compatible wire types for [`crate::http`]: request bodies as clients send them (with
//! vLLM's extensions `top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`, `ignore_eos`) and
//! response bodies and stream chunks in OpenAI's shapes.
//!
//! Request fields are typed so that serde rejects wrong values (a negative `max_tokens`, a
//! string where a number belongs); fields that accept several JSON shapes (`prompt`, `stop`,
//! message `content`) have hand-written deserializers that name what they expected. Unknown
//! fields are ignored, as OpenAI and vLLM do.

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;
use shardline_engine::GenerationOutput;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `prompt` of `/v1/completions`: one text or one list of token ids. A list holding a single
/// text or a single token list is unwrapped; batches of several prompts are refused (one
/// prompt per request).
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl<'de> Deserialize<'de> for PromptInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        prompt_from_value(Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn token_ids(items: &[Value]) -> Result<Vec<u32>, String> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("token ids must be non-negative integers, got {v}"))
        })
        .collect()
}

fn prompt_from_value(v: Value) -> Result<PromptInput, String> {
    const BATCH: &str = "batched prompts are not supported; send one prompt per request";
    match v {
        Value::String(s) => Ok(PromptInput::Text(s)),
        Value::Array(items) => match items.first() {
            None => Ok(PromptInput::Tokens(Vec::new())),
            Some(Value::String(_)) | Some(Value::Array(_)) if items.len() > 1 => {
                Err(format!("{BATCH} (got {} prompts)", items.len()))
            }
            Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
            Some(Value::Array(inner)) => Ok(PromptInput::Tokens(token_ids(inner)?)),
            Some(_) => Ok(PromptInput::Tokens(token_ids(&items)?)),
        },
        other => Err(format!("expected a string or an array of token ids, got {}", json_kind(&other))),
    }
}

/// `stop`: one string or a list of strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopInput(pub Vec<String>);

impl<'de> Deserialize<'de> for StopInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let bad =
            |v: &Value| de::Error::custom(format!("expected a string or an array of strings, got {}", json_kind(v)));
        match &v {
            Value::Null => Ok(StopInput(Vec::new())),
            Value::String(s) => Ok(StopInput(vec![s.clone()])),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| bad(i)))
                .collect::<Result<_, _>>()
                .map(StopInput),
            other => Err(bad(other)),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The structured-output fields of both endpoints.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StructuredOutputFields {
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": …}}`.
    pub response_format: Option<Value>,
    /// vLLM's structured-output extras: a JSON schema, a regex, a list of choices, a Lark
    /// grammar; or all of them under `structured_outputs` (`json`, `regex`, `choice`, `grammar`).
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub structured_outputs: Option<Value>,
}

/// Body of `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    /// OpenAI's default is 16.
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM extension; -1 or 0 turn it off.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    /// Top logprobs per token (0: only the chosen token's). With `echo`, the prompt's tokens
    /// get theirs too.
    pub logprobs: Option<usize>,
    /// vLLM's: top logprobs per prompt token, returned as each choice's `prompt_logprobs`.
    pub prompt_logprobs: Option<usize>,
    pub n: Option<usize>,
    pub best_of: Option<usize>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Structured outputs (`response_format`, vLLM's `guided_*`, `structured_outputs`).
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// A chat message's `content`: a string, a list of `{"type": "text", "text": ...}` parts
/// (joined with newlines, as vLLM does), or null (an empty message).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageContent(pub String);

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v {
            Value::Null => Ok(MessageContent(String::new())),
            Value::String(s) => Ok(MessageContent(s)),
            Value::Array(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in &parts {
                    let kind = part.get("type").and_then(Value::as_str);
                    match (kind, part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(text)) => texts.push(text.to_string()),
                        (Some("text"), None) => {
                            return Err(de::Error::custom("a content part of type `text` needs a string `text`"))
                        }
                        (Some(other), _) => {
                            return Err(de::Error::custom(format!(
                                "content parts of type `{other}` are not supported; only `text` is"
                            )))
                        }
                        (None, _) => {
                            return Err(de::Error::custom("each content part must be an object with a `type`"))
                        }
                    }
                }
                Ok(MessageContent(texts.join("\n")))
            }
            other => Err(de::Error::custom(format!(
                "expected a string or an array of content parts, got {}",
                json_kind(&other)
            ))),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: MessageContent,
    /// An assistant turn's calls (rendered back into the prompt as the call JSON).
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; either is accepted (the
    /// latter wins).
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    /// vLLM's: top logprobs per prompt token, returned as the response's `prompt_logprobs`.
    pub prompt_logprobs: Option<usize>,
    pub n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": …}}`.
    pub tool_choice: Option<Value>,
    /// Structured outputs (`response_format`, vLLM's `guided_*`, `structured_outputs`).
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// The usage of a request's samples (`n`): the prompt counted once (and its cache hits
    /// as the first sample saw them), every sample's completion tokens.
    pub fn of_samples(outs: &[GenerationOutput]) -> Self {
        let completion_tokens = outs.iter().map(|o| o.token_ids.len()).sum::<usize>();
        let (prompt_tokens, cached_tokens) =
            outs.first().map_or((0, 0), |first| (first.prompt_token_ids.len(), first.num_cached_tokens));
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// Legacy completions logprobs: parallel lists, one entry per generated token (with `echo`,
/// per prompt token first; the prompt's first token has none, so `null`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// Token string → logprob: the top `logprobs` tokens plus the chosen one.
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    /// Character offset of each token within the generated text.
    pub text_offset: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `"stop"` or `"length"`; null in stream chunks before the last.
    pub finish_reason: Option<&'static str>,
    /// vLLM's, when asked: per prompt token, `null` for the first, else token id →
    /// `{logprob, rank, decoded_token}` for the prompt's token and the most likely ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobsOut>,
}

/// vLLM's `prompt_logprobs` shape.
pub type PromptLogprobsOut = Vec<Option<serde_json::Map<String, Value>>>;

/// A `/v1/completions` response, or (streaming) one chunk of it: the same object name and
/// shape, with `usage` only on the final usage chunk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// `null` when the message is a tool call.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One function call of a message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// vLLM's, when asked (as [`CompletionChoice::prompt_logprobs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobsOut>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed function call (OpenAI's shape): the first names the call (`id`,
/// `type`, `function.name`), the next ones carry pieces of `function.arguments`, which join
/// into the arguments' JSON text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}` (`code` is the HTTP
/// status, as vLLM sends it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(json: &str) -> Result<PromptInput, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn prompt_shapes() {
        assert_eq!(prompt(r#""hi""#).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(prompt(r#"["hi"]"#).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(prompt("[1, 2]").unwrap(), PromptInput::Tokens(vec![1, 2]));
        assert_eq!(prompt("[[1, 2]]").unwrap(), PromptInput::Tokens(vec![1, 2]));
        assert_eq!(prompt("[]").unwrap(), PromptInput::Tokens(vec![]));
        assert!(prompt(r#"["a", "b"]"#).unwrap_err().contains("batched prompts"));
        assert!(prompt("[[1], [2]]").unwrap_err().contains("batched prompts"));
        assert!(prompt("[1, -2]").unwrap_err().contains("non-negative integers, got -2"));
        assert!(prompt("[1, 2.5]").unwrap_err().contains("2.5"));
        assert!(prompt("[1, 4294967296]").unwrap_err().contains("4294967296"));
        assert!(prompt("7").unwrap_err().contains("got a number"));
    }

    #[test]
    fn stop_and_content_shapes() {
        let stop: StopInput = serde_json::from_str(r#""x""#).unwrap();
        assert_eq!(stop.0, vec!["x"]);
        let stop: StopInput = serde_json::from_str(r#"["x", "y"]"#).unwrap();
        assert_eq!(stop.0, vec!["x", "y"]);
        assert!(serde_json::from_str::<StopInput>("[1]").is_err());
        let m: ChatMessageIn = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(m.content.0, "a\nb");
        let m: ChatMessageIn = serde_json::from_str(r#"{"role": "assistant", "content": null}"#).unwrap();
        assert_eq!(m.content.0, "");
        let e = serde_json::from_str::<ChatMessageIn>(r#"{"role": "user", "content": [{"type": "image_url"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image_url"), "{e}");
    }

    #[test]
    fn negative_max_tokens_is_a_type_error() {
        let e = serde_json::from_str::<CompletionRequest>(r#"{"prompt": "x", "max_tokens": -1}"#).unwrap_err();
        assert!(e.to_string().contains("expected usize"), "{e}");
    }
}
