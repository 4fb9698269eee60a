//! Any OpenAI-compatible server: streaming `POST /v1/completions` with the prompt as a list of
//! token ids (vLLM, Shardline, TGI and llama.cpp accept it) or, for datasets, a string, `ignore_eos` (vLLM's extension) so
//! every request makes exactly `max_tokens`, greedy, and `stream_options.include_usage` so the
//! server reports how many tokens it made.
//!
//! Token timing follows vLLM's `benchmark_serving`: each SSE chunk with non-empty text is one
//! arrival (the chunk carrying only the finish reason or usage is not); the output token count is
//! the usage's `completion_tokens`, since a chunk may carry several tokens (or a token may carry
//! no text yet, mid-character).

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::http::Target;
use super::{ClientOptions, ServerUsage, Timeline};
use crate::metrics::RequestRecord;
use crate::workload::{Prompt, RequestSpec};

pub struct OpenAiBackend {
    target: Target,
    pub model: String,
    /// `response_format` of every request, for a JSON Schema.
    response_format: Option<Value>,
}

impl OpenAiBackend {
    /// Checks the server answers `GET /v1/models`; without `model`, uses the first one listed.
    pub async fn connect(endpoint: &str, options: &ClientOptions) -> anyhow::Result<OpenAiBackend> {
        let parsed = Target::parse(endpoint).map_err(anyhow::Error::msg)?;
        let target = Target { bearer: options.api_key.clone(), ..parsed };
        let model = options.model.clone();
        let response_format = options
            .json_schema
            .as_ref()
            .map(|schema| json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}));
        let response =
            target.request("GET", "/v1/models", None).await.with_context(|| format!("connecting to {endpoint}"))?;
        let status = response.status;
        let body = response.bytes().await.with_context(|| format!("reading {endpoint}/v1/models"))?;
        if status != 200 {
            bail!("GET {endpoint}/v1/models answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let model = match model {
            Some(m) => m,
            None => {
                let list: Value =
                    serde_json::from_slice(&body).with_context(|| format!("{endpoint}/v1/models is not JSON"))?;
                list["data"][0]["id"]
                    .as_str()
                    .with_context(|| format!("{endpoint}/v1/models lists no model; give --model"))?
                    .to_string()
            }
        };
        Ok(OpenAiBackend { target, model, response_format })
    }

    fn body(&self, req: &RequestSpec) -> Vec<u8> {
        let prompt = match &req.prompt {
            Prompt::TokenIds(ids) => json!(ids),
            Prompt::Text { text, .. } => json!(text),
        };
        let mut body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": req.max_tokens,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(rf) = &self.response_format {
            body["response_format"] = rf.clone();
        }
        body.to_string().into_bytes()
    }

    pub(crate) async fn send(&self, req: &RequestSpec, mut timeline: Timeline) -> RequestRecord {
        let body = self.body(req);
        let response = match self.target.request("POST", "/v1/completions", Some(&body)).await {
            Ok(r) => r,
            Err(_) => return timeline.fail("transport"),
        };
        if response.status != 200 {
            return timeline.fail(format!("http:{}", response.status));
        }
        let mut events = response.events();
        let mut usage = None;
        loop {
            let data = match events.next_data().await {
                Ok(Some(d)) => d,
                // The stream ended without [DONE]: the server gave up mid-request.
                Ok(None) => return timeline.fail("incomplete"),
                Err(_) => return timeline.fail("transport"),
            };
            if data == "[DONE]" {
                return timeline.finish(usage);
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&data) else { return timeline.fail("bad_chunk") };
            if chunk.get("error").is_some() {
                return timeline.fail("stream_error");
            }
            if chunk["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                timeline.tokens(1);
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                let cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
                usage = Some(ServerUsage { completion_tokens: n as usize, cached_tokens: cached.map(|c| c as usize) });
            }
        }
    }
}
