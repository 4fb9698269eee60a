//! Server-sent events: one chunk per token as the engine makes it, then `[DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shardline_engine::{GenerationOutput, TokenLogprobs};
use shardline_tokenizer::Tokenizer;
use tokio_stream::Stream;

use super::error::ApiError;
use super::logprobs::{chat_logprobs, push_completion_logprobs};
use crate::engine_core::{CoreEvent, Submitted};
use crate::error::RouterError;
use crate::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, CompletionChoice, CompletionLogprobs, CompletionResponse, Usage,
};

pub(super) fn json_event<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).expect("serializable chunk"))
}

/// Turns one request's core events into SSE chunks.
pub(super) trait ChunkFormat: Send + Unpin + 'static {
    fn token(&mut self, text: String, logprobs: Option<TokenLogprobs>, out: &mut VecDeque<Event>);
    fn finished(&mut self, result: &GenerationOutput, out: &mut VecDeque<Event>);
}

/// An SSE body that owns its request: dropping it (client gone) drops the event receiver,
/// which aborts the request.
pub(super) struct EventStream<F> {
    sub: Option<Submitted>,
    pending: VecDeque<Event>,
    format: F,
}

impl<F: ChunkFormat> EventStream<F> {
    pub(super) fn new(sub: Submitted, format: F, first: Vec<Event>) -> Self {
        EventStream { sub: Some(sub), pending: first.into(), format }
    }

    pub(super) fn fail(&mut self, err: ApiError) {
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

pub(super) fn sse<F: ChunkFormat>(sub: Submitted, format: F, first: Vec<Event>) -> Response {
    Sse::new(EventStream::new(sub, format, first)).keep_alive(KeepAlive::default()).into_response()
}

pub(super) struct CompletionChunks {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) offset: usize,
}

impl CompletionChunks {
    pub(super) fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
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
        let reason = Some(result.finish_reason.as_str());
        out.push_back(self.chunk(
            vec![CompletionChoice { index: 0, text: String::new(), logprobs: None, finish_reason: reason }],
            None,
        ));
        if self.include_usage {
            let usage = Usage::of(result);
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}

pub(super) struct ChatChunks {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    pub(super) tokenizer: Arc<Tokenizer>,
}

impl ChatChunks {
    pub(super) fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> Event {
        json_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    pub(super) fn role_chunk(&self) -> Event {
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
        let reason = Some(result.finish_reason.as_str());
        out.push_back(self.chunk(
            vec![ChatChunkChoice { index: 0, delta: ChatDelta::default(), logprobs: None, finish_reason: reason }],
            None,
        ));
        if self.include_usage {
            let usage = Usage::of(result);
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}
