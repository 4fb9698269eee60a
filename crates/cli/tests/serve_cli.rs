//! `shardline serve` / `launch` as users start them, on SmolLM2-135M (resolved like `--model
//! smollm2-135m`): 32 concurrent greedy requests of mixed lengths return what each returns
//! alone, in one process and as a TP 2 × PP 2 group; `generate` speaks to it; a rank killed
//! while a stream is open gives the client an error and takes the whole group down.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_leftovers, children_of, shardline, wait_bounded, Server};
use shardline_proto::v1 as pb;
use shardline_proto::v1::generation_client::GenerationClient;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Hi",
    "Write a haiku about the sea.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In 1969, the first humans walked on the Moon. The mission was called Apollo 11, and the astronauts were",
    "List three primary colors:",
    "Le français est une langue romane. Elle est parlée en France, en Belgique, en Suisse, au Canada et dans de nombreux pays d'Afrique. Sa grammaire",
    "Once upon a time",
];
const MAX_TOKENS: [u32; 4] = [6, 10, 14, 18];

fn request(prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Text(prompt.into())),
        sampling: Some(pb::SamplingParameters {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every prompt alone, one request at a time, with the longest max_tokens.
async fn alone(addr: &str) -> Vec<Vec<u32>> {
    let mut c = GenerationClient::connect(addr.to_string()).await.unwrap();
    let mut out = Vec::new();
    for p in PROMPTS {
        out.push(c.generate(request(p, MAX_TOKENS[3])).await.unwrap().into_inner().token_ids);
    }
    out
}

/// 32 requests at once (each prompt × each max_tokens); checks each against `want`: a greedy
/// request with fewer max_tokens returns exactly the prefix the longest one returned alone.
async fn check_concurrent(addr: &str, want: &[Vec<u32>], what: &str) {
    let calls: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .flat_map(|(i, p)| MAX_TOKENS.iter().map(move |&m| (i, p, m)))
        .map(|(i, p, m)| {
            let addr = addr.to_string();
            let req = request(p, m);
            (i, m, tokio::spawn(async move { GenerationClient::connect(addr).await.unwrap().generate(req).await }))
        })
        .collect();
    assert_eq!(calls.len(), 32);
    for (i, m, call) in calls {
        let got = call.await.unwrap().unwrap_or_else(|e| panic!("{what}: prompt {i}: {e:?}")).into_inner();
        assert_eq!(got.token_ids, want[i][..m as usize], "{what}: prompt {i}, max_tokens {m}");
    }
}

#[test]
fn smollm2_concurrent_requests_match_each_alone_in_one_process_and_tp2_pp2() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // A 64-token step budget: long prompts are prefilled in chunks while others decode.
    let flags = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "off", "--max-batch-tokens", "64"];
    let single = Server::start(&[&["serve"][..], &flags].concat());
    let want = rt.block_on(alone(&single.grpc));
    rt.block_on(check_concurrent(&single.grpc, &want, "tp 1"));
    assert!(single.stop().success());

    // The group as `launch` starts it: rank 0 serves, three workers.
    let group = Server::start(&[&["launch", "--tp", "2", "--pp", "2", "--"], &["serve"][..], &flags].concat());
    rt.block_on(check_concurrent(&group.grpc, &want, "tp 2 × pp 2"));
    // And the CLI client gets the same tokens.
    let out = shardline()
        .args([
            "generate",
            "--addr",
            &group.grpc,
            "--prompt",
            PROMPTS[0],
            "--max-tokens",
            "18",
            "--ignore-eos",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_ids"], serde_json::json!(want[0]));
    assert!(json["metrics"]["ttft_ms"].as_f64().unwrap() > 0.0);
    // The launcher passes SIGTERM to every rank and reports the interruption (exit 130).
    let ranks = children_of(group.child.id());
    assert_eq!(ranks.len(), 4);
    assert_eq!(group.stop().code(), Some(130));
    assert_no_leftovers(&ranks);
}

#[test]
fn a_killed_rank_fails_open_streams_and_takes_the_group_down() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = Server::start(&["launch", "--tp", "2", "--grpc-addr", "127.0.0.1:0", "--http-addr", "off"]);
    let ranks = children_of(group.child.id());
    assert_eq!(ranks.len(), 2, "launcher runs rank 0 and rank 1");
    let (addr, victim) = (group.grpc.clone(), ranks[1]);
    let err = rt.block_on(async move {
        let mut c = GenerationClient::connect(addr).await.unwrap();
        let mut s = c.generate_stream(request(PROMPTS[7], 5000)).await.unwrap().into_inner();
        s.message().await.unwrap().expect("a first token");
        // SAFETY: SIGKILL to a worker rank of this test's group.
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "the stream kept going after a rank died");
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended cleanly despite a dead rank"),
                Err(e) => break e,
            }
        }
    });
    eprintln!("client saw: {err:?}");
    let status = wait_bounded(&mut group.child, Duration::from_secs(15));
    assert!(!status.success(), "the launcher reports the failure");
    assert_no_leftovers(&ranks);
}
