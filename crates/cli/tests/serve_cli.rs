//! `shardline serve` / `launch` as users start them, on SmolLM2-135M (resolved like `--model
//! smollm2-135m`): 32 concurrent greedy requests of mixed lengths return what each returns
//! alone, in one process and as a TP 2 × PP 2 group; `generate` speaks to it; a worker killed
//! while streams are open (TP 2, PP 2, 2×2) is replaced and every stream goes on with the
//! undisturbed tokens, or with --max-restarts 0 gives the client an error and takes the whole
//! group down, as a killed rank 0 always does.

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

/// The body of `GET path` from `base` (`http://ADDR`).
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// The value of a metric (with whatever labels) in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ")?.1,
            None => rest.strip_prefix(' ')?,
        };
        value.trim().parse().ok()
    })
}

/// Eight greedy streams open on a group started by `launch --LAYOUT -- serve`, `signal` sent to
/// one worker (`victim`, an index into the launcher's children: rank 0 is the serve job,
/// started first) once each has its first token: every stream finishes with exactly the tokens
/// it gets undisturbed, and the gap the signal puts between tokens is printed (and bounded).
fn eight_streams_survive_a_lost_worker(layout: &[&str], victim: usize, signal: libc::c_int) {
    const TOKENS: u32 = 40;
    let what = layout.join(" ");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let flags = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
    let group = Server::start(&[&["launch"], layout, &["--", "serve"], &flags].concat());
    let addr = group.grpc.clone();
    let want: Vec<Vec<u32>> = rt.block_on(async {
        let mut c = GenerationClient::connect(addr.clone()).await.unwrap();
        let mut out = Vec::new();
        for p in PROMPTS {
            out.push(c.generate(request(p, TOKENS)).await.unwrap().into_inner().token_ids);
        }
        out
    });
    let ranks = children_of(group.child.id());
    let victim = ranks[victim];
    let (got, gaps) = rt.block_on(async move {
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(8);
        let killed_at = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
        let streams: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let (addr, req, first_tx, killed_at) =
                    (addr.clone(), request(p, TOKENS), first_tx.clone(), killed_at.clone());
                tokio::spawn(async move {
                    let mut c = GenerationClient::connect(addr).await.unwrap();
                    let mut s = c.generate_stream(req).await.unwrap().into_inner();
                    let (mut tokens, mut gap_after_kill) = (Vec::new(), None);
                    while let Some(m) = s.message().await.expect("no client error") {
                        if tokens.is_empty() {
                            first_tx.send(()).await.unwrap();
                        }
                        if let (None, Some(t)) = (gap_after_kill, killed_at.get()) {
                            gap_after_kill = Some(t.elapsed());
                        }
                        tokens.extend(m.token_ids);
                    }
                    (tokens, gap_after_kill)
                })
            })
            .collect();
        for _ in 0..PROMPTS.len() {
            first_rx.recv().await.unwrap();
        }
        // SAFETY: a signal to a worker rank of this test's group.
        unsafe { libc::kill(victim as libc::pid_t, signal) };
        killed_at.set(Instant::now()).unwrap();
        let mut got = Vec::new();
        let mut gaps = Vec::new();
        for s in streams {
            let (tokens, gap) = s.await.unwrap();
            got.push(tokens);
            gaps.extend(gap);
        }
        (got, gaps)
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{what}: stream {i}: the undisturbed tokens, none repeated or lost");
    }
    let worst = gaps.iter().max().copied().unwrap_or_default();
    eprintln!("{what}: kill to next token: {:?} at worst over {} streams", worst, gaps.len());
    assert!(worst < Duration::from_secs(30), "{what}: recovery took {worst:?}");
    // Rank 0 counts the new process even though the launcher, not rank 0, started it.
    let metrics = http_get(&group.http, "/metrics");
    for (name, want) in [("recoveries_total", 1.0), ("rank_restarts_total", 1.0)] {
        assert_eq!(metric(&metrics, &format!("shardline:{name}")), Some(want), "{what}: {metrics}");
    }
    let after = children_of(group.child.id()); // the replacement included
    assert_eq!(after.len(), ranks.len(), "{what}");
    assert_eq!(group.stop().code(), Some(130), "{what}: the group served on and stops cleanly");
    assert_no_leftovers(&[ranks, after].concat());
}

#[test]
fn eight_streams_survive_a_killed_rank_on_tp2() {
    eight_streams_survive_a_lost_worker(&["--tp", "2"], 1, libc::SIGKILL);
}

#[test]
fn eight_streams_survive_a_killed_rank_on_pp2() {
    // Rank 1 is the last stage: the one that samples.
    eight_streams_survive_a_lost_worker(&["--pp", "2"], 1, libc::SIGKILL);
}

#[test]
fn eight_streams_survive_a_killed_rank_on_tp2_pp2() {
    eight_streams_survive_a_lost_worker(&["--tp", "2", "--pp", "2"], 2, libc::SIGKILL);
}

/// A stopped worker keeps its sockets open: its silence gives it away, rank 0 (a sibling of
/// the worker under `launch`) kills it, and the launcher starts it again.
#[test]
fn eight_streams_survive_a_stopped_rank_on_tp2() {
    eight_streams_survive_a_lost_worker(&["--tp", "2", "--heartbeat-timeout", "1"], 1, libc::SIGSTOP);
}

/// A TP 2 group started by `launch` with `--max-restarts N`, one stream open, the launcher's
/// child `victim` (0: rank 0, the serve job; 1: the worker) killed: the stream fails, the
/// launcher exits non-zero and no rank is left.
fn a_killed_rank_fails_the_stream_and_the_group(max_restarts: &str, victim: usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let flags =
        ["launch", "--tp", "2", "--max-restarts", max_restarts, "--grpc-addr", "127.0.0.1:0", "--http-addr", "off"];
    let mut group = Server::start(&flags);
    let ranks = children_of(group.child.id());
    assert_eq!(ranks.len(), 2, "launcher runs rank 0 and rank 1");
    let (addr, victim) = (group.grpc.clone(), ranks[victim]);
    let err = rt.block_on(async move {
        let mut c = GenerationClient::connect(addr).await.unwrap();
        let mut s = c.generate_stream(request(PROMPTS[7], 5000)).await.unwrap().into_inner();
        s.message().await.unwrap().expect("a first token");
        // SAFETY: SIGKILL to a rank of this test's group.
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

#[test]
fn without_restarts_a_killed_worker_fails_open_streams_and_takes_the_group_down() {
    a_killed_rank_fails_the_stream_and_the_group("0", 1);
}

/// Rank 0 holds the engine and every request: its death is never recovered from.
#[test]
fn a_killed_rank_0_takes_the_group_down_even_with_restarts_allowed() {
    a_killed_rank_fails_the_stream_and_the_group("3", 0);
}
