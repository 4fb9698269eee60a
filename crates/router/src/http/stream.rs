//! Server-sent events: one chunk per token as the engine makes it, then `[DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shardline_engine::GenerationOutput;
use shardline_tokenizer::Tokenizer;
use tokio_stream::Stream;

use super::error::ApiError;
use super::logprobs::{chat_logprobs, push_completion_logprobs, push_prompt_logprobs};
use super::tools::{opens_call, CallEnd, CallStream, ToolSet};
use crate::engine_core::{CoreEvent, Submitted, TokenEvent};
use crate::error::RouterError;
use crate::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, CompletionChoice, CompletionLogprobs,
    CompletionResponse, ToolCallDelta, Usage,
};

pub(super) fn json_event<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).expect("serializable chunk"))
}

/// Turns the core events of a request's samples (choices) into SSE chunks.
pub(super) trait ChunkFormat: Send + Unpin + 'static {
    /// A token of choice `index`; its first comes with the prompt's logprobs when asked.
    fn token(&mut self, index: usize, token: TokenEvent, out: &mut VecDeque<Event>);
    fn finished(&mut self, index: usize, result: &GenerationOutput, out: &mut VecDeque<Event>);
    /// After every choice has finished: the usage chunk, if the client asked for one.
    fn all_finished(&mut self, usage: Usage, out: &mut VecDeque<Event>);
}

/// An SSE body that owns its request's samples: dropping it (client gone) drops their event
/// receivers, which aborts them.
pub(super) struct EventStream<F> {
    /// One per choice, `None` once finished.
    subs: Vec<Option<Submitted>>,
    /// The finished choices' results, for the usage chunk.
    done: Vec<GenerationOutput>,
    /// The choice to poll first next time, so that no choice starves the others.
    next: usize,
    pending: VecDeque<Event>,
    format: F,
}

impl<F: ChunkFormat> EventStream<F> {
    pub(super) fn new(subs: Vec<Submitted>, format: F, first: Vec<Event>) -> Self {
        EventStream {
            subs: subs.into_iter().map(Some).collect(),
            done: Vec::new(),
            next: 0,
            pending: first.into(),
            format,
        }
    }

    pub(super) fn fail(&mut self, err: ApiError) {
        self.pending.push_back(json_event(&err.body()));
        self.pending.push_back(Event::default().data("[DONE]"));
        self.subs.clear();
    }

    /// Handles one event of choice `index`.
    fn on_event(&mut self, index: usize, event: Option<CoreEvent>) {
        match event {
            Some(CoreEvent::Token(token)) => {
                if !token.text.is_empty() || token.logprobs.is_some() || token.prompt_logprobs.is_some() {
                    self.format.token(index, token, &mut self.pending);
                }
            }
            Some(CoreEvent::Finished(out)) => {
                self.format.finished(index, &out, &mut self.pending);
                self.done.push(*out);
                self.subs[index] = None;
                if self.subs.iter().all(Option::is_none) {
                    self.format.all_finished(Usage::of_samples(&self.done), &mut self.pending);
                    self.pending.push_back(Event::default().data("[DONE]"));
                    self.subs.clear();
                }
            }
            Some(CoreEvent::Failed(msg)) => self.fail(RouterError::Internal(msg).into()),
            None => self.fail(RouterError::Unavailable("it stopped before the request finished".into()).into()),
        }
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
            if this.subs.is_empty() {
                return Poll::Ready(None);
            }
            // The first choice (in round-robin order) with an event ready.
            let n = this.subs.len();
            let ready = (0..n).map(|k| (this.next + k) % n).find_map(|i| {
                let sub = this.subs[i].as_mut()?;
                match sub.events.poll_recv(cx) {
                    Poll::Ready(event) => Some((i, event)),
                    Poll::Pending => None,
                }
            });
            let Some((index, event)) = ready else { return Poll::Pending };
            this.next = (index + 1) % n;
            this.on_event(index, event);
        }
    }
}

pub(super) fn sse<F: ChunkFormat>(subs: Vec<Submitted>, format: F, first: Vec<Event>) -> Response {
    Sse::new(EventStream::new(subs, format, first)).keep_alive(KeepAlive::default()).into_response()
}

pub(super) struct CompletionChunks {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    pub(super) tokenizer: Arc<Tokenizer>,
    /// Per choice: text offset of its next logprobs entry.
    pub(super) offsets: Vec<usize>,
    /// `echo` with `logprobs`: each choice's echo chunk waits for its prompt's logprobs, which
    /// come with its first token.
    pub(super) echo: Option<EchoWithLogprobs>,
}

/// The echoed prompt of a stream that lists its tokens' logprobs.
pub(super) struct EchoWithLogprobs {
    pub(super) text: String,
    pub(super) prompt: Vec<u32>,
    pub(super) top: usize,
}

impl CompletionChunks {
    /// A chunk of the stream `id`.
    pub(super) fn event(
        id: &str,
        created: u64,
        model: &str,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
    ) -> Event {
        let object = "text_completion";
        json_event(&CompletionResponse { id: id.into(), object, created, model: model.into(), choices, usage })
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        Self::event(&self.id, self.created, &self.model, choices, usage)
    }
}

impl ChunkFormat for CompletionChunks {
    fn token(&mut self, index: usize, token: TokenEvent, out: &mut VecDeque<Event>) {
        let TokenEvent { text, logprobs, prompt_logprobs, .. } = token;
        if let (Some(echo), Some(scores)) = (&self.echo, prompt_logprobs) {
            let mut lp = CompletionLogprobs::default();
            push_prompt_logprobs(&self.tokenizer, &echo.prompt, &scores, echo.top, &mut self.offsets[index], &mut lp);
            let choice = CompletionChoice {
                index,
                text: echo.text.clone(),
                logprobs: Some(lp),
                finish_reason: None,
                prompt_logprobs: None,
            };
            out.push_back(self.chunk(vec![choice], None));
        }
        let logprobs = logprobs.map(|e| {
            let mut lp = CompletionLogprobs::default();
            push_completion_logprobs(&self.tokenizer, std::slice::from_ref(&e), &mut self.offsets[index], &mut lp);
            lp
        });
        out.push_back(
            self.chunk(
                vec![CompletionChoice { index, text, logprobs, finish_reason: None, prompt_logprobs: None }],
                None,
            ),
        );
    }

    fn finished(&mut self, index: usize, result: &GenerationOutput, out: &mut VecDeque<Event>) {
        let reason = Some(result.finish_reason.as_str());
        out.push_back(self.chunk(
            vec![CompletionChoice {
                index,
                text: String::new(),
                logprobs: None,
                finish_reason: reason,
                prompt_logprobs: None,
            }],
            None,
        ));
    }

    fn all_finished(&mut self, usage: Usage, out: &mut VecDeque<Event>) {
        if self.include_usage {
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}

/// Whether a chat choice's text streams as content or as a tool call.
pub(super) enum Held {
    /// No text yet (with tools in auto mode, the first byte decides).
    Undecided,
    Streaming,
    /// A call, streamed as deltas (or, if it turns out to be none, content at the end).
    Calling(CallStream),
}

pub(super) struct ChatChunks {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) tools: Option<ToolSet>,
    /// Per choice.
    pub(super) held: Vec<Held>,
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

    /// The first chunk of choice `index`: the assistant's role.
    pub(super) fn role_chunk(&self, index: usize) -> Event {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), tool_calls: None };
        self.chunk(vec![ChatChunkChoice { index, delta, logprobs: None, finish_reason: None }], None)
    }

    fn tool_calls(&self, index: usize, deltas: Vec<ToolCallDelta>) -> Event {
        let delta = ChatDelta { role: None, content: None, tool_calls: Some(deltas) };
        self.chunk(vec![ChatChunkChoice { index, delta, logprobs: None, finish_reason: None }], None)
    }

    fn content(&self, index: usize, text: String, logprobs: Option<ChatLogprobs>) -> Event {
        let delta = ChatDelta { role: None, content: Some(text), tool_calls: None };
        self.chunk(vec![ChatChunkChoice { index, delta, logprobs, finish_reason: None }], None)
    }
}

impl ChunkFormat for ChatChunks {
    /// Prompt logprobs are refused on chat streams (as vLLM), so none come.
    fn token(&mut self, index: usize, token: TokenEvent, out: &mut VecDeque<Event>) {
        let TokenEvent { text, logprobs, .. } = token;
        let logprobs = logprobs.map(|e| chat_logprobs(&self.tokenizer, std::slice::from_ref(&e)));
        if let (Some(tools), Held::Undecided) = (&self.tools, &self.held[index]) {
            if text.is_empty() {
                return;
            }
            let call = tools.always_calls() || opens_call(&text);
            self.held[index] = if call { Held::Calling(CallStream::new()) } else { Held::Streaming };
        }
        match (&mut self.held[index], &self.tools) {
            (Held::Calling(call), Some(tools)) => {
                let deltas = call.push(tools, &text);
                if !deltas.is_empty() {
                    out.push_back(self.tool_calls(index, deltas));
                }
            }
            _ => out.push_back(self.content(index, text, logprobs)),
        }
    }

    fn finished(&mut self, index: usize, result: &GenerationOutput, out: &mut VecDeque<Event>) {
        let mut reason = result.finish_reason.as_str();
        if let (Held::Calling(call), Some(tools)) =
            (std::mem::replace(&mut self.held[index], Held::Streaming), &self.tools)
        {
            match call.finish(tools) {
                CallEnd::Call(deltas) => {
                    if !deltas.is_empty() {
                        out.push_back(self.tool_calls(index, deltas));
                    }
                    reason = "tool_calls";
                }
                CallEnd::Partial => {}
                CallEnd::Text(text) => out.push_back(self.content(index, text, None)),
            }
        }
        out.push_back(self.chunk(
            vec![ChatChunkChoice { index, delta: ChatDelta::default(), logprobs: None, finish_reason: Some(reason) }],
            None,
        ));
    }

    fn all_finished(&mut self, usage: Usage, out: &mut VecDeque<Event>) {
        if self.include_usage {
            out.push_back(self.chunk(Vec::new(), Some(usage)));
        }
    }
}
