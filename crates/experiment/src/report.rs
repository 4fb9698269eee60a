//! An experiment's results as a folder: report.json (schema `shardline.experiment.v1`),
//! report.md (one table row per layout × load level, and costs when priced) and the plots.
//!
//! report.json's runs have exactly the per-run shape of `shardline.bench.v1` (made by the
//! bench crate's own `report::to_json`), so anything reading bench reports, `shardline cost`
//! included, reads experiment runs too. Fields may be added within v1, never renamed or
//! removed.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shardline_bench::cost::{self, MeasuredRun, Prices};
use shardline_bench::metrics::Stats;
use shardline_bench::report::{load_label, EXPERIMENT_SCHEMA};
use shardline_bench::BenchReport;

use crate::charts::experiment_charts;
use crate::config::{ExperimentConfig, Layout};
use crate::plot;

/// One layout's outcome.
#[derive(Clone, Debug)]
pub struct LayoutResult {
    pub layout: Layout,
    /// Seconds from spawning the server to its READY line (model load, group rendezvous).
    pub ready_s: f64,
    pub bench: BenchReport,
}

/// A finished experiment.
#[derive(Clone, Debug)]
pub struct ExperimentReport {
    pub config: ExperimentConfig,
    /// [`crate::machine::machine_line`].
    pub machine: String,
    /// `YYYYmmdd-HHMMSS` UTC of the start.
    pub started_utc: String,
    pub layouts: Vec<LayoutResult>,
    /// Why the experiment stopped before its last layout (the finished ones are still
    /// reported); None when every layout ran.
    pub incomplete: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

impl ExperimentReport {
    /// The report.json document.
    pub fn to_json(&self) -> Value {
        let layouts: Vec<Value> = self
            .layouts
            .iter()
            .map(|l| {
                json!({
                    "name": l.layout.name,
                    "tp": l.layout.tp,
                    "pp": l.layout.pp,
                    "scheduler": l.layout.scheduler.to_string(),
                    "serve_args": l.layout.serve_args,
                    "ready_s": l.ready_s,
                    "runs": shardline_bench::report::to_json(&l.bench)["runs"],
                })
            })
            .collect();
        json!({
            "schema": EXPERIMENT_SCHEMA,
            "name": self.config.name,
            "description": self.config.description,
            "started_utc": self.started_utc,
            "machine": self.machine,
            "incomplete": self.incomplete,
            "config": serde_json::to_value(&self.config).unwrap_or(Value::Null),
            "layouts": layouts,
        })
    }

    /// The cost table's rows: every run with its layout's prices (GPUs follow tp × pp).
    fn priced_runs(&self) -> Option<Vec<(MeasuredRun, Prices)>> {
        let cost = self.config.cost.as_ref()?;
        let runs = cost::measured_runs(&self.to_json()).ok()?;
        let prices = self.layouts.iter().flat_map(|l| l.bench.runs.iter().map(|_| cost.prices_for(&l.layout)));
        Some(runs.into_iter().zip(prices).collect())
    }

    /// The report.md document.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let b = &c.bench;
        let mut out = format!("# Experiment `{}`\n\n", c.name);
        if !c.description.trim().is_empty() {
            out += &format!("{}\n\n", c.description.trim());
        }
        let count = match (b.duration, b.num_requests) {
            (Some(d), _) => format!("{d} s per run"),
            (None, n) => format!("{} requests per run", n.unwrap_or(64)),
        };
        out += &format!(
            "Model `{}` · {} backend · input {} / output {} tokens · {count} · warm-up {} · seed {}  \n\
             Machine: {} · started {} UTC\n\n",
            c.model.name,
            self.layouts.first().map_or("grpc", |l| l.bench.config.backend.name()),
            b.input_len,
            b.output_len,
            b.warmup,
            b.seed,
            self.machine,
            self.started_utc
        );
        if let Some(why) = &self.incomplete {
            out += &format!(
                "**Incomplete:** {} of {} layouts measured; then {why}\n\n",
                self.layouts.len(),
                c.layouts.len()
            );
        }
        out += "| layout | load | out tok/s | req/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | TPOT p50 | E2E p50 | errors |\n";
        out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        let ms =
            |s: &Option<Stats>, f: fn(&Stats) -> f64| s.as_ref().map_or("-".to_string(), |s| format!("{:.1}", f(s)));
        for l in &self.layouts {
            for r in &l.bench.runs {
                let s = &r.summary;
                let errors = if s.errors.is_empty() {
                    "0".to_string()
                } else {
                    let kinds: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    format!("{} ({})", s.failed(), kinds.join(", "))
                };
                out += &format!(
                    "| {} | {} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {errors} |\n",
                    l.layout.name,
                    load_label(r.load),
                    s.output_throughput,
                    s.request_throughput,
                    ms(&s.ttft_ms, |s| s.p50),
                    ms(&s.ttft_ms, |s| s.p99),
                    ms(&s.itl_ms, |s| s.p50),
                    ms(&s.itl_ms, |s| s.p99),
                    ms(&s.tpot_ms, |s| s.p50),
                    ms(&s.e2e_ms, |s| s.p50),
                );
            }
        }
        out += "\nLatencies in ms, client-side (vLLM definitions): TTFT first token − send; ITL gaps between \
                streamed tokens; TPOT (E2E − TTFT)/(tokens − 1); E2E last token − send.\n";
        out += "\nLayouts: ";
        let described: Vec<String> = self
            .layouts
            .iter()
            .map(|l| {
                let extra = if l.layout.serve_args.is_empty() {
                    String::new()
                } else {
                    format!(" {}", l.layout.serve_args.join(" "))
                };
                format!(
                    "`{}` TP {} × PP {}, {} scheduler{extra}, ready in {:.1} s",
                    l.layout.name, l.layout.tp, l.layout.pp, l.layout.scheduler, l.ready_s
                )
            })
            .collect();
        out += &described.join("; ");
        out += ".\n\n![output throughput](throughput.svg)\n![TTFT](ttft.svg)\n![ITL](itl.svg)\n\n\
                Plots show the concurrency runs only (request-rate runs have no concurrency to place them at).\n";
        if let Some(rows) = self.priced_runs() {
            out += &format!("\n## Cost\n\n{}", cost::markdown(&rows));
        }
        out
    }

    /// Writes report.json, report.md and the six plot files into `dir` (created if missing);
    /// returns what it wrote.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json_path = dir.join("report.json");
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialize") + "\n";
        std::fs::write(&json_path, text).map_err(io(&json_path))?;
        let md_path = dir.join("report.md");
        std::fs::write(&md_path, self.markdown()).map_err(io(&md_path))?;
        let mut written = vec![json_path, md_path];
        let named: Vec<(&str, &BenchReport)> =
            self.layouts.iter().map(|l| (l.layout.name.as_str(), &l.bench)).collect();
        for chart in experiment_charts(&named) {
            written.extend(plot::render(&chart, dir)?);
        }
        Ok(written)
    }
}
