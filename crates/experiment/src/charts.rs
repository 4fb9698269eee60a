//! Which numbers go on which plot: throughput, TTFT and ITL against concurrency, one color per
//! layout. Pure data selection, kept apart from drawing so it is tested without rendering.
//!
//! Only closed-loop (concurrency) runs are plotted: a request-rate run has no concurrency to
//! place it at, and mixing the two x axes on one chart would mislead. Rate runs still appear in
//! report.md and report.json.

use shardline_bench::metrics::{Stats, Summary};
use shardline_bench::{BenchReport, Load};

/// One line on a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Index of the layout (picks the color, so one layout keeps its color across charts).
    pub color: usize,
    pub dashed: bool,
    /// (concurrency, value) in increasing concurrency.
    pub points: Vec<(f64, f64)>,
}

/// One chart: what `plot::render` draws.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// File name without extension (`throughput` → throughput.svg, throughput.png).
    pub stem: &'static str,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
    /// Every concurrency level any series has, sorted.
    pub fn x_levels(&self) -> Vec<f64> {
        let mut xs: Vec<f64> = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs
    }

    /// The largest value plotted (0 when there is none).
    pub fn y_max(&self) -> f64 {
        self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max)
    }
}

/// (concurrency, summary) of each closed-loop run, in increasing concurrency.
fn closed_loop(report: &BenchReport) -> Vec<(f64, &Summary)> {
    let mut runs: Vec<(f64, &Summary)> = report
        .runs
        .iter()
        .filter_map(|r| match r.load {
            Load::Concurrency(c) => Some((c as f64, &r.summary)),
            Load::Rate { .. } => None,
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs
}

fn series(
    name: &str,
    color: usize,
    dashed: bool,
    report: &BenchReport,
    value: impl Fn(&Summary) -> Option<f64>,
) -> Series {
    let points = closed_loop(report).into_iter().filter_map(|(c, s)| Some((c, value(s)?))).collect();
    Series { label: name.to_string(), color, dashed, points }
}

/// p50 solid and p99 dashed of one latency metric, per layout.
fn latency_chart(
    stem: &'static str,
    title: &str,
    layouts: &[(&str, &BenchReport)],
    metric: fn(&Summary) -> Option<Stats>,
) -> Chart {
    let mut all = Vec::new();
    for (i, (name, report)) in layouts.iter().enumerate() {
        all.push(series(&format!("{name} p50"), i, false, report, |s| metric(s).map(|m| m.p50)));
        all.push(series(&format!("{name} p99"), i, true, report, |s| metric(s).map(|m| m.p99)));
    }
    Chart {
        stem,
        title: format!("{title} (p50 solid, p99 dashed)"),
        x_label: "concurrency (clients, log2 scale)".into(),
        y_label: format!("{title} (ms)"),
        series: all,
    }
}

/// The three charts of an experiment, from each layout's sweep.
pub fn experiment_charts(layouts: &[(&str, &BenchReport)]) -> Vec<Chart> {
    let throughput = Chart {
        stem: "throughput",
        title: "Output throughput".into(),
        x_label: "concurrency (clients, log2 scale)".into(),
        y_label: "output tokens/s".into(),
        series: layouts
            .iter()
            .enumerate()
            .map(|(i, (name, report))| series(name, i, false, report, |s| Some(s.output_throughput)))
            .collect(),
    };
    vec![
        throughput,
        latency_chart("ttft", "TTFT", layouts, |s| s.ttft_ms),
        latency_chart("itl", "ITL", layouts, |s| s.itl_ms),
    ]
}
