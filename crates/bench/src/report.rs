//! A sweep's results for people (terminal and Markdown tables) and for programs (JSON).
//!
//! The JSON schema is versioned by its `schema` field: fields may be added within
//! `shardline.bench.v1`, but none renamed, removed or changed in meaning (that is a v2).

use serde_json::{json, Value};

use crate::load::{Load, Stop};
use crate::metrics::Stats;
use crate::run::{BenchReport, DatasetConfig, RunResult};

/// The JSON output's schema name.
pub const SCHEMA: &str = "shardline.bench.v1";
/// Schema of `shardline experiment`'s report.json: several layouts, each with runs of
/// [`SCHEMA`]'s per-run shape. Named here, beside the run shape it reuses, so `shardline cost`
/// reads both without depending on the experiment crate.
pub const EXPERIMENT_SCHEMA: &str = "shardline.experiment.v1";

/// `c=8` or `rate=2/s` (`rate=inf`; `, max 16` with a concurrency cap).
pub fn load_label(load: Load) -> String {
    match load {
        Load::Concurrency(c) => format!("c={c}"),
        Load::Rate { rate, max_concurrency } => {
            let cap = max_concurrency.map(|m| format!(" max {m}")).unwrap_or_default();
            if rate.is_infinite() {
                format!("rate=inf{cap}")
            } else {
                format!("rate={rate}/s{cap}")
            }
        }
    }
}

fn stats_json(s: &Option<Stats>) -> Value {
    s.map_or(Value::Null, |s| json!({"mean": s.mean, "p50": s.p50, "p90": s.p90, "p99": s.p99}))
}

fn run_json(report: &BenchReport, run: &RunResult) -> Value {
    let c = &report.config;
    let s = &run.summary;
    let prefix = match &c.dataset {
        Some(DatasetConfig::PrefixRepetition(p)) => Some(p),
        _ => None,
    };
    let mut v = json!({
        "backend": c.backend.name(),
        "endpoint": c.endpoint,
        "model": report.model,
        "input_len": c.input_len,
        "output_len": c.output_len,
        "random_range": c.random_range,
        "dataset": c.dataset.as_ref().map(|d| d.name()),
        "prefix_len": prefix.map(|p| p.prefix_len),
        "num_prefixes": prefix.map(|p| p.num_prefixes),
        "seed": c.seed,
        "warmup": c.warmup,
        "duration_limit_s": match c.stop {
            Stop::Duration(d) => json!(d.as_secs_f64()),
            Stop::Requests(_) => Value::Null,
        },
        "num_requests": run.num_requests,
        "completed": s.completed,
        "failed": s.failed(),
        "errors": s.errors,
        "duration_s": s.duration_s,
        "total_input_tokens": s.total_input_tokens,
        "total_cached_tokens": s.total_cached_tokens,
        "total_output_tokens": s.total_output_tokens,
        "request_throughput": s.request_throughput,
        "output_throughput": s.output_throughput,
        "total_token_throughput": s.total_token_throughput,
        "goodput": s.goodput,
        "slo": c.slo.map(|slo| json!({"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "e2e_ms": slo.e2e_ms})),
        "ttft_ms": stats_json(&s.ttft_ms),
        "tpot_ms": stats_json(&s.tpot_ms),
        "itl_ms": stats_json(&s.itl_ms),
        "e2e_ms": stats_json(&s.e2e_ms),
    });
    match run.load {
        Load::Concurrency(n) => v["concurrency"] = json!(n),
        Load::Rate { rate, max_concurrency } => {
            // JSON has no infinity: an unlimited rate is the string "inf".
            v["request_rate"] = if rate.is_finite() { json!(rate) } else { json!("inf") };
            v["max_concurrency"] = json!(max_concurrency);
        }
    }
    v
}

/// The `--output-json` document.
pub fn to_json(report: &BenchReport) -> Value {
    json!({"schema": SCHEMA, "runs": report.runs.iter().map(|r| run_json(report, r)).collect::<Vec<_>>()})
}

/// Header and rows of the summary table (shared by the terminal and Markdown forms).
fn rows(report: &BenchReport) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let goodput = report.config.slo.is_some();
    let cached = report.runs.iter().any(|r| r.summary.total_cached_tokens.is_some());
    let mut header = vec![
        "load",
        "ok",
        "err",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "TPOT p50",
        "E2E p50",
    ];
    if goodput {
        header.push("goodput/s");
    }
    if cached {
        header.push("cached in");
    }
    let ms = |s: &Option<Stats>, f: fn(&Stats) -> f64| s.as_ref().map_or("-".to_string(), |s| format!("{:.1}", f(s)));
    let rows = report
        .runs
        .iter()
        .map(|r| {
            let s = &r.summary;
            let mut row = vec![
                load_label(r.load),
                s.completed.to_string(),
                s.failed().to_string(),
                format!("{:.2}", s.request_throughput),
                format!("{:.1}", s.output_throughput),
                ms(&s.ttft_ms, |s| s.p50),
                ms(&s.ttft_ms, |s| s.p99),
                ms(&s.itl_ms, |s| s.p50),
                ms(&s.itl_ms, |s| s.p99),
                ms(&s.tpot_ms, |s| s.p50),
                ms(&s.e2e_ms, |s| s.p50),
            ];
            if goodput {
                row.push(s.goodput.map_or("-".into(), |g| format!("{g:.2}")));
            }
            if cached {
                // Share of the prompt tokens the server took from its prefix cache.
                let share = s.total_cached_tokens.filter(|_| s.total_input_tokens > 0);
                row.push(
                    share.map_or("-".into(), |c| format!("{:.0}%", 100.0 * c as f64 / s.total_input_tokens as f64)),
                );
            }
            row
        })
        .collect();
    (header, rows)
}

/// One line describing the workload, for both table forms.
fn caption(report: &BenchReport) -> String {
    let c = &report.config;
    let count = match c.stop {
        Stop::Requests(n) => format!("{n} requests per run"),
        Stop::Duration(d) => format!("{:.0} s per run", d.as_secs_f64()),
    };
    let range = if c.random_range > 0.0 { format!(" (±{:.0}%)", c.random_range * 100.0) } else { String::new() };
    let prompts = match &c.dataset {
        Some(DatasetConfig::Replay(d)) => format!("dataset {} ({} requests)", d.name, d.requests.len()),
        Some(DatasetConfig::PrefixRepetition(p)) => format!(
            "dataset prefix-repetition: {} prefixes × {} tokens + {}-token unique suffixes / output {} tokens{range}",
            p.num_prefixes, p.prefix_len, c.input_len, c.output_len
        ),
        None => format!("input {} / output {} tokens{range}", c.input_len, c.output_len),
    };
    format!(
        "{} {} · model {} · {prompts} · {count} · warm-up {} · seed {}",
        c.backend.name(),
        c.endpoint,
        report.model,
        c.warmup,
        c.seed
    )
}

const UNITS: &str = "Latencies in ms, client-side (vLLM definitions): TTFT first token − send; ITL gaps between \
                     streamed tokens; TPOT (E2E − TTFT)/(tokens − 1); E2E last token − send.";

/// The terminal table: right-aligned columns.
pub fn table(report: &BenchReport) -> String {
    let (header, rows) = rows(report);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = format!("{}\n", caption(report));
    out += &line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out += &line(r);
        out.push('\n');
    }
    out += UNITS;
    out.push('\n');
    out
}

/// The `--output-md` document.
pub fn markdown(report: &BenchReport) -> String {
    let (header, rows) = rows(report);
    let mut out = format!("## shardline bench\n\n{}\n\n| {} |\n", caption(report), header.join(" | "));
    out += &format!("|---|{}\n", "---:|".repeat(header.len() - 1));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out += &format!("\n{UNITS}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::backend::BackendKind;
    use crate::metrics::{summarize, RequestRecord, Slo};
    use crate::run::BenchConfig;
    use crate::workload::PrefixSpec;

    fn report(slo: Option<Slo>) -> BenchReport {
        let config = BenchConfig {
            backend: BackendKind::Grpc,
            endpoint: "http://127.0.0.1:50051".into(),
            model: None,
            api_key: None,
            json_schema: None,
            input_len: 16,
            output_len: 3,
            random_range: 0.0,
            dataset: None,
            vocab_size: None,
            concurrency: vec![2],
            request_rates: vec![f64::INFINITY],
            max_concurrency: None,
            stop: Stop::Requests(2),
            warmup: 1,
            seed: 0,
            slo,
            timeout: Duration::from_secs(60),
            progress: false,
        };
        let ok = |send: f64| RequestRecord {
            input_tokens: 16,
            send_s: send,
            token_times_s: vec![send + 0.1, send + 0.2, send + 0.4],
            output_tokens: 3,
            cached_tokens: Some(4),
            end_s: send + 0.4,
            error: None,
        };
        let records = [ok(0.0), ok(0.5)];
        let failed = RequestRecord { error: Some("grpc:Unavailable".into()), end_s: 0.1, ..Default::default() };
        let runs = vec![
            RunResult { load: Load::Concurrency(2), num_requests: 2, summary: summarize(&records, slo.as_ref()) },
            RunResult {
                load: Load::Rate { rate: f64::INFINITY, max_concurrency: None },
                num_requests: 3,
                summary: summarize(&[records[0].clone(), records[1].clone(), failed], slo.as_ref()),
            },
        ];
        BenchReport { config, model: "smollm2-135m".into(), runs }
    }

    #[test]
    fn json_has_the_versioned_schema_and_every_metric() {
        let v = to_json(&report(None));
        assert_eq!(v["schema"], SCHEMA);
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs[0]["concurrency"], 2);
        assert!(runs[0].get("request_rate").is_none());
        assert_eq!(runs[1]["request_rate"], "inf");
        assert_eq!(runs[1]["errors"], json!({"grpc:Unavailable": 1}));
        assert_eq!(runs[0]["errors"], json!(BTreeMap::<String, usize>::new()));
        assert_eq!(runs[0]["goodput"], Value::Null);
        for key in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            for stat in ["mean", "p50", "p90", "p99"] {
                assert!(runs[0][key][stat].as_f64().unwrap() > 0.0, "{key}.{stat}");
            }
        }
        assert!((runs[0]["ttft_ms"]["p50"].as_f64().unwrap() - 100.0).abs() < 1e-6);
        assert_eq!(runs[0]["total_cached_tokens"], 8, "what the server reported as cached");
        assert!((runs[0]["duration_s"].as_f64().unwrap() - 0.9).abs() < 1e-9);
        for key in ["request_throughput", "output_throughput", "total_token_throughput"] {
            assert!(runs[0][key].as_f64().unwrap() > 0.0, "{key}");
        }
    }

    #[test]
    fn tables_show_one_row_per_run_and_goodput_only_with_slos() {
        let t = table(&report(None));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].trim_start().starts_with("load"), "{t}");
        assert!(lines[2].trim_start().starts_with("c=2"), "{t}");
        assert!(lines[3].trim_start().starts_with("rate=inf"), "{t}");
        assert!(!t.contains("goodput"));
        assert!(lines[1].ends_with("cached in") && lines[2].ends_with("25%"), "8 of 32 prompt tokens cached: {t}");
        let slo = Slo { ttft_ms: Some(150.0), ..Slo::default() };
        let md = markdown(&report(Some(slo)));
        assert!(md.contains("| load | ok | err | req/s |"), "{md}");
        assert!(md.contains("|---|---:|"), "{md}");
        assert!(md.contains("goodput/s"));
        assert_eq!(md.lines().filter(|l| l.starts_with("| c=2") || l.starts_with("| rate=inf")).count(), 2, "{md}");
    }

    #[test]
    fn a_prefix_workload_is_named_in_the_caption_and_the_json() {
        let plain = to_json(&report(None));
        assert_eq!((&plain["runs"][0]["prefix_len"], &plain["runs"][0]["num_prefixes"]), (&Value::Null, &Value::Null));
        let mut r = report(None);
        r.config.dataset = Some(DatasetConfig::PrefixRepetition(PrefixSpec { prefix_len: 1024, num_prefixes: 8 }));
        r.config.input_len = 32;
        let t = table(&r);
        let caption =
            "dataset prefix-repetition: 8 prefixes × 1024 tokens + 32-token unique suffixes / output 3 tokens";
        assert!(t.lines().next().unwrap().contains(caption), "{t}");
        assert!(markdown(&r).contains(caption));
        let v = to_json(&r);
        assert_eq!(v["runs"][1]["dataset"], "prefix-repetition");
        assert_eq!((v["runs"][1]["prefix_len"].as_u64(), v["runs"][1]["num_prefixes"].as_u64()), (Some(1024), Some(8)));
    }
}
