//! OpenAI-compatible HTTP API (axum): `/v1/completions`, `/v1/chat/completions` (both with SSE
//! streaming), `/v1/models`, `/health` and `/metrics`.
//!
//! Bodies are parsed here from raw bytes (any or no Content-Type) so that every malformed
//! request gets a 400 with OpenAI's error body naming the problem, never axum's 415/422.
//! Parameter values are checked by the engine ([`SamplingParams::validate`], context and KV
//! limits) and come back as [`RouterError::InvalidRequest`] → 400.
//!
//! Defaults: completions `max_tokens` 16 (OpenAI's); chat without `max_tokens` /
//! `max_completion_tokens` may use the rest of the context, `min(max_model_len, KV cache
//! tokens) - prompt tokens`, as vLLM does. `n` must be 1; `echo`, `best_of > 1`, `suffix`,
//! `logit_bias`, non-zero presence/frequency penalties and `tools` are refused.
//!
//! A stream owns its request's [`Submitted`]: when the client disconnects, hyper drops the
//! response body, the receiver goes with it and the core aborts the request before its next
//! step. Non-streaming handlers are dropped the same way.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shardline_engine::{GenerationOutput, Prompt, TokenLogprobs};
use shardline_sampling::{FinishReason, SamplingParams};
use shardline_tokenizer::{ChatMessage, Tokenizer};
use tokio_stream::Stream;

use crate::core::{CoreEvent, EngineHandle, Submitted};
use crate::error::RouterError;
use crate::openai::*;
use crate::ServerInfo;

/// Largest request body accepted (long token-id prompts are verbose JSON).
const MAX_BODY_BYTES: usize = 32 << 20;
/// What a logprob of -inf is reported as (JSON has no infinities; vLLM does the same).
const MIN_LOGPROB: f32 = -9999.0;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An HTTP error with OpenAI's error body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The offending request field, when known.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::METHOD_NOT_ALLOWED => "invalid_request_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind().to_string(),
                param: self.param.clone(),
                code: self.status.as_u16(),
            },
        }
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        let status = match e {
            RouterError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            RouterError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            RouterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Deserializes a JSON body, naming the field at fault in the error.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => {
                ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
            }
            serde_json::error::Category::Data if path == "." || path.is_empty() => {
                ApiError::bad_request(format!("invalid request body: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::bad_request(format!("invalid value for `{path}`: {inner}")).with_param(path)
            }
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

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

    /// Tokens one request may span: the context length, and no more than the KV cache holds.
    fn token_limit(&self) -> usize {
        let kv = self.info.num_kv_blocks * self.info.block_size;
        if kv > 0 {
            self.info.max_model_len.min(kv)
        } else {
            self.info.max_model_len
        }
    }
}

/// The OpenAI-compatible API over `handle`.
pub fn router(handle: EngineHandle, info: Arc<ServerInfo>) -> Router {
    let state = Arc::new(AppState { handle, info, started: unix_now() });
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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

async fn health(State(s): State<Arc<AppState>>) -> StatusCode {
    if s.handle.stats.serving.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
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
            max_model_len: s.info.max_model_len,
        }],
    })
}

// ---------------------------------------------------------------------------------------------
// Request conversion
// ---------------------------------------------------------------------------------------------

/// The sampling fields both endpoints share.
struct Knobs<'a> {
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
    fn params(&self, max_tokens: usize, logprobs: Option<usize>) -> Result<SamplingParams, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(format!("n = {n} is not supported; only n = 1 is")).with_param("n"));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(
                    ApiError::bad_request(format!("{name} is not supported (use repetition_penalty)")).with_param(name)
                );
            }
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::bad_request("logit_bias is not supported").with_param("logit_bias"));
        }
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
            seed: self.seed,
            logprobs,
            max_tokens,
            stop: self.stop.clone().map(|s| s.0).unwrap_or_default(),
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// Whether to stream, and whether to send a usage chunk at the end.
fn stream_mode(stream: Option<bool>, options: &Option<StreamOptions>) -> Result<(bool, bool), ApiError> {
    let stream = stream.unwrap_or(false);
    if options.is_some() && !stream {
        return Err(
            ApiError::bad_request("stream_options is only allowed with stream = true").with_param("stream_options")
        );
    }
    let usage = options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok((stream, usage))
}

fn completion_prompt_and_params(req: &CompletionRequest) -> Result<(Prompt, SamplingParams), ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported").with_param("echo"));
    }
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
    let knobs = Knobs {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        seed: req.seed,
        stop: &req.stop,
        stop_token_ids: &req.stop_token_ids,
        ignore_eos: req.ignore_eos,
        n: req.n,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias: &req.logit_bias,
    };
    let params = knobs.params(req.max_tokens.unwrap_or(16), req.logprobs)?;
    Ok((prompt, params))
}

fn chat_prompt_and_params(req: &ChatCompletionRequest, s: &AppState) -> Result<(Prompt, SamplingParams), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request("tools are not supported").with_param("tools"));
    }
    if let Some(rf) = &req.response_format {
        if rf.get("type").and_then(|t| t.as_str()) != Some("text") {
            return Err(ApiError::bad_request("only response_format {\"type\": \"text\"} is supported")
                .with_param("response_format"));
        }
    }
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
    let tok: &Tokenizer = &s.info.tokenizer;
    if tok.chat_template().is_none() {
        return Err(ApiError::bad_request(
            "this model has no chat template; use /v1/completions with a formatted prompt",
        ));
    }
    let messages: Vec<ChatMessage> =
        req.messages.iter().map(|m| ChatMessage::new(m.role.clone(), m.content.0.clone())).collect();
    // Rendering here turns template errors (e.g. a role the template refuses) into 400s.
    let rendered = tok.apply_chat_template(&messages, true).map_err(|e| {
        ApiError::bad_request(format!("the chat template failed on these messages: {e}")).with_param("messages")
    })?;
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        Some(n) => n,
        None => {
            // The rest of the context; 1 when nothing is left, so the engine reports the limit.
            let prompt_len = tok.encode(&rendered, false).map(|ids| ids.len()).unwrap_or(0);
            s.token_limit().saturating_sub(prompt_len).max(1)
        }
    };
    let knobs = Knobs {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        seed: req.seed,
        stop: &req.stop,
        stop_token_ids: &req.stop_token_ids,
        ignore_eos: req.ignore_eos,
        n: req.n,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias: &req.logit_bias,
    };
    Ok((Prompt::Chat(messages), knobs.params(max_tokens, logprobs)?))
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Waits for the request's result.
async fn collect(mut sub: Submitted) -> Result<GenerationOutput, ApiError> {
    while let Some(ev) = sub.events.recv().await {
        match ev {
            CoreEvent::Token { .. } => {}
            CoreEvent::Finished(out) => return Ok(*out),
            CoreEvent::Failed(msg) => return Err(RouterError::Internal(msg).into()),
        }
    }
    Err(RouterError::Unavailable("it stopped before the request finished".into()).into())
}

// ---------------------------------------------------------------------------------------------
// Logprobs
// ---------------------------------------------------------------------------------------------

fn token_str(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

fn finite(l: f32) -> f32 {
    if l.is_nan() || l < MIN_LOGPROB {
        MIN_LOGPROB
    } else {
        l
    }
}

/// Appends entries to legacy completions logprobs; `offset` is the running character offset.
fn push_completion_logprobs(
    tok: &Tokenizer,
    entries: &[TokenLogprobs],
    offset: &mut usize,
    out: &mut CompletionLogprobs,
) {
    for e in entries {
        let s = token_str(tok, e.token_id);
        let mut top = serde_json::Map::new();
        for t in &e.top {
            top.entry(token_str(tok, t.token_id)).or_insert_with(|| finite(t.logprob).into());
        }
        top.entry(s.clone()).or_insert_with(|| finite(e.logprob).into());
        out.text_offset.push(*offset);
        *offset += s.chars().count();
        out.tokens.push(s);
        out.token_logprobs.push(finite(e.logprob));
        out.top_logprobs.push(top);
    }
}

fn chat_logprobs(tok: &Tokenizer, entries: &[TokenLogprobs]) -> ChatLogprobs {
    let content = entries
        .iter()
        .map(|e| {
            let s = token_str(tok, e.token_id);
            ChatTokenLogprob {
                bytes: s.as_bytes().to_vec(),
                token: s,
                logprob: finite(e.logprob),
                top_logprobs: e
                    .top
                    .iter()
                    .map(|t| {
                        let s = token_str(tok, t.token_id);
                        ChatTopLogprob { bytes: s.as_bytes().to_vec(), token: s, logprob: finite(t.logprob) }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

fn json_event<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).expect("serializable chunk"))
}

/// Turns one request's core events into SSE chunks.
trait ChunkFormat: Send + Unpin + 'static {
    fn token(&mut self, text: String, logprobs: Option<TokenLogprobs>, out: &mut VecDeque<Event>);
    fn finished(&mut self, result: &GenerationOutput, out: &mut VecDeque<Event>);
}

/// An SSE body that owns its request: dropping it (client gone) drops the event receiver,
/// which aborts the request.
struct EventStream<F> {
    sub: Option<Submitted>,
    pending: VecDeque<Event>,
    format: F,
}

impl<F: ChunkFormat> EventStream<F> {
    fn new(sub: Submitted, format: F, first: Vec<Event>) -> Self {
        EventStream { sub: Some(sub), pending: first.into(), format }
    }

    fn fail(&mut self, err: ApiError) {
        self.pending.push_back(json_event(&err.body()));
        self.pending.push_back(Event::default().data("[DONE]"));
        self.sub = None;
    }
}

impl<F: ChunkFormat> Stream for EventStream<F> {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            let Some(sub) = this.sub.as_mut() else { return Poll::Ready(None) };
            match sub.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(CoreEvent::Token { text, logprobs, .. })) => {
                    if !text.is_empty() || logprobs.is_some() {
                        this.format.token(text, logprobs, &mut this.pending);
                    }
                }
                Poll::Ready(Some(CoreEvent::Finished(out))) => {
                    this.format.finished(&out, &mut this.pending);
                    this.pending.push_back(Event::default().data("[DONE]"));
                    this.sub = None;
                }
                Poll::Ready(Some(CoreEvent::Failed(msg))) => this.fail(RouterError::Internal(msg).into()),
                Poll::Ready(None) => {
                    this.fail(RouterError::Unavailable("it stopped before the request finished".into()).into())
                }
            }
        }
    }
}

fn sse<F: ChunkFormat>(sub: Submitted, format: F, first: Vec<Event>) -> Response {
    Sse::new(EventStream::new(sub, format, first)).keep_alive(KeepAlive::default()).into_response()
}

struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    tokenizer: Arc<Tokenizer>,
    offset: usize,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        json_event(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for CompletionChunks {
    fn token(&mut self, text: String, logprobs: Option<TokenLogprobs>, out: &mut VecDeque<Event>) {
        let logprobs = logprobs.map(|e| {
            let mut lp = CompletionLogprobs::default();
            push_completion_logprobs(&self.tokenizer, std::slice::from_ref(&e), &mut self.offset, &mut lp);
            lp
        });
        out.push_back(self.chunk(vec![CompletionChoice { index: 0, text, logprobs, finish_reason: None }], None));
    }

    fn finished(&mut self, result: &GenerationOutput, out: &mut VecDeque<Event>) {
        let reason = Some(finish_reason(result.finish_reason));
        out.push_back(self.chunk(
            vec![CompletionChoice { index: 0, text: String::new(), logprobs: None, finish_reason: reason }],
            None,
        ));
        if self.include_usage {
            let usage = Usage::new(result.prompt_token_ids.len(), result.token_ids.len());
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    tokenizer: Arc<Tokenizer>,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> Event {
        json_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    fn role_chunk(&self) -> Event {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
        self.chunk(vec![ChatChunkChoice { index: 0, delta, logprobs: None, finish_reason: None }], None)
    }
}

impl ChunkFormat for ChatChunks {
    fn token(&mut self, text: String, logprobs: Option<TokenLogprobs>, out: &mut VecDeque<Event>) {
        let logprobs = logprobs.map(|e| chat_logprobs(&self.tokenizer, std::slice::from_ref(&e)));
        let delta = ChatDelta { role: None, content: Some(text) };
        out.push_back(self.chunk(vec![ChatChunkChoice { index: 0, delta, logprobs, finish_reason: None }], None));
    }

    fn finished(&mut self, result: &GenerationOutput, out: &mut VecDeque<Event>) {
        let reason = Some(finish_reason(result.finish_reason));
        out.push_back(self.chunk(
            vec![ChatChunkChoice { index: 0, delta: ChatDelta::default(), logprobs: None, finish_reason: reason }],
            None,
        ));
        if self.include_usage {
            let usage = Usage::new(result.prompt_token_ids.len(), result.token_ids.len());
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(&body)?;
    s.check_model(req.model.as_deref())?;
    let (stream, include_usage) = stream_mode(req.stream, &req.stream_options)?;
    let (prompt, params) = completion_prompt_and_params(&req)?;
    let sub = s.handle.submit(prompt, params).await?;
    let id = response_id("cmpl");
    let created = unix_now();
    let model = s.info.model_id.clone();
    if stream {
        let format =
            CompletionChunks { id, created, model, include_usage, tokenizer: Arc::clone(&s.info.tokenizer), offset: 0 };
        return Ok(sse(sub, format, Vec::new()));
    }
    let out = collect(sub).await?;
    let logprobs = out.logprobs.as_ref().map(|entries| {
        let mut lp = CompletionLogprobs::default();
        push_completion_logprobs(&s.info.tokenizer, entries, &mut 0, &mut lp);
        lp
    });
    let usage = Usage::new(out.prompt_token_ids.len(), out.token_ids.len());
    let reason = Some(finish_reason(out.finish_reason));
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices: vec![CompletionChoice { index: 0, text: out.text, logprobs, finish_reason: reason }],
        usage: Some(usage),
    })
    .into_response())
}

async fn chat_completions(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse_body(&body)?;
    s.check_model(req.model.as_deref())?;
    let (stream, include_usage) = stream_mode(req.stream, &req.stream_options)?;
    let (prompt, params) = chat_prompt_and_params(&req, &s)?;
    let sub = s.handle.submit(prompt, params).await?;
    let id = response_id("chatcmpl");
    let created = unix_now();
    let model = s.info.model_id.clone();
    if stream {
        let format = ChatChunks { id, created, model, include_usage, tokenizer: Arc::clone(&s.info.tokenizer) };
        let first = vec![format.role_chunk()];
        return Ok(sse(sub, format, first));
    }
    let out = collect(sub).await?;
    let logprobs = out.logprobs.as_ref().map(|entries| chat_logprobs(&s.info.tokenizer, entries));
    let usage = Usage::new(out.prompt_token_ids.len(), out.token_ids.len());
    Ok(Json(ChatCompletionResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut { role: "assistant", content: out.text },
            logprobs,
            finish_reason: Some(finish_reason(out.finish_reason)),
        }],
        usage,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<CompletionRequest>(br#"{"prompt": "x", "max_tokens": "abc"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("max_tokens"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_body::<CompletionRequest>(b"{\"prompt\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_body::<CompletionRequest>(b"{}").unwrap_err();
        assert!(e.message.contains("missing field `prompt`"), "{}", e.message);
        let e = parse_body::<CompletionRequest>(b"{\"prompt\": \"x\"} x").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_body::<ChatCompletionRequest>(br#"{"messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0].content"), "{}", e.message);
    }

    #[test]
    fn router_errors_map_to_statuses() {
        let cases = [
            (RouterError::InvalidRequest("x".into()), 400, "invalid_request_error"),
            (RouterError::QueueFull(3), 429, "rate_limit_error"),
            (RouterError::Unavailable("x".into()), 503, "service_unavailable_error"),
            (RouterError::Internal("x".into()), 500, "server_error"),
        ];
        for (e, code, kind) in cases {
            let body = ApiError::from(e).body();
            assert_eq!(body.error.code, code);
            assert_eq!(body.error.kind, kind);
        }
    }
}
