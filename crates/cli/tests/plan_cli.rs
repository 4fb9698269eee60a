//! `shardline plan` as users run it: the ranked JSON for a GPU node, the weights it predicts
//! for SmolLM2 against what a real 2 × 2 group reports, a plot, `--calibrate` writing a
//! profile the planner then reads, and every kind of bad input ending in a message and a
//! non-zero exit.

mod common;

use common::shardline;

fn plan_json(args: &[&str]) -> serde_json::Value {
    let out = shardline().arg("plan").args(args).args(["--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn plan_fails(args: &[&str]) -> String {
    let out = shardline().arg("plan").args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn eight_gpus_get_every_layout_ranked_with_memory_speed_and_cost() {
    let j = plan_json(&[
        "--model",
        "llama-3.1-8b",
        "--gpus",
        "8",
        "--hardware",
        "h100-sxm",
        "--input-len",
        "512",
        "--output-len",
        "128",
        "--concurrency",
        "64",
        "--gpu-hour-price",
        "2.5",
    ]);
    let layouts = j["layouts"].as_array().unwrap();
    // (tp, pp) with tp · pp dividing 8: 1 + 2 + 3 + 4 groups.
    assert_eq!(layouts.len(), 10);
    let keys = ["tp", "pp", "replicas", "fits", "memory_per_gpu_bytes", "kv_tokens", "ttft_ms", "tpot_ms"];
    for l in layouts {
        for k in keys.iter().chain(&["output_tokens_per_s", "cost_per_1m_output"]) {
            assert!(l.get(*k).is_some(), "{k} missing in {l}");
        }
        let (tp, pp, replicas) =
            (l["tp"].as_u64().unwrap(), l["pp"].as_u64().unwrap(), l["replicas"].as_u64().unwrap());
        assert_eq!(tp * pp * replicas, 8);
        assert!(l["fits"].as_bool().unwrap(), "an 8B model fits every layout of 8 H100s: {l}");
        assert!(l["memory_per_gpu_bytes"].as_f64().unwrap() < 80.0 * 1024.0 * 1024.0 * 1024.0);
    }
    let tok_s: Vec<f64> = layouts.iter().map(|l| l["output_tokens_per_s"].as_f64().unwrap()).collect();
    assert!(tok_s.windows(2).all(|w| w[0] >= w[1]), "ranked by output tok/s: {tok_s:?}");
    assert_eq!(j["best"], layouts[0]);
    assert!(j["reason"].as_str().unwrap().contains("gives the most output tok/s"), "{}", j["reason"]);
    // The cost formula of `shardline cost`: 8 GPUs × $2.5 per hour over the hour's tokens.
    let best = &layouts[0];
    let want = 8.0 * 2.5 / (best["output_tokens_per_s"].as_f64().unwrap() * 3600.0) * 1e6;
    assert!((best["cost_per_1m_output"].as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0));
}

#[test]
fn a_model_too_big_for_one_gpu_fits_once_split_and_kv_memory_limits_the_batch() {
    let args = |gpus: &str| {
        [
            "--model",
            "llama-3.1-70b",
            "--hardware",
            "h100-sxm",
            "--weights-dtype",
            "fp8",
            "--kv-dtype",
            "fp8",
            "--input-len",
            "2048",
            "--output-len",
            "2048",
            "--max-throughput",
            "--max-num-seqs",
            "2048",
            "--gpus",
        ]
        .into_iter()
        .chain([gpus])
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let two = plan_json(&args("2").iter().map(String::as_str).collect::<Vec<_>>());
    let tp2 = two["layouts"].as_array().unwrap().iter().find(|l| l["tp"] == 2).unwrap().clone();
    let eight = plan_json(&args("8").iter().map(String::as_str).collect::<Vec<_>>());
    let tp8 = eight["layouts"].as_array().unwrap().iter().find(|l| l["tp"] == 8).unwrap().clone();
    // TP 8 holds far more KV per replica, so more requests run and throughput is higher.
    assert!(tp8["kv_tokens"].as_u64().unwrap() > 4 * tp2["kv_tokens"].as_u64().unwrap());
    assert!(tp8["output_tokens_per_s"].as_f64().unwrap() > 2.0 * tp2["output_tokens_per_s"].as_f64().unwrap());
    let one = plan_fails(&args("1").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(one.contains("fits in no layout") && one.contains("KV room for"), "{one}");
}

/// Weights per rank as the planner sizes them, against what the ranks of a real 2 × 2 group
/// report (MiB to one decimal, as the log prints them).
#[test]
fn smollm2_planned_weights_match_a_real_two_by_two_group() {
    let j = plan_json(&["--gpus", "4", "--input-len", "128", "--output-len", "64", "--concurrency", "8"]);
    let row = j["layouts"].as_array().unwrap().iter().find(|l| l["tp"] == 2 && l["pp"] == 2).unwrap().clone();
    let planned: Vec<f64> =
        row["weights_bytes_per_rank"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap() / 1048576.0).collect();
    let out = shardline()
        .args(["run", "--tp", "2", "--pp", "2", "--prompt", "Hi", "--max-tokens", "2", "--output", "json"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let mut seen = 0;
    for line in log.lines().filter(|l| l.contains(" ready: stage")) {
        let rank: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mib: f64 = line.split("weights ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!((planned[rank] - mib).abs() < 0.051, "rank {rank}: planned {:.2} MiB, READY {mib} MiB", planned[rank]);
        seen += 1;
    }
    assert_eq!(seen, 4, "{log}");
}

#[test]
fn plot_and_table_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = shardline()
        .args(["plan", "--model", "llama-3.1-8b", "--gpus", "4", "--hardware", "l4", "--input-len", "256"])
        .args(["--output-len", "256", "--concurrency", "16", "--slo-tpot-ms", "60", "--plot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        table.contains("goodput tok/s") && table.contains("TP 4 × PP 1") && table.contains("gives the most"),
        "{table}"
    );
    for f in ["plan-throughput.svg", "plan-throughput.png"] {
        assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000, "{f}");
    }
}

#[test]
fn calibrate_writes_a_profile_that_plans_use() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("cpu.toml");
    let out = shardline().args(["plan", "--calibrate", "--calibrate-output"]).arg(&profile).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("[stream_gbs]") && text.contains("all_reduce = \"direct\""), "{text}");
    let j = plan_json(&[
        "--gpus",
        "2",
        "--hardware",
        profile.to_str().unwrap(),
        "--input-len",
        "64",
        "--output-len",
        "32",
        "--concurrency",
        "4",
    ]);
    assert!(j["best"]["output_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_input_is_named_and_exits_non_zero() {
    let base = ["--gpus", "2", "--input-len", "64", "--output-len", "32", "--concurrency", "4"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    let err = plan_fails(&with(&base, &["--hardware", "h1000"]));
    assert!(err.contains("unknown hardware `h1000`") && err.contains("h100-sxm"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad_json = dir.path().join("config.json");
    std::fs::write(&bad_json, "{\"hidden_size\": 64,").unwrap();
    let err = plan_fails(&with(&base, &["--model", bad_json.to_str().unwrap()]));
    assert!(err.contains("is not JSON"), "{err}");
    std::fs::write(&bad_json, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}").unwrap();
    let err = plan_fails(&with(&base, &["--model", bad_json.to_str().unwrap()]));
    assert!(err.contains("config.json"), "{err}");
    let bad_hw = dir.path().join("gpu.toml");
    std::fs::write(&bad_hw, "name = \"x\"\nmemory_gib = -1\n").unwrap();
    let err = plan_fails(&with(&base, &["--hardware", bad_hw.to_str().unwrap()]));
    assert!(err.contains("gpu.toml"), "{err}");
    let err = plan_fails(&with(&base, &["--model", "llama-3.1-405b", "--hardware", "l4"]));
    assert!(err.contains("fits in no layout on 2 × l4"), "{err}");
    let err = plan_fails(&["--gpus", "0", "--input-len", "8", "--output-len", "8", "--concurrency", "1"]);
    assert!(err.contains("--gpus 0 must be a positive multiple"), "{err}");
    let err = plan_fails(&[
        "--gpus",
        "16",
        "--hardware",
        "h100-sxm",
        "--input-len",
        "8",
        "--output-len",
        "8",
        "--max-throughput",
    ]);
    assert!(err.contains("pass --nodes"), "{err}");
    let err = plan_fails(&with(&base, &["--max-throughput"]));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = plan_fails(&with(&base, &["--model", "no-such-model"]));
    assert!(err.contains("no-such-model") && err.contains("llama-3.1-70b"), "{err}");
}
