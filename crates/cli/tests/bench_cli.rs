//! `shardline bench` against a real `shardline serve` of SmolLM2-135M, over gRPC and over the
//! OpenAI-compatible HTTP API: every run completes every request without errors, and the JSON
//! report carries every metric with a positive value; ShareGPT text prompts work over both, and
//! shared-prefix prompts over gRPC. Nonsense workload flags fail before any connection.

mod common;

use common::{shardline, Server};
use serde_json::Value;

const NUM_REQUESTS: u64 = 8;

/// Runs a small sweep (concurrency 1 and 4, then the `rates` as Poisson arrivals) and returns
/// the JSON report.
fn bench(backend: &str, endpoint: &str, rates: &[&str], dir: &tempfile::TempDir) -> Value {
    let json = dir.path().join(format!("{backend}.json"));
    let md = dir.path().join(format!("{backend}.md"));
    let n = NUM_REQUESTS.to_string();
    let out = shardline()
        .args(["bench", "--backend", backend, "--endpoint", endpoint, "--input-len", "16", "--output-len", "8"])
        .args(["--concurrency", "1,4", "--num-requests", &n, "--warmup", "1"])
        .args(rates.iter().flat_map(|r| ["--request-rate", r]))
        .args(["--slo", "ttft=60000,tpot=60000"])
        .args(["--output-json", json.to_str().unwrap(), "--output-md", md.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench over {backend} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{backend}:\n{stdout}");
    assert!(stdout.contains("TTFT p50") && stdout.contains("c=4"), "no table on stdout:\n{stdout}");
    let markdown = std::fs::read_to_string(&md).unwrap();
    assert!(markdown.contains("| c=1 |") && markdown.contains("| c=4 |"), "{markdown}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn check(report: &Value, backend: &str, rates: &[f64]) {
    assert_eq!(report["schema"], "shardline.bench.v1");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 + rates.len(), "{backend}: one run per concurrency and rate");
    assert_eq!((runs[0]["concurrency"].as_u64(), runs[1]["concurrency"].as_u64()), (Some(1), Some(4)));
    for (run, rate) in runs[2..].iter().zip(rates) {
        assert_eq!(run["request_rate"].as_f64(), Some(*rate));
    }
    for run in runs {
        let what = format!("{backend} c={} rate={}", run["concurrency"], run["request_rate"]);
        assert_eq!(run["backend"], backend, "{what}");
        assert_eq!(run["model"], "smollm2-135m", "{what}");
        assert_eq!(run["errors"], serde_json::json!({}), "{what}");
        assert_eq!(run["num_requests"].as_u64(), Some(NUM_REQUESTS), "{what}");
        assert_eq!(run["completed"], run["num_requests"], "{what}");
        assert_eq!(run["total_input_tokens"].as_u64(), Some(16 * NUM_REQUESTS), "{what}");
        // ignore_eos: every request makes exactly its max_tokens.
        assert_eq!(run["total_output_tokens"].as_u64(), Some(8 * NUM_REQUESTS), "{what}");
        for key in ["duration_s", "request_throughput", "output_throughput", "total_token_throughput", "goodput"] {
            assert!(run[key].as_f64().is_some_and(|v| v > 0.0), "{what}: {key} = {}", run[key]);
        }
        // Generous SLOs: every request is good.
        let (goodput, throughput) = (run["goodput"].as_f64().unwrap(), run["request_throughput"].as_f64().unwrap());
        assert!((goodput - throughput).abs() < 1e-9, "{what}: goodput {goodput} vs {throughput}");
        for key in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            for stat in ["mean", "p50", "p90", "p99"] {
                assert!(run[key][stat].as_f64().is_some_and(|v| v > 0.0), "{what}: {key}.{stat} = {}", run[key][stat]);
            }
            assert!(run[key]["p50"].as_f64() <= run[key]["p99"].as_f64(), "{what}: {key}");
        }
        // E2E spans TTFT plus seven more tokens.
        assert!(run["e2e_ms"]["mean"].as_f64() > run["ttft_ms"]["mean"].as_f64(), "{what}");
    }
}

/// ShareGPT-style conversations: text prompts of varied lengths, replies' lengths as max_tokens.
const SHAREGPT: &str = r#"[
    {"conversations": [{"from": "human", "value": "What is the capital of France? Answer in one sentence."},
                       {"from": "gpt", "value": "The capital of France is Paris, on the Seine."}]},
    {"conversations": [{"from": "human", "value": "Write a short poem about the sea and the wind."},
                       {"from": "gpt", "value": "Waves roll in under a grey sky, the wind sings low."}]},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello! How can I help you today?"}]},
    {"conversations": [{"from": "human", "value": "List three primary colours, separated by commas."},
                       {"from": "gpt", "value": "Red, yellow, blue."}]}
]"#;

/// `--dataset sharegpt` over gRPC and OpenAI: every request completes and the report names the
/// dataset. The 2-token "Hi" conversation is filtered out, leaving three requests per round.
fn sharegpt(server: &Server, dir: &tempfile::TempDir) {
    let data = dir.path().join("sharegpt.json");
    std::fs::write(&data, SHAREGPT).unwrap();
    for (backend, endpoint) in [("grpc", &server.grpc), ("openai", &server.http)] {
        let json = dir.path().join(format!("sharegpt-{backend}.json"));
        let out = shardline()
            .args(["bench", "--backend", backend, "--endpoint", endpoint, "--dataset", "sharegpt"])
            .args(["--dataset-path", data.to_str().unwrap(), "--tokenizer", "smollm2-135m"])
            .args(["--concurrency", "2", "--num-requests", "6", "--warmup", "1"])
            .args(["--output-json", json.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "sharegpt over {backend}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("dataset sharegpt:") && stdout.contains("(3 requests)"), "{stdout}");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let run = &report["runs"][0];
        assert_eq!(run["errors"], serde_json::json!({}), "{backend}");
        assert_eq!(run["completed"].as_u64(), Some(6), "{backend}");
        assert!(run["dataset"].as_str().is_some_and(|d| d.starts_with("sharegpt:")), "{backend}: {}", run["dataset"]);
        // Each of the three requests twice: input and output are their token counts, not 16 × 6.
        let (input, output) =
            (run["total_input_tokens"].as_u64().unwrap(), run["total_output_tokens"].as_u64().unwrap());
        assert!(
            input % 2 == 0 && output % 2 == 0 && input > 6 * 4 && output > 6 * 4,
            "{backend}: {input} in, {output} out"
        );
    }
}

/// `--dataset prefix-repetition` over gRPC (the workload does not depend on the backend): every
/// request completes with prefix + suffix input tokens, and the report names the workload.
fn prefix_repetition(server: &Server, dir: &tempfile::TempDir) {
    let json = dir.path().join("prefix-repetition.json");
    let out = shardline()
        .args(["bench", "--backend", "grpc", "--endpoint", &server.grpc, "--dataset", "prefix-repetition"])
        .args(["--prefix-len", "32", "--num-prefixes", "2", "--input-len", "8", "--output-len", "4"])
        .args(["--concurrency", "2", "--num-requests", "6", "--warmup", "1"])
        .args(["--output-json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "prefix-repetition:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let caption = "dataset prefix-repetition: 2 prefixes × 32 tokens + 8-token unique suffixes / output 4 tokens";
    assert!(stdout.contains(caption), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["errors"], serde_json::json!({}));
    assert_eq!(run["completed"].as_u64(), Some(6));
    assert_eq!((run["total_input_tokens"].as_u64(), run["total_output_tokens"].as_u64()), (Some(6 * 40), Some(6 * 4)));
    assert_eq!(
        (run["dataset"].as_str(), run["prefix_len"].as_u64(), run["num_prefixes"].as_u64()),
        (Some("prefix-repetition"), Some(32), Some(2))
    );
    // Each prefix comes back: the server reports prompt tokens from its prefix cache.
    let cached = run["total_cached_tokens"].as_u64().unwrap();
    assert!((32..6 * 40).contains(&cached), "cached prompt tokens: {cached}");
    assert!(stdout.contains("cached in"), "{stdout}");
}

#[test]
fn bench_measures_a_live_server_over_grpc_and_openai_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "serve",
        "--model",
        "smollm2-135m",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    // The open-loop schedule does not depend on the backend: one rate over gRPC is enough.
    let grpc = bench("grpc", &server.grpc, &["50"], &dir);
    check(&grpc, "grpc", &[50.0]);
    let openai = bench("openai", &server.http, &[], &dir);
    check(&openai, "openai", &[]);
    sharegpt(&server, &dir);
    prefix_repetition(&server, &dir);
    assert!(server.stop().success());
}

#[test]
fn bench_refuses_nonsense_prefix_flags_before_connecting() {
    let cases: [(&[&str], &str); 5] = [
        (&["--dataset", "prefix-repetition", "--num-prefixes", "0"], "--num-prefixes must be at least 1"),
        (&["--dataset", "prefix-repetition", "--prefix-len", "0"], "--prefix-len must be at least 1"),
        (&["--dataset", "prefix-repetition", "--input-len", "0"], "--input-len (the unique suffix after the prefix)"),
        (&["--prefix-len", "64"], "--prefix-len and --num-prefixes need --dataset prefix-repetition"),
        (&["--dataset", "prefix-repetition", "--dataset-path", "x.json"], "--dataset-path needs --dataset sharegpt"),
    ];
    for (args, want) in cases {
        // Nothing listens on port 1: a check that let these through would fail on connecting.
        let out = shardline().args(["bench", "--endpoint", "http://127.0.0.1:1"]).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(want), "{args:?}: want `{want}` in: {stderr}");
    }
}
