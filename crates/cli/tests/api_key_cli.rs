//! `serve --api-key`: every /v1 route and the gRPC API refuse requests without an accepted
//! key (401 with OpenAI's error body, UNAUTHENTICATED), /health and /metrics stay open, and
//! `generate` and `bench` reach the server with `--api-key`. SmolLM2-135M, loopback only.

mod common;

use common::{http, shardline, Server};

fn http_get(base: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    http(base, "GET", path, None, authorization)
}

fn generate(grpc: &str, key: Option<&str>) -> std::process::Output {
    let mut cmd = shardline();
    cmd.args(["generate", "--addr", grpc, "--prompt", "Hi", "--max-tokens", "3"]);
    if let Some(k) = key {
        cmd.args(["--api-key", k]);
    }
    cmd.output().unwrap()
}

#[test]
fn api_keys_guard_the_apis_and_leave_probes_open() {
    let server = Server::start(&[
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--api-key",
        "key-one",
        "--api-key",
        "key-two",
    ]);
    let http = server.http.clone();
    for (auth, want) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Bearer key-one-and-more"), 401),
        (Some("key-one"), 401),
        (Some("Bearer key-one"), 200),
        (Some("bearer key-two"), 200),
    ] {
        let (status, body) = http_get(&http, "/v1/models", auth);
        assert_eq!(status, want, "{auth:?}: {body}");
        if want == 401 {
            let err: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(err["error"]["type"], "authentication_error", "{body}");
            assert!(err["error"]["message"].as_str().unwrap().contains("API key"), "{body}");
        }
    }
    assert_eq!(http_get(&http, "/health", None).0, 200);
    assert_eq!(http_get(&http, "/metrics", None).0, 200);

    let refused = generate(&server.grpc, None);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("API key"), "{err}");
    let refused = generate(&server.grpc, Some("nope"));
    assert!(!refused.status.success());
    let ok = generate(&server.grpc, Some("key-two"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    for (backend, endpoint) in [("grpc", &server.grpc), ("openai", &http)] {
        let out = shardline()
            .args(["bench", "--backend", backend, "--endpoint", endpoint, "--input-len", "8", "--output-len", "4"])
            .args(["--concurrency", "2", "--num-requests", "2", "--warmup", "0", "--api-key", "key-one"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains("error"), "{backend}: {text}");
    }
    assert!(server.stop().success());
}

#[test]
fn an_empty_key_is_refused_at_start() {
    let out = shardline().args(["serve", "--api-key", " ", "--grpc-addr", "127.0.0.1:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--api-key: an API key must not be empty"), "{err}");
}
