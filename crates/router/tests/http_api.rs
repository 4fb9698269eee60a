//! The OpenAI-compatible HTTP API over real sockets, on a tiny random model (as in
//! `crates/engine/tests/engine_tiny.rs`): results equal the engine's own greedy output, SSE
//! streams add up to the same text, bad requests are 400s with OpenAI error bodies, and a
//! client that goes away mid-stream gets its request aborted and its KV blocks freed.
//!
//! The client is a few lines of HTTP/1.1 over `tokio::net::TcpStream` (chunked bodies and SSE
//! included), to keep the dependency tree as it is.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardline_engine::Executor;
use shardline_exec::{ExecutorError, PendingMasks, Reset, StepOutput, StepPlan};
use shardline_tokenizer::ChatMessage;
use shardline_tokenizer::Prompt;
use shardline_worker::LocalExecutor;
use support::{
    bounded, chunks, direct, get, json, metric, post, post_ok, post_stream, request, start, text, BLOCK_SIZE,
};

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn completions_equal_the_engines_greedy_output_streamed_or_not() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let want = direct(&server.dir, Prompt::Text("the quick brown fox".into()), 12);
        let req = json!({"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        let v = post_ok(addr, "/v1/completions", &req).await;
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["model"], "tiny");
        assert!(v["created"].as_u64().unwrap() > 0);
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["text"], want.text.as_str());
        assert_eq!(choice["finish_reason"], "length");
        assert!(choice["logprobs"].is_null());
        let n = want.prompt_token_ids.len();
        let usage = json!({"prompt_tokens": n, "completion_tokens": 12, "total_tokens": n + 12,
                           "prompt_tokens_details": {"cached_tokens": 0}});
        assert_eq!(v["usage"], usage);

        // The same as token ids, and as a one-element list. The prompt is in the prefix cache
        // now: every full block before its last token is reused (OpenAI's cached_tokens).
        let ids = json!({"prompt": want.prompt_token_ids, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        let again = post_ok(addr, "/v1/completions", &ids).await;
        assert_eq!(again["choices"][0]["text"], want.text.as_str());
        let cached = (n - 1) / BLOCK_SIZE * BLOCK_SIZE;
        assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], cached, "{}", again["usage"]);
        let one = json!({"prompt": ["the quick brown fox"], "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        assert_eq!(post_ok(addr, "/v1/completions", &one).await["choices"][0]["text"], want.text.as_str());

        // Streamed: chunks add up to the same text, then the finish chunk, usage, [DONE].
        let mut req = req.clone();
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let chunks = chunks(&post_stream(addr, "/v1/completions", &req).await);
        assert!(chunks.len() >= 3, "{chunks:?}");
        let (usage, rest) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 12);
        let (fin, tokens) = rest.split_last().unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        let mut text = String::new();
        for c in tokens {
            assert_eq!(c["object"], "text_completion");
            assert_eq!(c["id"], fin["id"]);
            assert!(c["choices"][0]["finish_reason"].is_null());
            text.push_str(c["choices"][0]["text"].as_str().unwrap());
        }
        assert_eq!(text, want.text);

        // Without Content-Type (curl -d sends a form type; some clients send none).
        let body = json!({"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true}).to_string();
        for ct in [None, Some("application/x-www-form-urlencoded")] {
            let r = request(addr, "POST", "/v1/completions", Some(body.as_bytes()), ct).await;
            assert_eq!(r.status, 200);
            assert_eq!(json(r).await["choices"][0]["text"], want.text.as_str());
        }
    })
    .await;
}

#[tokio::test]
async fn chat_completions_streamed_or_not() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let messages = vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hello there")];
        let want = direct(&server.dir, Prompt::Chat(messages), 10);
        let req = json!({
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
            ],
            "max_completion_tokens": 10, "temperature": 0, "ignore_eos": true,
        });
        let v = post_ok(addr, "/v1/chat/completions", &req).await;
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        let choice = &v["choices"][0];
        assert_eq!(choice["message"], json!({"role": "assistant", "content": want.text}));
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], want.prompt_token_ids.len());
        assert_eq!(v["usage"]["completion_tokens"], 10);

        let mut req = req.clone();
        req["stream"] = json!(true);
        let chunks = chunks(&post_stream(addr, "/v1/chat/completions", &req).await);
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        let (fin, rest) = chunks.split_last().unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        let mut text = String::new();
        for c in rest {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c.get("usage").is_none(), "usage only when asked: {c}");
            text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(text, want.text);

        // No max_tokens: the rest of the context (stops at EOS or the 512-token context).
        let req = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let v = post_ok(addr, "/v1/chat/completions", &req).await;
        let usage = &v["usage"];
        assert!(usage["total_tokens"].as_u64().unwrap() <= 512, "{usage}");
        if v["choices"][0]["finish_reason"] == "length" {
            assert_eq!(usage["total_tokens"], 512);
        }
    })
    .await;
}

#[tokio::test]
async fn logprobs_in_openai_shapes() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let req = json!({"prompt": "hello", "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logprobs": 2});
        let v = post_ok(addr, "/v1/completions", &req).await;
        let lp = &v["choices"][0]["logprobs"];
        let tokens = lp["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 5);
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert_eq!(offsets[0], 0);
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
        for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let top = top.as_object().unwrap();
            assert!((1..=2).contains(&top.len()), "{top:?}");
            // Greedy: the chosen token is the most likely one.
            let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
            assert!((lp["token_logprobs"][i].as_f64().unwrap() - best).abs() < 1e-6);
        }

        // Streamed completions carry each token's logprobs.
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let chunks = chunks(&post_stream(addr, "/v1/completions", &sreq).await);
        let streamed: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"].as_object())
            .flat_map(|l| l["tokens"].as_array().unwrap())
            .collect();
        assert_eq!(streamed.len(), 5);

        let req = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 3,
        });
        let v = post_ok(addr, "/v1/chat/completions", &req).await;
        let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 4);
        for entry in content {
            let token = entry["token"].as_str().unwrap();
            let bytes: Vec<u8> = entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
            assert_eq!(bytes, token.as_bytes());
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert_eq!(top[0]["token"], entry["token"]);
            assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        }
        // logprobs without top_logprobs: the chosen token only.
        let req = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": true});
        let v = post_ok(addr, "/v1/chat/completions", &req).await;
        assert_eq!(v["choices"][0]["logprobs"]["content"][0]["top_logprobs"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn bad_requests_are_400s_with_openai_errors_and_the_server_keeps_serving() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let long: Vec<u32> = (0..600).map(|i| 10 + i % 200).collect();
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("/v1/completions", b"{\"prompt\": \"hi\", ".to_vec(), 400, "not valid JSON"),
            ("/v1/completions", b"".to_vec(), 400, "not valid JSON"),
            ("/v1/completions", br#"{"prompt": "hi", "max_tokens": "ten"}"#.to_vec(), 400, "max_tokens"),
            ("/v1/completions", br#"{"prompt": "hi", "max_tokens": -1}"#.to_vec(), 400, "max_tokens"),
            ("/v1/completions", br#"{"prompt": "hi", "max_tokens": 0}"#.to_vec(), 400, "max_tokens"),
            ("/v1/completions", br#"{"prompt": "hi", "temperature": -1}"#.to_vec(), 400, "temperature"),
            ("/v1/completions", br#"{"prompt": "hi", "top_p": 0}"#.to_vec(), 400, "top_p"),
            ("/v1/completions", br#"{"prompt": "hi", "logprobs": 21}"#.to_vec(), 400, "logprobs"),
            ("/v1/completions", br#"{"prompt": "hi", "stop": [""]}"#.to_vec(), 400, "stop"),
            ("/v1/completions", br#"{"prompt": "hi", "stop_token_ids": [300]}"#.to_vec(), 400, "300"),
            ("/v1/completions", br#"{"prompt": "hi", "top_k": -5}"#.to_vec(), 400, "top_k"),
            ("/v1/completions", br#"{"prompt": ""}"#.to_vec(), 400, "empty"),
            ("/v1/completions", br#"{"prompt": []}"#.to_vec(), 400, "empty"),
            ("/v1/completions", br#"{"max_tokens": 3}"#.to_vec(), 400, "missing field `prompt`"),
            ("/v1/completions", br#"{"prompt": 5}"#.to_vec(), 400, "prompt"),
            ("/v1/completions", br#"{"prompt": ["a", "b"]}"#.to_vec(), 400, "batched"),
            ("/v1/completions", json!({"prompt": long}).to_string().into_bytes(), 400, "context length"),
            ("/v1/completions", br#"{"prompt": "hi", "max_tokens": 600}"#.to_vec(), 400, "context length"),
            ("/v1/completions", br#"{"prompt": [1, 2, 300]}"#.to_vec(), 400, "300"),
            ("/v1/completions", br#"{"prompt": [1, -2]}"#.to_vec(), 400, "non-negative"),
            ("/v1/completions", br#"{"prompt": "hi", "n": 0}"#.to_vec(), 400, "n must be in [1, 64]"),
            ("/v1/completions", br#"{"prompt": "hi", "n": 65}"#.to_vec(), 400, "n must be in [1, 64]"),
            ("/v1/completions", br#"{"prompt": "hi", "prompt_logprobs": 21}"#.to_vec(), 400, "prompt_logprobs"),
            ("/v1/completions", br#"{"prompt": "hi", "prompt_logprobs": 1, "stream": true}"#.to_vec(), 400, "stream"),
            ("/v1/completions", br#"{"prompt": "hi", "presence_penalty": 2.5}"#.to_vec(), 400, "presence_penalty"),
            ("/v1/completions", br#"{"prompt": "hi", "frequency_penalty": -3}"#.to_vec(), 400, "frequency_penalty"),
            ("/v1/completions", br#"{"prompt": "hi", "logit_bias": {"abc": 1}}"#.to_vec(), 400, "token ids"),
            ("/v1/completions", br#"{"prompt": "hi", "logit_bias": {"5": "x"}}"#.to_vec(), 400, "logit_bias[5]"),
            ("/v1/completions", br#"{"prompt": "hi", "logit_bias": {"5": 101}}"#.to_vec(), 400, "[-100, 100]"),
            ("/v1/completions", br#"{"prompt": "hi", "logit_bias": {"9999": 1}}"#.to_vec(), 400, "9999"),
            (
                "/v1/completions",
                br#"{"prompt": "hi", "stream_options": {"include_usage": true}}"#.to_vec(),
                400,
                "stream",
            ),
            (
                "/v1/completions",
                br#"{"prompt": "hi", "model": "gpt-4"}"#.to_vec(),
                404,
                "The model `gpt-4` does not exist.",
            ),
            ("/v1/chat/completions", br#"{"messages": []}"#.to_vec(), 400, "messages"),
            ("/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), 400, "messages"),
            ("/v1/chat/completions", br#"{"messages": [{"content": "hi"}]}"#.to_vec(), 400, "role"),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#.to_vec(),
                400,
                "image_url",
            ),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": "hi"}], "n": 100}"#.to_vec(),
                400,
                "n must be in",
            ),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#.to_vec(),
                400,
                "top_logprobs",
            ),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}"#.to_vec(),
                400,
                "top_logprobs",
            ),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}"#.to_vec(),
                400,
                "context length",
            ),
            (
                "/v1/chat/completions",
                br#"{"messages": [{"role": "user", "content": "hi"}], "model": "x"}"#.to_vec(),
                404,
                "does not exist",
            ),
        ];
        for (path, body, status, needle) in cases {
            let shown = String::from_utf8_lossy(&body).chars().take(80).collect::<String>();
            // Streaming requests fail the same way, before any event is sent.
            for stream in [false, true] {
                let mut body = body.clone();
                if stream {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(Value::Object(mut m)) if !m.contains_key("stream_options") => {
                            m.insert("stream".into(), json!(true));
                            body = serde_json::to_vec(&m).unwrap();
                        }
                        _ => continue,
                    }
                }
                let r = request(addr, "POST", path, Some(&body), Some("application/json")).await;
                let got = r.status;
                assert!(r.header("content-type").unwrap().starts_with("application/json"));
                let v = json(r).await;
                assert_eq!(got, status, "{path} {shown} (stream {stream}): {v}");
                let err = &v["error"];
                let message = err["message"].as_str().unwrap();
                assert!(message.contains(needle), "{path} {shown}: `{message}` should mention `{needle}`");
                assert_eq!(err["code"], status);
                assert!(err["type"].is_string());
                assert!(err.get("param").is_some());
            }
        }
        // Wrong routes and methods are JSON errors too.
        let r = get(addr, "/v1/nothing").await;
        assert_eq!(r.status, 404);
        assert!(json(r).await["error"]["message"].is_string());
        let r = get(addr, "/v1/completions").await;
        assert_eq!(r.status, 405);
        assert!(json(r).await["error"]["message"].is_string());

        // Still serving.
        let v = post_ok(addr, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 3, "ignore_eos": true})).await;
        assert_eq!(v["usage"]["completion_tokens"], 3);
    })
    .await;
}

#[tokio::test]
async fn models_health_and_metrics() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let v = json(get(addr, "/v1/models").await).await;
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], "tiny");
        assert_eq!(data[0]["object"], "model");
        assert_eq!(data[0]["owned_by"], "shardline");
        assert_eq!(data[0]["max_model_len"], 512);

        let r = get(addr, "/health").await;
        assert_eq!(r.status, 200);
        assert_eq!(text(r).await, "");

        post_ok(addr, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 4, "ignore_eos": true})).await;
        let r = get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
        let text = text(r).await;
        for name in [
            "shardline:time_to_first_token_seconds",
            "shardline:kv_cache_usage_perc",
            "shardline:num_requests_running",
            "shardline:generation_tokens_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert_eq!(metric(&text, "shardline:time_to_first_token_seconds_count"), Some(1.0));
        assert_eq!(metric(&text, "shardline:generation_tokens_total"), Some(4.0));

        // Once the engine stops, health and requests say so.
        server.handle.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(addr, "/health").await.status != 503 {
            assert!(Instant::now() < deadline, "/health never turned 503");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = post(addr, "/v1/completions", &json!({"prompt": "hi"})).await;
        assert_eq!(r.status, 503);
        assert_eq!(json(r).await["error"]["code"], 503);
    })
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_frees_its_kv_blocks() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let req = json!({"prompt": "a long story", "max_tokens": 480, "ignore_eos": true, "stream": true});
        let r = post(addr, "/v1/completions", &req).await;
        assert_eq!(r.status, 200);
        let mut events = r.events();
        let first = events.next_data().await.unwrap().expect("a first chunk");
        assert!(first.starts_with('{'), "{first}");
        let busy = metric(&text(get(addr, "/metrics").await).await, "shardline:kv_cache_usage_perc").unwrap();
        drop(events); // closes the connection

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = text(get(addr, "/metrics").await).await;
            let usage = metric(&text, "shardline:kv_cache_usage_perc").unwrap();
            if usage == 0.0 {
                let aborted = metric(&text, "shardline:request_aborted_total").unwrap();
                let generated = metric(&text, "shardline:generation_tokens_total").unwrap();
                // Either the abort landed mid-way (the usual case), or generation had already
                // run to the end; both leave the cache empty.
                assert!(aborted == 1.0 || generated == 480.0, "aborted {aborted}, generated {generated}, busy {busy}");
                eprintln!("cancelled after {generated} tokens (kv usage while streaming: {busy})");
                break;
            }
            assert!(Instant::now() < deadline, "KV cache still {usage} used after the client left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The server still serves.
        post_ok(addr, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 2})).await;
    })
    .await;
}

/// A `LocalExecutor` whose first wait with a token to return turns into a group recovery: it
/// raises the recovering flag, holds until the test lets go, then reports a reset, continuing
/// on a fresh executor (nothing known, as after a rank was replaced).
struct RecoversOnce {
    inner: LocalExecutor,
    fresh: Option<LocalExecutor>,
    recovering: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    done: bool,
}

impl Executor for RecoversOnce {
    shardline_exec::executor_shape_from!(inner);
    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<(), ExecutorError> {
        self.inner.submit(plan, masks)
    }
    fn wait(&mut self) -> Result<StepOutput, ExecutorError> {
        let out = self.inner.wait()?;
        if self.done || out.sampled.is_empty() {
            return Ok(out);
        }
        self.done = true;
        self.recovering.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.release.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner = self.fresh.take().expect("one recovery");
        self.recovering.store(false, Ordering::SeqCst);
        let what = "test: rank 1 replaced".to_string();
        Err(ExecutorError::Reset(Reset { what, ranks_replaced: 1, seconds: 0.25 }))
    }
    fn recovering(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.recovering))
    }
}

#[tokio::test]
async fn health_says_recovering_while_the_group_reforms_and_requests_survive_it() {
    let dir = support::model_dir();
    let want = direct(&dir, Prompt::Text("hello there".into()), 6);
    let release = Arc::new(AtomicBool::new(false));
    let (inner, eos) = support::local_executor(&dir);
    let fresh = Some(support::local_executor(&dir).0);
    let recovering = Arc::new(AtomicBool::new(false));
    let exec = RecoversOnce { inner, fresh, recovering, release: Arc::clone(&release), done: false };
    let engine = support::engine_over(&dir, Box::new(exec), &eos, Default::default());
    let server = support::start_with(dir, engine).await;
    let addr = server.addr;
    bounded(async {
        let body = json!({"prompt": "hello there", "max_tokens": 6, "ignore_eos": true, "temperature": 0});
        let request = tokio::spawn(async move { post_ok(addr, "/v1/completions", &body).await });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = get(addr, "/health").await;
            if r.status == 503 {
                assert_eq!(text(r).await, "recovering");
                break;
            }
            assert!(Instant::now() < deadline, "/health never said recovering");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        release.store(true, Ordering::SeqCst);
        let v = request.await.unwrap();
        assert_eq!(v["choices"][0]["text"], want.text, "the request is recomputed, not lost");
        assert_eq!(get(addr, "/health").await.status, 200);
        let metrics = text(get(addr, "/metrics").await).await;
        assert_eq!(metric(&metrics, "shardline:recoveries_total"), Some(1.0));
        assert_eq!(metric(&metrics, "shardline:rank_restarts_total"), Some(1.0));
        assert_eq!(metric(&metrics, "shardline:recovered_requests_total"), Some(1.0));
        assert_eq!(metric(&metrics, "shardline:recovery_seconds"), Some(0.25));
    })
    .await;
}
