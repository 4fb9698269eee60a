//! Shardline's gRPC API: `GenerateStream` with the prompt as token ids (or text, for datasets),
//! one message per token.
//!
//! All requests share one channel: HTTP/2 multiplexes them over a single connection, as a
//! production client would, instead of paying a handshake per request.

use anyhow::Context;
use shardline_proto::v1 as pb;
use shardline_proto::v1::generation_client::GenerationClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::{ClientOptions, ServerUsage, Timeline};
use crate::metrics::RequestRecord;
use crate::workload::{Prompt, RequestSpec};

pub struct GrpcBackend {
    client: GenerationClient<Channel>,
    /// `authorization` metadata for a server's `--api-key`.
    authorization: Option<MetadataValue<Ascii>>,
    constraint: Option<pb::sampling_parameters::Constraint>,
    pub model: String,
    pub vocab_size: u32,
}

impl GrpcBackend {
    pub async fn connect(endpoint: &str, options: &ClientOptions) -> anyhow::Result<GrpcBackend> {
        let authorization = options.api_key.as_deref().map(bearer).transpose()?;
        let constraint =
            options.json_schema.as_ref().map(|s| pb::sampling_parameters::Constraint::JsonSchema(s.to_string()));
        let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let mut client =
            GenerationClient::connect(url.clone()).await.with_context(|| format!("connecting to {url}"))?;
        let info = client
            .model_info(with_key(pb::ModelInfoRequest {}, &authorization))
            .await
            .map_err(|s| anyhow::anyhow!("ModelInfo on {url} answered {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(GrpcBackend { client, authorization, constraint, model: info.model_id, vocab_size: info.vocab_size })
    }

    pub(crate) async fn send(&self, req: &RequestSpec, mut timeline: Timeline) -> RequestRecord {
        let request = pb::GenerateRequest {
            request_id: String::new(),
            input: Some(match &req.prompt {
                Prompt::TokenIds(ids) => pb::generate_request::Input::TokenIds(pb::TokenIds { ids: ids.clone() }),
                Prompt::Text { text, .. } => pb::generate_request::Input::Text(text.clone()),
            }),
            sampling: Some(pb::SamplingParameters {
                temperature: Some(0.0),
                max_tokens: Some(req.max_tokens as u32),
                ignore_eos: true,
                constraint: self.constraint.clone(),
                ..Default::default()
            }),
        };
        // Cloning a tonic client is cheap: it shares the channel.
        let mut stream = match self.client.clone().generate_stream(with_key(request, &self.authorization)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return timeline.fail(status_kind(&s)),
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if !msg.token_ids.is_empty() {
                        timeline.tokens(msg.token_ids.len());
                    }
                    if msg.finish_reason != 0 {
                        return timeline.finish(msg.usage.map(|u| ServerUsage {
                            completion_tokens: u.completion_tokens as usize,
                            cached_tokens: Some(u.cached_prompt_tokens as usize),
                        }));
                    }
                }
                Ok(None) => return timeline.fail("incomplete"),
                Err(s) => return timeline.fail(status_kind(&s)),
            }
        }
    }
}

/// `grpc:<Code>`, e.g. `grpc:ResourceExhausted` when the server's queue is full.
fn status_kind(s: &tonic::Status) -> String {
    format!("grpc:{:?}", s.code())
}

/// The `authorization` metadata value for a server's `--api-key`.
pub fn bearer(api_key: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    format!("Bearer {api_key}").parse().context("the API key must be printable ASCII")
}

/// `message` as a request carrying the `authorization` metadata, if any.
pub fn with_key<T>(message: T, authorization: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.clone());
    }
    request
}
