//! The gRPC API over real sockets, on a tiny random model written in-test: batch invariance
//! under continuous batching, preemption under a tiny KV budget, cancellation freeing KV
//! blocks, and clear INVALID_ARGUMENT / RESOURCE_EXHAUSTED errors that leave the server serving.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::DType;
use shardline_engine::{Engine, EngineConfig, SchedulerPolicy};
use shardline_model::ModelSpec;
use shardline_proto::v1 as pb;
use shardline_proto::v1::generation_client::GenerationClient;
use shardline_router::{grpc, CoreConfig, EngineCore, Metrics, ServerInfo};
use shardline_tokenizer::Tokenizer;
use shardline_worker::LocalExecutor;
use tonic::transport::Channel;
use tonic::Code;

const VOCAB: usize = 300;
const BLOCK: usize = 4;

struct Server {
    client: GenerationClient<Channel>,
    core: EngineCore,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn start(num_blocks: usize, cfg: EngineConfig, max_queue: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let model_cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", VOCAB, false);
    shardline_model::testing::write_tiny_model(dir.path(), &model_cfg, 7).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(VOCAB))
        .unwrap();
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let eos = model.config().eos_token_ids.clone();
    let exec = LocalExecutor::new(model, num_blocks, BLOCK).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
    let engine = Engine::new(Box::new(exec), tokenizer, &eos, cfg).unwrap();
    let info = Arc::new(ServerInfo::new("tiny".into(), &engine, 1, 1, "f32".into()));
    let core = EngineCore::start(engine, CoreConfig { max_queue }, Arc::new(Metrics::new("tiny")));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let svc = grpc::service(core.handle.clone(), info, shardline_router::ApiKeys::default());
    let client = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
        GenerationClient::connect(format!("http://{addr}")).await.unwrap()
    });
    Server { client, core, _dir: dir, _rt: rt }
}

fn greedy_request(ids: Vec<u32>, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        input: Some(pb::generate_request::Input::TokenIds(pb::TokenIds { ids })),
        sampling: Some(pb::SamplingParameters {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// 32 prompts of 1..=94 tokens with 3..=24 new tokens each.
fn mixed_requests() -> Vec<pb::GenerateRequest> {
    (0..32u32)
        .map(|i| {
            let len = 1 + (i * 37 % 94);
            let ids = (0..len).map(|j| (i * 31 + j * 7) % VOCAB as u32).collect();
            greedy_request(ids, 3 + i * 5 % 22)
        })
        .collect()
}

impl Server {
    fn generate(&self, req: pb::GenerateRequest) -> Result<pb::GenerateResponse, tonic::Status> {
        let mut c = self.client.clone();
        self._rt.block_on(async move { c.generate(req).await.map(|r| r.into_inner()) })
    }

    fn generate_all(&self, reqs: Vec<pb::GenerateRequest>) -> Vec<pb::GenerateResponse> {
        let calls: Vec<_> = reqs
            .into_iter()
            .map(|r| {
                let mut c = self.client.clone();
                self._rt.spawn(async move { c.generate(r).await.map(|r| r.into_inner()) })
            })
            .collect();
        self._rt.block_on(async { futures_join(calls).await })
    }
}

async fn futures_join(
    calls: Vec<tokio::task::JoinHandle<Result<pb::GenerateResponse, tonic::Status>>>,
) -> Vec<pb::GenerateResponse> {
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap().expect("request succeeds"));
    }
    out
}

fn token_ids(rs: &[pb::GenerateResponse]) -> Vec<Vec<u32>> {
    rs.iter().map(|r| r.token_ids.clone()).collect()
}

#[test]
fn concurrent_greedy_requests_match_each_alone() {
    // A 16-token step budget forces chunked prefill while others decode.
    let cfg = EngineConfig { max_batch_tokens: 16, max_num_seqs: 32, ..Default::default() };
    let server = start(1024, cfg, 64);
    let alone: Vec<_> = mixed_requests().into_iter().map(|r| server.generate(r).unwrap()).collect();
    let together = server.generate_all(mixed_requests());
    assert_eq!(token_ids(&together), token_ids(&alone));
    // The second time round, prompts come largely from the prefix cache: same tokens.
    let cached: u32 = together.iter().map(|r| r.usage.unwrap().cached_prompt_tokens).sum();
    assert!(cached > 0, "the repeated prompts hit the prefix cache");
    for (r, want) in together.iter().zip(&alone) {
        let (u, w) = (r.usage.unwrap(), want.usage.unwrap());
        assert_eq!((u.prompt_tokens, u.completion_tokens), (w.prompt_tokens, w.completion_tokens));
        let t = r.timings.unwrap();
        assert!(t.ttft_ms > 0.0 && t.e2e_ms >= t.ttft_ms && t.queue_ms <= t.ttft_ms, "{t:?}");
    }
    assert_eq!(server.core.handle.stats.kv_blocks_used.load(Ordering::SeqCst), 0);
}

#[test]
fn a_tiny_kv_budget_preempts_and_every_request_still_completes_correctly() {
    let roomy = start(1024, EngineConfig::default(), 64);
    let reqs = || {
        (0..8u32)
            .map(|i| greedy_request((0..20 + i).map(|j| (i * 13 + j) % VOCAB as u32).collect(), 16))
            .collect::<Vec<_>>()
    };
    let alone: Vec<_> = reqs().into_iter().map(|r| roomy.generate(r).unwrap()).collect();
    // 24 blocks × 4 tokens: room for about two of these 36–43-token sequences at a time.
    let tight = start(24, EngineConfig { max_num_seqs: 8, ..Default::default() }, 64);
    let together = tight.generate_all(reqs());
    assert_eq!(token_ids(&together), token_ids(&alone));
    assert!(tight.core.handle.stats.preemptions.load(Ordering::SeqCst) > 0, "the budget should have forced preemption");
}

#[test]
fn cancelled_streams_free_their_kv_blocks() {
    let server = start(256, EngineConfig::default(), 64);
    let stats = Arc::clone(&server.core.handle.stats);
    server._rt.block_on(async {
        let mut streams = Vec::new();
        for i in 0..4u32 {
            let mut c = server.client.clone();
            let mut s = c.generate_stream(greedy_request(vec![i + 1; 10], 500)).await.unwrap().into_inner();
            let first = s.message().await.unwrap().unwrap();
            assert_eq!(first.token_ids.len(), 1);
            streams.push(s);
        }
        assert!(stats.kv_blocks_used.load(Ordering::SeqCst) > 0);
        drop(streams);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.kv_blocks_used.load(Ordering::SeqCst) > 0 || stats.running.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "KV blocks still used after cancelling every stream");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // And it still serves.
    assert_eq!(server.generate(greedy_request(vec![5, 6], 3)).unwrap().token_ids.len(), 3);
}

#[test]
fn bad_requests_get_invalid_argument_and_the_server_keeps_serving() {
    let server = start(64, EngineConfig::default(), 64);
    let with = |f: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut r = greedy_request(vec![1, 2, 3], 4);
        f(&mut r);
        r
    };
    let sampling = |f: &dyn Fn(&mut pb::SamplingParameters)| with(&|r| f(r.sampling.as_mut().unwrap()));
    let cases: Vec<(pb::GenerateRequest, &str)> = vec![
        (with(&|r| r.input = None), "no input"),
        (with(&|r| r.input = Some(pb::generate_request::Input::Text(String::new()))), "empty"),
        (with(&|r| r.input = Some(pb::generate_request::Input::TokenIds(pb::TokenIds { ids: vec![] }))), "empty"),
        (
            with(&|r| r.input = Some(pb::generate_request::Input::TokenIds(pb::TokenIds { ids: vec![1, 100_000] }))),
            "100000",
        ),
        (sampling(&|s| s.max_tokens = Some(1_000_000)), "context"),
        (sampling(&|s| s.max_tokens = Some(0)), "max_tokens"),
        (sampling(&|s| s.temperature = Some(-1.0)), "temperature"),
        (sampling(&|s| s.top_p = Some(0.0)), "top_p"),
        (sampling(&|s| s.logprobs = Some(50)), "logprobs"),
        (sampling(&|s| s.stop = vec![String::new()]), "stop"),
        (sampling(&|s| s.stop_token_ids = vec![VOCAB as u32]), "stop_token_id"),
    ];
    for (req, needle) in cases {
        let err = server.generate(req).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "`{}` should mention `{needle}`", err.message());
    }
    let ok = server.generate(greedy_request(vec![1, 2, 3], 4)).unwrap();
    assert_eq!(ok.token_ids.len(), 4);
    assert_eq!(ok.finish_reason, pb::FinishReason::Length as i32);
}

#[test]
fn a_full_queue_answers_resource_exhausted() {
    let server = start(256, EngineConfig { max_num_seqs: 1, ..Default::default() }, 2);
    server._rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..2u32 {
            let mut c = server.client.clone();
            held.push(c.generate_stream(greedy_request(vec![i + 1; 4], 500)).await.unwrap().into_inner());
        }
        let mut c = server.client.clone();
        let err = c.generate(greedy_request(vec![9], 2)).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        drop(held);
        // Slots come back once the streams are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.generate(greedy_request(vec![9], 2)).await {
                Ok(r) => break assert_eq!(r.into_inner().token_ids.len(), 2),
                Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    });
}

#[test]
fn health_and_model_info_describe_the_server() {
    let server = start(64, EngineConfig { policy: SchedulerPolicy::Continuous, ..Default::default() }, 64);
    let mut c = server.client.clone();
    let (health, info) = server._rt.block_on(async {
        (
            c.health(pb::HealthRequest {}).await.unwrap().into_inner(),
            c.model_info(pb::ModelInfoRequest {}).await.unwrap().into_inner(),
        )
    });
    assert!(health.serving);
    assert_eq!(health.kv_cache_usage, 0.0);
    assert_eq!(
        (info.model_id.as_str(), info.vocab_size, info.block_size, info.num_kv_blocks),
        ("tiny", VOCAB as u32, BLOCK as u32, 64)
    );
}
