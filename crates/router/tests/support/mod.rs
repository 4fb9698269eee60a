//! Test support for `http_api.rs`: a tiny model served by the engine core and the HTTP router
//! on 127.0.0.1:0, and a minimal HTTP/1.1 client (chunked bodies and SSE) over
//! `tokio::net::TcpStream`, which keeps the dependency tree as it is.

#![allow(dead_code)]

use candle_core::DType;
use serde_json::{json, Value};
use shardline_engine::{Engine, EngineConfig};
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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let eos = model.config().eos_token_ids.clone();
    let exec = LocalExecutor::new(model, NUM_BLOCKS, BLOCK_SIZE).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
    Engine::new(Box::new(exec), tokenizer, &eos, cfg).unwrap()
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
    let info = Arc::new(ServerInfo::new("tiny".into(), &engine, 1, 1, "f32".into()));
    let core = EngineCore::start(engine, CoreConfig { max_queue: 64 }, Arc::new(Metrics::new("tiny")));
    let handle = core.handle.clone();
    let app = router(handle.clone(), info);
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
// A minimal HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

pub enum BodyKind {
    Chunked,
    Length(usize),
    UntilClose,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub reader: BufReader<TcpStream>,
    pub kind: BodyKind,
    pub done: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next piece of the body, or None at its end.
    pub async fn next_bytes(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        match &mut self.kind {
            BodyKind::Chunked => {
                let mut line = String::new();
                self.reader.read_line(&mut line).await.unwrap();
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        line.clear();
                        if self.reader.read_line(&mut line).await.unwrap() == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    self.done = true;
                    return None;
                }
                let mut buf = vec![0; size];
                self.reader.read_exact(&mut buf).await.unwrap();
                line.clear();
                self.reader.read_line(&mut line).await.unwrap();
                Some(buf)
            }
            BodyKind::Length(left) => {
                if *left == 0 {
                    self.done = true;
                    return None;
                }
                let mut buf = vec![0; (*left).min(1 << 16)];
                let n = self.reader.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the body ended");
                *left -= n;
                buf.truncate(n);
                Some(buf)
            }
            BodyKind::UntilClose => {
                let mut buf = vec![0; 1 << 16];
                let n = self.reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    self.done = true;
                    return None;
                }
                buf.truncate(n);
                Some(buf)
            }
        }
    }

    pub async fn text(mut self) -> String {
        let mut all = Vec::new();
        while let Some(b) = self.next_bytes().await {
            all.extend(b);
        }
        String::from_utf8(all).unwrap()
    }

    pub async fn json(self) -> Value {
        let text = self.text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Server-sent events: the `data` of the next event, skipping comments (keep-alives).
    pub fn events(self) -> Events {
        Events { response: self, buf: Vec::new() }
    }
}

pub struct Events {
    pub response: Response,
    pub buf: Vec<u8>,
}

impl Events {
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..i + 2).collect();
                let event = String::from_utf8(event).unwrap();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            match self.response.next_bytes().await {
                Some(b) => self.buf.extend(b),
                None => return None,
            }
        }
    }

    /// Every remaining event's data.
    pub async fn all(mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await {
            out.push(d);
        }
        out
    }
}

/// Sends one request on a fresh connection. `content_type` None sends none at all.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let kind = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        BodyKind::Chunked
    } else if let Some(n) = find("content-length") {
        BodyKind::Length(n.parse().unwrap())
    } else {
        BodyKind::UntilClose
    };
    Response { status, headers, reader, kind, done: false }
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
    let v = r.json().await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Posts a streaming request; returns the data of every event (the last is `[DONE]`).
pub async fn post_stream(addr: SocketAddr, path: &str, body: &Value) -> Vec<String> {
    let r = post(addr, path, body).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    r.events().all().await
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
