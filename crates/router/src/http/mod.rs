//! OpenAI-compatible HTTP API (axum): `/v1/completions`, `/v1/chat/completions` (both with SSE
//! streaming), `/v1/models`, `/health` and `/metrics`.
//!
//! Bodies are parsed here from raw bytes (any or no Content-Type) so that every malformed
//! request gets a 400 with OpenAI's error body naming the problem, never axum's 415/422.
//! Prompts are rendered (chat templates) and tokenized here, on the server's threads.
//! Parameter values are checked by the engine (`SamplingParams::validate`, context and KV
//! limits) and come back as [`RouterError::InvalidRequest`] → 400.
//!
//! Defaults: completions `max_tokens` 16 (OpenAI's); chat without `max_tokens` /
//! `max_completion_tokens` may use the rest of the context, `min(max_model_len, KV cache
//! tokens) - prompt tokens`, as vLLM does. `n` samples (up to 64) share the prompt's K/V
//! through the prefix cache. Structured outputs ([`structured`]) and tool calls ([`tools`])
//! become a constraint the engine enforces. `echo` prepends the prompt's text; with
//! `logprobs`, the prompt's tokens are listed with theirs (computed by the last stage, see
//! `SamplingParams::prompt_logprobs`), as is vLLM's `prompt_logprobs` (not on streams, as
//! vLLM). `best_of > 1` and `suffix` are refused.
//!
//! A stream owns its request's [`Submitted`]: when the client disconnects, hyper drops the
//! response body, the receiver goes with it and the core aborts the request before its next
//! step. Non-streaming handlers are dropped the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::ApiKeys;
use crate::engine_core::EngineHandle;
use crate::openai::{
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessageOut, CompletionChoice, CompletionLogprobs,
    CompletionRequest, CompletionResponse, ModelCard, ModelList, PromptInput, Usage,
};
use crate::ServerInfo;

mod error;
mod logprobs;
mod params;
mod stream;
mod structured;
mod tools;

use error::parse_body;
pub use error::ApiError;
use logprobs::{chat_logprobs, push_completion_logprobs, push_prompt_logprobs, vllm_prompt_logprobs};
use params::{chat_prompt_and_params, collect_all, completion_prompt_and_params, stream_mode, ChatPlan};
use stream::{sse, ChatChunks, CompletionChunks, EchoWithLogprobs, Held};

/// Largest request body accepted (long token-id prompts are verbose JSON).
const MAX_BODY_BYTES: usize = 32 << 20;
struct AppState {
    handle: EngineHandle,
    info: Arc<ServerInfo>,
    /// When the server started (the model's `created`).
    started: u64,
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.info.model_id => {
                Err(ApiError::new(StatusCode::NOT_FOUND, format!("The model `{m}` does not exist."))
                    .with_param("model"))
            }
            _ => Ok(()),
        }
    }
}

/// The OpenAI-compatible API over `handle`; with `keys`, its `/v1` routes need one of them.
pub fn router(handle: EngineHandle, info: Arc<ServerInfo>, keys: ApiKeys) -> Router {
    let state = Arc::new(AppState { handle, info, started: unix_now() });
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_api_key));
    v1.route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// 401 with OpenAI's error body unless the request carries an accepted key.
async fn require_api_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if keys.allows(authorization) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, crate::auth::REFUSED).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A response id unique within this process and unlikely to repeat across restarts.
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    format!("{prefix}-{nanos:016x}{:06x}", NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} is not allowed on {}", uri.path()))
}

/// 200 while serving; 503 with `recovering` while the group re-forms after losing a rank
/// (requests are kept and answered once it is back), 503 once the engine has stopped.
async fn health(State(s): State<Arc<AppState>>) -> Response {
    let stats = &s.handle.stats;
    if !stats.serving.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else if stats.is_recovering() {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering").into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = s.handle.metrics.render(&s.handle.stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: s.info.model_id.clone(),
            object: "model",
            created: s.started,
            owned_by: "shardline",
            root: s.info.model_id.clone(),
            max_model_len: s.info.limits.max_model_len,
        }],
    })
}

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(&body)?;
    s.check_model(req.model.as_deref())?;
    let (stream, include_usage) = stream_mode(req.stream, &req.stream_options)?;
    let (prompt, samples) = completion_prompt_and_params(&req, &s.info)?;
    // `echo`: each choice's text starts with the prompt's.
    let echo = match (req.echo, &req.prompt) {
        (Some(true), PromptInput::Text(t)) => t.clone(),
        (Some(true), PromptInput::Tokens(_)) => {
            s.info.tokenizer.decode(&prompt, false).map_err(crate::error::RouterError::Prompt)?
        }
        _ => String::new(),
    };
    // With logprobs, the echoed prompt's tokens are listed with theirs.
    let echo_top = req.logprobs.filter(|_| !echo.is_empty());
    let subs = s.handle.submit_samples(prompt.clone(), samples).await?;
    let id = response_id("cmpl");
    let created = unix_now();
    let model = s.info.model_id.clone();
    if stream {
        let tokenizer = Arc::clone(&s.info.tokenizer);
        let offsets = vec![0; subs.len()];
        let first = match (echo.is_empty(), echo_top) {
            // Sent with each choice's first token, which brings the prompt's logprobs.
            (true, _) | (false, Some(_)) => Vec::new(),
            (false, None) => (0..subs.len())
                .map(|index| {
                    let choice = CompletionChoice {
                        index,
                        text: echo.clone(),
                        logprobs: None,
                        finish_reason: None,
                        prompt_logprobs: None,
                    };
                    CompletionChunks::event(&id, created, &model, vec![choice], None)
                })
                .collect(),
        };
        let echo = echo_top.map(|top| EchoWithLogprobs { text: echo, prompt, top });
        let format = CompletionChunks { id, created, model, include_usage, tokenizer, offsets, echo };
        return Ok(sse(subs, format, first));
    }
    let outs = collect_all(subs).await?;
    let usage = Usage::of_samples(&outs);
    let tok = &s.info.tokenizer;
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(index, out)| {
            let scores = out.prompt_logprobs.as_deref().unwrap_or_default();
            let logprobs = out.logprobs.as_ref().map(|entries| {
                let mut lp = CompletionLogprobs::default();
                let mut offset = 0;
                if let Some(top) = echo_top {
                    push_prompt_logprobs(tok, &out.prompt_token_ids, scores, top, &mut offset, &mut lp);
                }
                push_completion_logprobs(tok, entries, &mut offset, &mut lp);
                lp
            });
            let prompt_logprobs = req.prompt_logprobs.map(|k| vllm_prompt_logprobs(tok, scores, k));
            let text = format!("{echo}{}", out.text);
            let finish_reason = Some(out.finish_reason.as_str());
            CompletionChoice { index, text, logprobs, finish_reason, prompt_logprobs }
        })
        .collect();
    Ok(Json(CompletionResponse { id, object: "text_completion", created, model, choices, usage: Some(usage) })
        .into_response())
}

async fn chat_completions(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse_body(&body)?;
    s.check_model(req.model.as_deref())?;
    let (stream, include_usage) = stream_mode(req.stream, &req.stream_options)?;
    let ChatPlan { prompt, samples, tools } = chat_prompt_and_params(&req, &s.info)?;
    let subs = s.handle.submit_samples(prompt, samples).await?;
    let id = response_id("chatcmpl");
    let created = unix_now();
    let model = s.info.model_id.clone();
    if stream {
        let tokenizer = Arc::clone(&s.info.tokenizer);
        let held = (0..subs.len()).map(|_| Held::Undecided).collect();
        let format = ChatChunks { id, created, model, include_usage, tokenizer, tools, held };
        let first = (0..subs.len()).map(|index| format.role_chunk(index)).collect();
        return Ok(sse(subs, format, first));
    }
    let outs = collect_all(subs).await?;
    let usage = Usage::of_samples(&outs);
    let prompt_logprobs = req
        .prompt_logprobs
        .zip(outs.first())
        .map(|(k, out)| vllm_prompt_logprobs(&s.info.tokenizer, out.prompt_logprobs.as_deref().unwrap_or_default(), k));
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(index, out)| {
            let logprobs = out.logprobs.as_ref().map(|entries| chat_logprobs(&s.info.tokenizer, entries));
            let call = tools.as_ref().and_then(|t| t.parse_call(&out.text));
            let (message, finish_reason) = match call {
                Some(call) => (
                    ChatMessageOut { role: "assistant", content: None, tool_calls: Some(vec![call.out()]) },
                    "tool_calls",
                ),
                None => (
                    ChatMessageOut { role: "assistant", content: Some(out.text), tool_calls: None },
                    out.finish_reason.as_str(),
                ),
            };
            ChatChoice { index, logprobs, finish_reason: Some(finish_reason), message }
        })
        .collect();
    let response =
        ChatCompletionResponse { id, object: "chat.completion", created, model, choices, usage, prompt_logprobs };
    Ok(Json(response).into_response())
}
