//! Reports in, tables out: the runs of a `shardline.bench.v1` or `shardline.experiment.v1`
//! document, and the Markdown cost table of priced runs.

use anyhow::{bail, Context};
use serde_json::Value;

use super::{break_even_label, run_cost, MeasuredRun, Prices};
use crate::load::Load;
use crate::report::{load_label, EXPERIMENT_SCHEMA, SCHEMA};

/// The runs of a `shardline.bench.v1` or `shardline.experiment.v1` document.
pub fn measured_runs(report: &Value) -> anyhow::Result<Vec<MeasuredRun>> {
    let runs_of = |layout: &str, ranks: Option<usize>, runs: &Value| -> anyhow::Result<Vec<MeasuredRun>> {
        let runs = runs.as_array().context("`runs` is not a list")?;
        runs.iter()
            .enumerate()
            .map(|(i, r)| measured_run(layout, ranks, r).with_context(|| format!("run {}", i + 1)))
            .collect()
    };
    match report["schema"].as_str() {
        Some(SCHEMA) => runs_of("", None, &report["runs"]),
        Some(EXPERIMENT_SCHEMA) => {
            let layouts = report["layouts"].as_array().context("`layouts` is not a list")?;
            let mut all = Vec::new();
            for layout in layouts {
                let name = layout["name"].as_str().context("a layout without a `name`")?;
                let ranks = match (layout["tp"].as_u64(), layout["pp"].as_u64()) {
                    (Some(tp), Some(pp)) => Some((tp * pp) as usize),
                    _ => None,
                };
                all.extend(runs_of(name, ranks, &layout["runs"]).with_context(|| format!("layout {name}"))?);
            }
            Ok(all)
        }
        Some(other) => bail!("unknown report schema `{other}` (expected {SCHEMA} or {EXPERIMENT_SCHEMA})"),
        None => bail!("not a shardline report: no `schema` field (expected {SCHEMA} or {EXPERIMENT_SCHEMA})"),
    }
}

fn measured_run(layout: &str, ranks: Option<usize>, run: &Value) -> anyhow::Result<MeasuredRun> {
    let number = |key: &str| run[key].as_f64().with_context(|| format!("`{key}` is missing or not a number"));
    let load = if let Some(c) = run["concurrency"].as_u64() {
        Load::Concurrency(c as usize)
    } else {
        let rate = match &run["request_rate"] {
            Value::String(s) if s == "inf" => f64::INFINITY,
            v => v.as_f64().context("a run with neither `concurrency` nor `request_rate`")?,
        };
        Load::Rate { rate, max_concurrency: run["max_concurrency"].as_u64().map(|m| m as usize) }
    };
    let output_tok_s = number("output_throughput")?;
    let total = number("total_token_throughput")?;
    Ok(MeasuredRun {
        layout: layout.to_string(),
        load: load_label(load),
        input_tok_s: (total - output_tok_s).max(0.0),
        output_tok_s,
        ranks,
    })
}

fn usd(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The cost table in Markdown, one row per run with the prices it is charged at (layouts of an
/// experiment differ in GPU count), with the formulas under it. The caption gives the first
/// row's $/GPU-hour, utilization and API prices: one set of prices per table.
pub fn markdown(rows: &[(MeasuredRun, Prices)]) -> String {
    let with_layout = rows.iter().any(|(r, _)| !r.layout.is_empty());
    let with_api = rows.iter().any(|(_, p)| p.api.is_some());
    let mut header = vec!["load", "in tok/s", "out tok/s", "GPUs", "$/h", "$/1M out", "$/1M total"];
    if with_layout {
        header.insert(0, "layout");
    }
    if with_api {
        header.extend(["API $/busy h", "$/1M in (API split)", "$/1M out (API split)", "break-even U"]);
    }
    let caption = rows.first().map_or(String::new(), |(_, p)| {
        let api = p.api.map_or(String::new(), |a| {
            format!("; API ${}/1M input, ${}/1M output tokens", a.input_usd_per_m, a.output_usd_per_m)
        });
        format!("${}/GPU-hour, utilization {}{api}\n\n", p.gpu_hour_usd, p.utilization)
    });
    // Text columns left-aligned, numbers right-aligned.
    let text_columns = if with_layout { 2 } else { 1 };
    let rule = format!("{}{}", "---|".repeat(text_columns), "---:|".repeat(header.len() - text_columns));
    let mut out = format!("{caption}| {} |\n|{rule}\n", header.join(" | "));
    for (run, prices) in rows {
        let cost = run_cost(run, prices);
        let mut row = vec![
            run.load.clone(),
            format!("{:.1}", run.input_tok_s),
            format!("{:.1}", run.output_tok_s),
            format!("{}", prices.gpus),
            format!("{:.2}", cost.hourly_usd),
            usd(cost.output_usd_per_m),
            usd(cost.total_usd_per_m),
        ];
        if with_layout {
            row.insert(0, run.layout.clone());
        }
        if with_api {
            match cost.api {
                Some(api) => row.extend([
                    format!("{:.4}", api.api_usd_per_busy_hour),
                    format!("{:.4}", api.input_usd_per_m),
                    format!("{:.4}", api.output_usd_per_m),
                    break_even_label(api.break_even_utilization),
                ]),
                None => row.extend(["-", "-", "-", "-"].map(String::from)),
            }
        }
        out += &format!("| {} |\n", row.join(" | "));
    }
    out += "\nC = GPUs × $/GPU-hour; $/1M out = C / (out tok/s × 3600 × U) × 1e6 (all cost charged to output); \
            $/1M total = C / ((in + out) tok/s × 3600 × U) × 1e6.";
    if with_api {
        out += " API $/busy h = (in tok/s × A + out tok/s × B) × 3600 / 1e6 for API prices A, B per 1M input, \
                output tokens; break-even U* = C / (API $/busy h): self-hosting is cheaper than the API above U*; \
                API split: $/1M in = k·A, $/1M out = k·B with k = U*/U.";
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cost::ApiPrices;

    fn prices(api: Option<(f64, f64)>) -> Prices {
        let api = api.map(|(a, b)| ApiPrices { input_usd_per_m: a, output_usd_per_m: b });
        Prices { gpu_hour_usd: 2.0, gpus: 1.0, utilization: 1.0, api }
    }

    fn bench_run(load: Value, total: f64, output: f64) -> Value {
        let mut r = json!({"output_throughput": output, "total_token_throughput": total});
        for (k, v) in load.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    #[test]
    fn both_report_schemas_parse() {
        let bench = json!({"schema": SCHEMA, "runs": [
            bench_run(json!({"concurrency": 8}), 300.0, 100.0),
            bench_run(json!({"request_rate": "inf", "max_concurrency": 4}), 10.0, 4.0),
            bench_run(json!({"request_rate": 2.5, "max_concurrency": null}), 10.0, 4.0),
        ]});
        let runs = measured_runs(&bench).unwrap();
        assert_eq!(runs.iter().map(|r| r.load.as_str()).collect::<Vec<_>>(), ["c=8", "rate=inf max 4", "rate=2.5/s"]);
        assert_eq!((runs[0].input_tok_s, runs[0].output_tok_s), (200.0, 100.0));
        assert!(runs.iter().all(|r| r.layout.is_empty()));

        let experiment = json!({"schema": EXPERIMENT_SCHEMA, "layouts": [
            {"name": "tp1", "runs": [bench_run(json!({"concurrency": 1}), 30.0, 10.0)]},
            {"name": "tp2", "tp": 2, "pp": 1, "runs": [bench_run(json!({"concurrency": 1}), 60.0, 20.0), bench_run(json!({"concurrency": 4}), 90.0, 30.0)]},
        ]});
        let runs = measured_runs(&experiment).unwrap();
        let labels: Vec<_> = runs.iter().map(|r| format!("{} {}", r.layout, r.load)).collect();
        assert_eq!(labels, ["tp1 c=1", "tp2 c=1", "tp2 c=4"]);
        assert_eq!(runs.iter().map(|r| r.ranks).collect::<Vec<_>>(), [None, Some(2), Some(2)]);
        let rows: Vec<_> = runs.into_iter().map(|r| (r, prices(Some((0.15, 0.6))))).collect();
        let md = markdown(&rows);
        assert!(md.contains("| layout | load |") && md.contains("break-even U"), "{md}");
        assert!(md.contains("\n|---|---|---:|"), "text columns left, numbers right:\n{md}");
        assert_eq!(md.lines().filter(|l| l.starts_with("| tp")).count(), 3, "{md}");
    }

    #[test]
    fn malformed_reports_say_what_is_wrong() {
        let err = |v: Value| format!("{:#}", measured_runs(&v).unwrap_err());
        assert!(err(json!({"runs": []})).contains("no `schema`"));
        assert!(err(json!({"schema": "other.v9"})).contains("unknown report schema `other.v9`"));
        assert!(err(json!({"schema": SCHEMA, "runs": [{"concurrency": 1}]})).contains("output_throughput"));
        let no_load = json!({"schema": SCHEMA, "runs": [{"output_throughput": 1.0, "total_token_throughput": 2.0}]});
        assert!(err(no_load).contains("neither `concurrency` nor `request_rate`"));
        assert!(err(json!({"schema": EXPERIMENT_SCHEMA, "layouts": [{"runs": []}]})).contains("`name`"));
    }
}
