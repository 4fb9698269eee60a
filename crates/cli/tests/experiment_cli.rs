//! `shardline experiment` end to end on SmolLM2-135M (resolved like `--model smollm2-135m`):
//! two layouts (one process with continuous batching, a TP 2 group with the sequential
//! scheduler) under a tiny sweep, the report folder it writes, no process left behind, and
//! `shardline cost` on its report.json. Bad configs fail before any server starts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::shardline;
use serde_json::Value;

const LAYOUTS: [&str; 2] = ["continuous", "tp2-sequential"];
const CONFIG: &str = r#"
name = "ci-tiny"
description = "CI: two layouts, two load levels"
[model]
name = "smollm2-135m"
[bench]
input_len = 16
output_len = 4
concurrency = [1, 2]
num_requests = 4
warmup = 1
[[layout]]
name = "continuous"
[[layout]]
name = "tp2-sequential"
tp = 2
scheduler = "sequential"
[cost]
gpu_hour_usd = 2.0
api_input_usd_per_m = 0.15
api_output_usd_per_m = 0.6
"#;

/// Processes whose environment holds `marker`: anything the experiment started and left.
fn processes_with(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
        })
        .collect()
}

fn check_run(run: &Value, what: &str) {
    assert_eq!(run["errors"], serde_json::json!({}), "{what}");
    assert_eq!(run["num_requests"].as_u64(), Some(4), "{what}");
    assert_eq!(run["completed"].as_u64(), Some(4), "{what}");
    assert_eq!(run["total_output_tokens"].as_u64(), Some(16), "{what}");
    for key in ["duration_s", "request_throughput", "output_throughput", "total_token_throughput"] {
        assert!(run[key].as_f64().is_some_and(|v| v > 0.0), "{what}: {key} = {}", run[key]);
    }
    for key in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
        for stat in ["mean", "p50", "p90", "p99"] {
            assert!(run[key][stat].as_f64().is_some_and(|v| v > 0.0), "{what}: {key}.{stat} = {}", run[key][stat]);
        }
    }
}

fn check_folder(out: &Path) {
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["schema"], "shardline.experiment.v1");
    assert_eq!(report["name"], "ci-tiny");
    assert!(report["machine"].as_str().is_some_and(|m| m.contains("cores")), "{}", report["machine"]);
    assert_eq!(report["config"]["bench"]["input_len"], 16);
    let layouts = report["layouts"].as_array().unwrap();
    assert_eq!(layouts.len(), 2);
    for (layout, name) in layouts.iter().zip(LAYOUTS) {
        assert_eq!(layout["name"], name);
        assert!(layout["ready_s"].as_f64().is_some_and(|s| s > 0.0));
        let runs = layout["runs"].as_array().unwrap();
        assert_eq!(runs.iter().map(|r| r["concurrency"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2)], "{name}");
        for run in runs {
            assert_eq!(run["model"], "smollm2-135m");
            check_run(run, &format!("{name} c={}", run["concurrency"]));
        }
    }
    assert_eq!(layouts[1]["tp"], 2);
    assert_eq!(layouts[1]["scheduler"], "sequential");

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in LAYOUTS {
        for level in ["c=1", "c=2"] {
            let rows = md.lines().filter(|l| l.starts_with(&format!("| {name} | {level} |"))).count();
            // Once in the results table, once in the cost table.
            assert_eq!(rows, 2, "{name} {level} in:\n{md}");
        }
    }
    assert!(md.contains("| TTFT p50 |") && md.contains("## Cost") && md.contains("break-even U"), "{md}");

    for stem in ["throughput", "ttft", "itl"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{stem}.png is not a PNG");
        assert!(png.len() > 5_000, "{stem}.png is only {} bytes", png.len());
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{stem}.svg");
        for name in LAYOUTS {
            assert!(svg.contains(name), "{stem}.svg has no legend entry for {name}");
        }
    }
    for name in LAYOUTS {
        assert!(out.join(format!("{name}.server.log")).exists(), "no server log for {name}");
    }
}

#[test]
fn experiment_measures_each_layout_and_writes_the_report_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = dir.path().join("report");
    let marker = format!("SHARDLINE_EXPERIMENT_TEST={}", std::process::id());
    let (key, value) = marker.split_once('=').unwrap();
    let started = Instant::now();
    let run = shardline()
        .args(["experiment", "--config", config.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .env(key, value)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("experiment took {:.1} s:\n{stdout}", started.elapsed().as_secs_f64());
    assert!(run.status.success(), "experiment failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("experiment: layout 2/2 tp2-sequential: starting"), "{stdout}");
    assert!(stdout.contains("ready in"), "{stdout}");
    assert_eq!(stdout.matches("TTFT p50").count(), 2, "one bench table per layout:\n{stdout}");
    assert!(processes_with(&marker).is_empty(), "processes left behind: {:?}", processes_with(&marker));
    check_folder(&out);

    let md = dir.path().join("cost.md");
    let cost = shardline()
        .args(["cost", "--report", out.join("report.json").to_str().unwrap(), "--gpu-hour-usd", "2", "--gpus", "1"])
        .args(["--api-input-usd-per-m", "0.15", "--api-output-usd-per-m", "0.6", "--output-md", md.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cost.stdout);
    assert!(cost.status.success(), "cost failed:\n{table}\n{}", String::from_utf8_lossy(&cost.stderr));
    let header = table.lines().find(|l| l.starts_with("| layout |")).unwrap_or_else(|| panic!("no table:\n{table}"));
    assert!(header.contains("$/1M out") && header.contains("break-even U"), "{header}");
    let rows: Vec<&str> =
        table.lines().filter(|l| LAYOUTS.iter().any(|n| l.starts_with(&format!("| {n} |")))).collect();
    assert_eq!(rows.len(), 4, "a row per layout × level:\n{table}");
    assert!(rows.iter().all(|r| r.split('|').count() == header.split('|').count()), "{table}");
    assert_eq!(std::fs::read_to_string(&md).unwrap(), table);

    // One GPU per rank: the TP 2 layout is charged for two.
    let per_rank = shardline()
        .args(["cost", "--report", out.join("report.json").to_str().unwrap(), "--gpu-hour-usd", "2", "--gpus", "tp*pp"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&per_rank.stdout);
    assert!(per_rank.status.success(), "{table}\n{}", String::from_utf8_lossy(&per_rank.stderr));
    assert!(table.contains("| tp2-sequential | c=1 |") && table.contains("| 2 | 4.00 |"), "{table}");
    assert!(table.contains("| continuous | c=1 |") && table.contains("| 1 | 2.00 |"), "{table}");

    let half = shardline()
        .args(["cost", "--report", out.join("report.json").to_str().unwrap(), "--gpu-hour-usd", "2", "--gpus", "1"])
        .args(["--api-input-usd-per-m", "0.15"])
        .output()
        .unwrap();
    assert!(!half.status.success(), "one API price alone must be refused");
    assert!(String::from_utf8_lossy(&half.stderr).contains("--api-output-usd-per-m"));
}

/// Runs `experiment` on `config`; it must fail fast with `want` in its message and start
/// nothing (no server log in the output folder).
fn refused(config: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = dir.path().join("report");
    let started = Instant::now();
    let run = shardline()
        .args(["experiment", "--config", path.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "accepted a bad config ({want})");
    assert!(stderr.contains(want) && stderr.contains("bad.toml"), "want `{want}` in: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!out.exists(), "a report folder was made for a bad config");
}

#[test]
fn bad_configs_fail_before_any_server_starts() {
    refused(&CONFIG.replace("warmup = 1", "warmup = 1\nwarm_up = 2"), "unknown field `warm_up`");
    refused(&CONFIG.replace("tp = 2", "tp = 0"), "tp and pp must be at least 1");
}

#[test]
fn a_server_that_dies_before_ready_fails_clearly_and_keeps_the_finished_layouts() {
    let config = CONFIG
        .replace("concurrency = [1, 2]", "concurrency = [1]")
        .replace("num_requests = 4", "num_requests = 2")
        .replace("scheduler = \"sequential\"", "scheduler = \"sequential\"\nserve_args = [\"--no-such-flag\"]");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dies.toml");
    std::fs::write(&path, config).unwrap();
    let out = dir.path().join("report");
    let run = shardline()
        .args(["experiment", "--config", path.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    // The error names the layout, says the server exited, and shows its last words.
    for want in ["layout 2/2 tp2-sequential", "exited", "before printing READY", "--no-such-flag"] {
        assert!(stderr.contains(want), "want `{want}` in: {stderr}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["layouts"].as_array().map(Vec::len), Some(1), "the first layout's results are kept");
    assert!(report["incomplete"].as_str().is_some_and(|w| w.contains("tp2-sequential")), "{}", report["incomplete"]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**Incomplete:** 1 of 2 layouts measured"), "{md}");
}
