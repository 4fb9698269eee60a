//! Test support for `http_api.rs`: a tiny model served by the engine core and the HTTP router
//! on 127.0.0.1:0, and requests through the benchmark's HTTP/SSE client.

#![allow(dead_code)]

use candle_core::DType;
use serde_json::{json, Value};
pub use shardline_bench::backend::http::{Events, Response, Target};
use shardline_engine::{Engine, EngineConfig, Executor};
use shardline_model::ModelSpec;
use shardline_router::http::router;
use shardline_router::{CoreConfig, EngineCore, EngineHandle, Metrics, ServerInfo};
use shardline_sampling::SamplingParams;
use shardline_tokenizer::{Prompt, Tokenizer};
use shardline_worker::LocalExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const VOCAB: usize = 300;
pub const BLOCK_SIZE: usize = 4;
pub const NUM_BLOCKS: usize = 256;
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

// ---------------------------------------------------------------------------------------------
// Fixture: tiny model, engine core and HTTP server on 127.0.0.1:0
// ---------------------------------------------------------------------------------------------

pub fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", VOCAB, false);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 3).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(VOCAB))
        .unwrap();
    let tok_cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML});
    std::fs::write(dir.path().join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    dir
}

pub fn engine(dir: &tempfile::TempDir) -> Engine {
    engine_with(dir, EngineConfig::default())
}

pub fn engine_with(dir: &tempfile::TempDir, cfg: EngineConfig) -> Engine {
    let (exec, eos) = local_executor(dir);
    engine_over(dir, Box::new(exec), &eos, cfg)
}

/// An executor over the model in `dir`, and the model's EOS ids.
pub fn local_executor(dir: &tempfile::TempDir) -> (LocalExecutor, Vec<u32>) {
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let eos = model.config().eos_token_ids.clone();
    (LocalExecutor::new(model, NUM_BLOCKS, BLOCK_SIZE).unwrap(), eos)
}

/// An engine over `exec`, detokenizing with `dir`'s tokenizer.
pub fn engine_over(dir: &tempfile::TempDir, exec: Box<dyn Executor>, eos: &[u32], cfg: EngineConfig) -> Engine {
    let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
    Engine::new(exec, tokenizer, eos, cfg).unwrap()
}

pub struct Server {
    pub addr: SocketAddr,
    pub handle: EngineHandle,
    pub dir: tempfile::TempDir,
    pub _core: EngineCore,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

pub async fn start() -> Server {
    let dir = model_dir();
    let engine = engine(&dir);
    start_with(dir, engine).await
}

/// Serves `engine` (built over the model in `dir`) over HTTP on an ephemeral port.
pub async fn start_with(dir: tempfile::TempDir, engine: Engine) -> Server {
    let info = Arc::new(ServerInfo::new("tiny".into(), &engine, 1, 1, "f32".into()));
    let core = EngineCore::start(engine, CoreConfig { max_queue: 64 }, Arc::new(Metrics::new("tiny")));
    let handle = core.handle.clone();
    let app = router(handle.clone(), info, shardline_router::ApiKeys::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { addr, handle, dir, _core: core }
}

/// Every test body runs under this bound.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), f).await.expect("test timed out")
}

/// The engine's own greedy result, on a fresh engine over the same weights.
pub fn direct(dir: &tempfile::TempDir, prompt: Prompt, max_tokens: usize) -> shardline_engine::GenerationOutput {
    let params = SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() };
    let mut engine = engine(dir);
    let ids = engine.tokenizer().encode_prompt(&prompt).unwrap();
    engine.generate(ids, params, |_| {}).unwrap()
}

// ---------------------------------------------------------------------------------------------
// HTTP over the workspace's one client (shardline-bench's), failing the test on I/O errors
// ---------------------------------------------------------------------------------------------

/// Sends one request on a fresh connection. `content_type` None sends none at all.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Response {
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    target.send(method, path, body, content_type).await.unwrap()
}

pub async fn text(r: Response) -> String {
    r.text().await.unwrap()
}

pub async fn json(r: Response) -> Value {
    let text = text(r).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every remaining event's data.
pub async fn all_events(mut events: Events) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = events.next_data().await.unwrap() {
        out.push(d);
    }
    out
}

pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, Some(body.to_string().as_bytes()), Some("application/json")).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None, None).await
}

/// Posts and expects 200 with a JSON body.
pub async fn post_ok(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let r = post(addr, path, body).await;
    let status = r.status;
    let v = json(r).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Posts a streaming request; returns the data of every event (the last is `[DONE]`).
pub async fn post_stream(addr: SocketAddr, path: &str, body: &Value) -> Vec<String> {
    let r = post(addr, path, body).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    all_events(r.events()).await
}

pub fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {events:?}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// The value of an unlabelled-by-us metric line (`name{model_name="tiny"} value`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
