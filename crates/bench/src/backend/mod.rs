//! The servers a benchmark can talk to, behind one `send`: Shardline's gRPC API, or any
//! OpenAI-compatible `/v1/completions` (vLLM, TGI, trtllm-serve, llama.cpp server, Shardline's
//! own HTTP). Both stream, so every token's client-side arrival time is recorded.

pub mod grpc;
pub mod http;
mod openai;

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::metrics::RequestRecord;
use crate::workload::RequestSpec;

/// Which API to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// `shardline.v1.Generation/GenerateStream`.
    Grpc,
    /// OpenAI `/v1/completions` with `stream: true` (SSE).
    OpenAi,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Grpc => "grpc",
            BackendKind::OpenAi => "openai",
        }
    }

    /// Where the server listens by default (`shardline serve`'s defaults).
    pub fn default_endpoint(self) -> &'static str {
        match self {
            BackendKind::Grpc => "http://127.0.0.1:50051",
            BackendKind::OpenAi => "http://127.0.0.1:8000",
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<BackendKind, String> {
        match s {
            "grpc" => Ok(BackendKind::Grpc),
            "openai" | "http" => Ok(BackendKind::OpenAi),
            other => Err(format!("unknown backend `{other}` (grpc or openai)")),
        }
    }
}

/// What every request of a client carries beside its prompt.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Model name for OpenAI requests; None asks `/v1/models`.
    pub model: Option<String>,
    /// The server's `--api-key`, sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// A JSON Schema every output must match (structured outputs), to measure their cost.
    pub json_schema: Option<serde_json::Value>,
}

/// A connected client of one server.
pub enum Client {
    Grpc(grpc::GrpcBackend),
    OpenAi(openai::OpenAiBackend),
}

impl Client {
    /// Connects and asks the server what it serves (gRPC `ModelInfo`, OpenAI `/v1/models`), so
    /// a wrong endpoint fails here rather than as N request errors.
    pub async fn connect(kind: BackendKind, endpoint: &str, options: &ClientOptions) -> anyhow::Result<Client> {
        Ok(match kind {
            BackendKind::Grpc => Client::Grpc(grpc::GrpcBackend::connect(endpoint, options).await?),
            BackendKind::OpenAi => Client::OpenAi(openai::OpenAiBackend::connect(endpoint, options).await?),
        })
    }

    /// The served model's name.
    pub fn model(&self) -> &str {
        match self {
            Client::Grpc(c) => &c.model,
            Client::OpenAi(c) => &c.model,
        }
    }

    /// The vocabulary size when the API tells it (gRPC does; OpenAI's does not).
    pub fn vocab_size(&self) -> Option<u32> {
        match self {
            Client::Grpc(c) => Some(c.vocab_size),
            Client::OpenAi(_) => None,
        }
    }

    /// Sends one request and records its timeline against `origin`. Never fails: errors
    /// (including running past `timeout`, as `timeout`) are part of the record.
    pub async fn send(&self, req: &RequestSpec, origin: Instant, timeout: Duration) -> RequestRecord {
        let timeline = Timeline::start(origin, req.prompt.input_tokens());
        let send_s = timeline.record.send_s;
        let call = async {
            match self {
                Client::Grpc(c) => c.send(req, timeline).await,
                Client::OpenAi(c) => c.send(req, timeline).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(record) => record,
            Err(_) => RequestRecord {
                input_tokens: req.prompt.input_tokens(),
                send_s,
                end_s: origin.elapsed().as_secs_f64(),
                error: Some("timeout".into()),
                ..Default::default()
            },
        }
    }
}

/// What a server reported of a request at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerUsage {
    pub completion_tokens: usize,
    /// Prompt tokens served from its prefix cache, when the server says.
    pub cached_tokens: Option<usize>,
}

/// Builds a [`RequestRecord`] as a response streams in.
pub(crate) struct Timeline {
    origin: Instant,
    record: RequestRecord,
    streamed_tokens: usize,
}

impl Timeline {
    /// Stamps the send time: call right before the request goes out.
    pub(crate) fn start(origin: Instant, input_tokens: usize) -> Timeline {
        let record = RequestRecord { input_tokens, send_s: origin.elapsed().as_secs_f64(), ..Default::default() };
        Timeline { origin, record, streamed_tokens: 0 }
    }

    /// A message carrying `n` output tokens arrived now.
    pub(crate) fn tokens(&mut self, n: usize) {
        self.record.token_times_s.push(self.origin.elapsed().as_secs_f64());
        self.streamed_tokens += n;
    }

    /// The response ended well, with the server's usage when it gave one.
    pub(crate) fn finish(mut self, usage: Option<ServerUsage>) -> RequestRecord {
        self.record.output_tokens = usage.map_or(self.streamed_tokens, |u| u.completion_tokens);
        self.record.cached_tokens = usage.and_then(|u| u.cached_tokens);
        self.record.end_s = self.origin.elapsed().as_secs_f64();
        self.record
    }

    /// The request failed; `kind` groups it in the error counts.
    pub(crate) fn fail(mut self, kind: impl Into<String>) -> RequestRecord {
        self.record.output_tokens = self.streamed_tokens;
        self.record.end_s = self.origin.elapsed().as_secs_f64();
        self.record.error = Some(kind.into());
        self.record
    }
}
