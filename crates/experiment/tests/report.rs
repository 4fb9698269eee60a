//! The report folder from hand-made results, without a server: report.json keeps the bench
//! run shape under the experiment schema, report.md has a row per layout × level and a cost
//! table priced per layout, and the plots render as real SVG and PNG files.

use std::path::Path;

use shardline_bench::metrics::{summarize, RequestRecord};
use shardline_bench::{BenchConfig, BenchReport, Load, RunResult, Stop};
use shardline_experiment::charts::experiment_charts;
use shardline_experiment::{ExperimentConfig, ExperimentReport, LayoutResult};

const CONFIG: &str = r#"
name = "fake"
description = "Hand-made numbers."
[bench]
input_len = 16
output_len = 3
concurrency = [1, 8]
request_rate = [4.0]
num_requests = 2
[[layout]]
name = "tp1"
[[layout]]
name = "tp2-pp2"
tp = 2
pp = 2
[cost]
gpu_hour_usd = 2.0
api_input_usd_per_m = 0.15
api_output_usd_per_m = 0.6
"#;

/// Two requests, each 16 tokens in and 3 out, `step` seconds between tokens.
fn run(load: Load, step: f64) -> RunResult {
    let req = |send: f64| RequestRecord {
        input_tokens: 16,
        send_s: send,
        token_times_s: vec![send + step, send + 2.0 * step, send + 3.0 * step],
        output_tokens: 3,
        cached_tokens: None,
        end_s: send + 3.0 * step,
        error: None,
    };
    RunResult { load, num_requests: 2, summary: summarize(&[req(0.0), req(step)], None) }
}

fn bench(config: &BenchConfig, step: f64) -> BenchReport {
    let runs = vec![
        run(Load::Concurrency(1), step),
        run(Load::Concurrency(8), step / 4.0),
        run(Load::Rate { rate: 4.0, max_concurrency: None }, step / 2.0),
    ];
    BenchReport { config: config.clone(), model: "smollm2-135m".into(), runs }
}

fn report() -> ExperimentReport {
    let config = ExperimentConfig::parse(CONFIG, Path::new("fake.toml")).unwrap();
    let bench_config = config.bench_config("http://127.0.0.1:1".into(), false);
    assert_eq!(bench_config.stop, Stop::Requests(2));
    let layouts = config
        .layouts
        .iter()
        .zip([0.1, 0.05])
        .map(|(l, step)| LayoutResult { layout: l.clone(), ready_s: 1.5, bench: bench(&bench_config, step) })
        .collect();
    ExperimentReport {
        config,
        machine: "Test CPU, 2 cores, linux x86_64".into(),
        started_utc: "20260101-000000".into(),
        layouts,
        incomplete: None,
    }
}

#[test]
fn json_reuses_the_bench_run_shape() {
    let v = report().to_json();
    assert_eq!(v["schema"], "shardline.experiment.v1");
    assert_eq!(v["config"]["layout"][1]["tp"], 2);
    let layouts = v["layouts"].as_array().unwrap();
    assert_eq!((layouts[1]["name"].as_str(), layouts[1]["pp"].as_u64()), (Some("tp2-pp2"), Some(2)));
    let runs = layouts[0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!((runs[0]["concurrency"].as_u64(), runs[2]["request_rate"].as_f64()), (Some(1), Some(4.0)));
    // The same keys `shardline bench --output-json` writes.
    for key in ["backend", "model", "output_throughput", "total_token_throughput", "ttft_ms", "itl_ms", "errors"] {
        assert!(runs[0].get(key).is_some(), "{key}");
    }
    // And `shardline cost` reads it back: one run per layout × level.
    assert_eq!(shardline_bench::cost::measured_runs(&v).unwrap().len(), 6);
}

#[test]
fn markdown_has_a_row_per_layout_and_level_and_per_layout_costs() {
    let md = report().markdown();
    for layout in ["tp1", "tp2-pp2"] {
        for load in ["c=1", "c=8", "rate=4/s"] {
            let rows = md.lines().filter(|l| l.starts_with(&format!("| {layout} | {load} |"))).count();
            assert_eq!(rows, 2, "{layout} {load} (results and cost):\n{md}");
        }
    }
    assert!(md.contains("Hand-made numbers.") && md.contains("Test CPU"), "{md}");
    // tp1: 1 GPU at $2 = $2/h; tp2-pp2: 4 GPUs = $8/h (gpus defaults to tp*pp).
    let cost_row = |layout: &str| md.lines().filter(|l| l.starts_with(&format!("| {layout} | c=1 |"))).nth(1).unwrap();
    assert!(cost_row("tp1").contains("| 1 | 2.00 |"), "{}", cost_row("tp1"));
    assert!(cost_row("tp2-pp2").contains("| 4 | 8.00 |"), "{}", cost_row("tp2-pp2"));
    assert!(md.contains("never (U* = "), "tiny throughput never breaks even:\n{md}");
    assert!(!md.contains("Incomplete"));
    let mut partial = report();
    partial.layouts.pop();
    partial.incomplete = Some("layout 2/2 tp2-pp2: starting the server: it exited".into());
    let md = partial.markdown();
    assert!(md.contains("**Incomplete:** 1 of 2 layouts measured; then layout 2/2 tp2-pp2"), "{md}");
    assert_eq!(partial.to_json()["incomplete"], "layout 2/2 tp2-pp2: starting the server: it exited");
}

#[test]
fn charts_plot_concurrency_runs_only() {
    let r = report();
    let named: Vec<_> = r.layouts.iter().map(|l| (l.layout.name.as_str(), &l.bench)).collect();
    let charts = experiment_charts(&named);
    assert_eq!(charts.iter().map(|c| c.stem).collect::<Vec<_>>(), ["throughput", "ttft", "itl"]);
    assert_eq!(charts[0].series.len(), 2);
    assert_eq!(charts[1].series.len(), 4, "p50 and p99 per layout");
    assert!(charts[1].series[1].dashed && !charts[1].series[0].dashed);
    assert_eq!(charts[0].x_levels(), [1.0, 8.0]);
    // tp1 at c=1: 6 tokens over 0.4 s.
    let (x, y) = charts[0].series[0].points[0];
    assert_eq!(x, 1.0);
    assert!((y - 6.0 / 0.4).abs() < 1e-9, "{y}");
}

#[test]
fn the_folder_has_json_markdown_and_six_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let written = report().write(&out).unwrap();
    assert_eq!(written.len(), 8);
    for stem in ["throughput", "ttft", "itl"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{stem}.png");
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("tp1") && svg.contains("tp2-pp2") && svg.contains("concurrency"), "{stem}.svg");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "shardline.experiment.v1");
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("## Cost"));
    if let Ok(keep) = std::env::var("SHARDLINE_KEEP_PLOTS") {
        // For looking at the plots by eye.
        for stem in ["throughput", "ttft", "itl"] {
            std::fs::copy(out.join(format!("{stem}.png")), Path::new(&keep).join(format!("{stem}.png"))).unwrap();
        }
    }
}
