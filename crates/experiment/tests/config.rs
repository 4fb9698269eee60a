//! Experiment configs: the shipped ones parse, defaults are the documented ones, and every
//! mistake is refused before a server starts, with a message naming what is wrong.

use std::path::Path;
use std::time::Duration;

use shardline_bench::{BackendKind, Stop};
use shardline_engine::SchedulerPolicy;
use shardline_experiment::config::Gpus;
use shardline_experiment::ExperimentConfig;

const MINIMAL: &str = r#"
name = "tiny"
[bench]
input_len = 16
output_len = 4
concurrency = [1, 2]
[[layout]]
name = "tp1"
"#;

fn parse(text: &str) -> Result<ExperimentConfig, String> {
    ExperimentConfig::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

fn refused(text: &str) -> String {
    parse(text).expect_err("should be refused")
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.model.name, "smollm2-135m");
    assert_eq!((c.model.dtype.as_deref(), c.model.threads), (None, None));
    let l = &c.layouts[0];
    assert_eq!((l.tp, l.pp, l.scheduler, l.serve_args.len()), (1, 1, SchedulerPolicy::Continuous, 0));
    assert!(c.cost.is_none());
    let b = c.bench_config("http://127.0.0.1:9".into(), false);
    assert_eq!(b.backend, BackendKind::Grpc);
    assert_eq!(b.stop, Stop::Requests(64));
    assert_eq!((b.warmup, b.seed, b.timeout), (1, 0, Duration::from_secs(600)));
    assert_eq!(b.concurrency, [1, 2]);
    assert_eq!(b.endpoint, "http://127.0.0.1:9");
}

#[test]
fn a_full_config_reaches_the_bench_and_cost_settings() {
    let text = r#"
name = "full"
description = "everything set"
[model]
name = "/models/llama"
dtype = "bf16"
threads = 4
[bench]
backend = "openai"
input_len = 128
output_len = 64
random_range = 0.5
concurrency = [1, 8]
request_rate = [2.0, inf]
max_concurrency = 16
duration = 30
warmup = 2
seed = 7
slo = "ttft=500,tpot=50"
timeout = 60
[[layout]]
name = "tp2-pp2"
tp = 2
pp = 2
scheduler = "static"
serve_args = ["--max-num-seqs", "32"]
[cost]
gpu_hour_usd = 2.0
gpus_per_rank = 0.5
api_input_usd_per_m = 0.15
api_output_usd_per_m = 0.6
utilization = 0.5
"#;
    let c = parse(text).unwrap();
    let b = c.bench_config("http://x:1".into(), false);
    assert_eq!(b.backend, BackendKind::OpenAi);
    assert_eq!(b.stop, Stop::Duration(Duration::from_secs(30)));
    assert_eq!(b.request_rates[0], 2.0);
    assert!(b.request_rates[1].is_infinite());
    assert_eq!((b.max_concurrency, b.warmup, b.seed), (Some(16), 2, 7));
    assert_eq!(b.slo.unwrap().tpot_ms, Some(50.0));
    let l = &c.layouts[0];
    assert_eq!((l.tp, l.pp, l.scheduler), (2, 2, SchedulerPolicy::Static));
    assert_eq!(l.serve_args, ["--max-num-seqs", "32"]);
    let cost = c.cost.as_ref().unwrap();
    // tp*pp by default: 4 ranks × 0.5 GPU each.
    assert_eq!(cost.gpus_for(l), 2.0);
    let p = cost.prices_for(l);
    assert_eq!((p.gpus, p.utilization, p.api.unwrap().output_usd_per_m), (2.0, 0.5, 0.6));
    let fixed = text.replace("gpus_per_rank = 0.5", "gpus = 8");
    let c = parse(&fixed).unwrap();
    assert_eq!(c.cost.as_ref().unwrap().gpus, Some(Gpus::Count(8.0)));
    assert_eq!(c.cost.as_ref().unwrap().gpus_for(&c.layouts[0]), 8.0);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = refused(&MINIMAL.replace("concurrency", "concurency"));
    assert!(e.contains("concurency") && e.contains("test.toml"), "{e}");
    let e = refused(&format!("{MINIMAL}gpu = 1\n"));
    assert!(e.contains("unknown field `gpu`"), "{e}");
    let e = refused(&format!("{MINIMAL}[cost]\ngpu_hour_usd = 2\nutilisation = 0.5\n"));
    assert!(e.contains("utilisation"), "{e}");
}

#[test]
fn bad_values_are_refused_with_what_is_wrong() {
    let cases = [
        (MINIMAL.replace("name = \"tp1\"", "name = \"tp1\"\ntp = 0"), "tp and pp must be at least 1"),
        (MINIMAL.replace("name = \"tp1\"", "name = \"tp1\"\npp = 0"), "tp and pp must be at least 1"),
        (MINIMAL.replace("name = \"tp1\"", "name = \"tp1\"\nscheduler = \"fifo\""), "fifo"),
        (MINIMAL.replace("name = \"tiny\"", "name = \"a b\""), "names the report folder"),
        (MINIMAL.replace("concurrency = [1, 2]", "concurrency = []"), "concurrency must list"),
        (MINIMAL.replace("concurrency = [1, 2]", "concurrency = [0]"), "at least 1"),
        (MINIMAL.replace("input_len = 16", "input_len = 0"), "input_len"),
        (MINIMAL.replace("output_len = 4", "output_len = 4\nrandom_range = 1.0"), "random_range"),
        (MINIMAL.replace("output_len = 4", "output_len = 4\nnum_requests = 4\nduration = 5"), "not both"),
        (MINIMAL.replace("output_len = 4", "output_len = 4\nslo = \"itl=5\""), "slo"),
        (MINIMAL.replace("output_len = 4", "output_len = 4\ntimeout = 0"), "timeout"),
        (format!("{MINIMAL}[[layout]]\nname = \"tp1\"\n"), "two layouts are named `tp1`"),
        (MINIMAL.replace("[[layout]]\nname = \"tp1\"\n", ""), "layout"),
        (format!("{MINIMAL}[model]\ndtype = \"f64\"\n"), "dtype"),
        (format!("{MINIMAL}[cost]\ngpu_hour_usd = 0\n"), "gpu_hour_usd must be a positive"),
        (format!("{MINIMAL}[cost]\ngpu_hour_usd = 2\nutilization = 1.5\n"), "utilization must be in (0, 1]"),
        (format!("{MINIMAL}[cost]\ngpu_hour_usd = 2\napi_input_usd_per_m = 0.1\n"), "both"),
        (format!("{MINIMAL}[cost]\ngpu_hour_usd = 2\ngpus = \"tp+pp\"\n"), "tp*pp"),
        (format!("{MINIMAL}[cost]\ngpu_hour_usd = 2\ngpus = 2\ngpus_per_rank = 1\n"), "use one"),
    ];
    for (text, want) in cases {
        let e = refused(&text);
        assert!(e.contains(want), "want `{want}` in: {e}");
    }
}

#[test]
fn the_shipped_experiments_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../launch/experiments");
    for name in ["naive-vs-continuous.toml", "tp-vs-pp.toml"] {
        let c = ExperimentConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.cost.is_some(), "{name} has a cost example");
        assert!(c.layouts.len() >= 3, "{name}");
    }
}
