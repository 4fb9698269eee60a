//! A benchmark sweep: connect once, then for each load level warm up, drive the load with a
//! progress bar, and summarize. Every run replays the same seeded request sequence, so load
//! levels differ only in how the requests are offered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{BackendKind, Client, ClientOptions};
use crate::dataset::Dataset;
use crate::load::{drive, Load, SendFuture, Stop};
use crate::metrics::{summarize, Slo, Summary};
use crate::workload::{token_range, PrefixSpec, RequestSpec, Workload, WorkloadSpec};

/// Vocabulary assumed when the API does not tell it (OpenAI's): Llama 2's and Mistral's 32000,
/// the smallest of the supported families, so the drawn ids `[3200, 16000)` are ordinary tokens
/// in every one of them.
pub const DEFAULT_VOCAB: u32 = 32_000;
/// Seeds of the warm-up requests and of the arrival gaps, derived from `--seed` so each stream
/// is independent of the measured requests'.
const WARMUP_SALT: u64 = 0x5741_524d;
const ARRIVAL_SALT: u64 = 0x4152_5256;

/// Prompts other than random ones of `input_len` tokens.
#[derive(Clone, Debug)]
pub enum DatasetConfig {
    /// Replay a file's requests.
    Replay(Arc<Dataset>),
    /// Random prompts of `input_len` tokens, each after one of a few shared prefixes.
    PrefixRepetition(PrefixSpec),
}

impl DatasetConfig {
    /// `sharegpt:PATH` or `prefix-repetition`, for reports.
    pub fn name(&self) -> &str {
        match self {
            DatasetConfig::Replay(d) => &d.name,
            DatasetConfig::PrefixRepetition(_) => "prefix-repetition",
        }
    }
}

/// Everything a sweep needs (the CLI's flags, parsed).
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub backend: BackendKind,
    pub endpoint: String,
    /// Model name for OpenAI requests; None asks `/v1/models`.
    pub model: Option<String>,
    /// The server's `--api-key`, sent with every request.
    pub api_key: Option<String>,
    /// A JSON Schema every output must match (structured outputs).
    pub json_schema: Option<serde_json::Value>,
    /// Random prompts' lengths (the unique suffix's with prefix repetition; unused when
    /// replaying a file).
    pub input_len: usize,
    pub output_len: usize,
    pub random_range: f64,
    /// Other prompts than plain random ones.
    pub dataset: Option<DatasetConfig>,
    /// Overrides the vocabulary prompts are drawn from.
    pub vocab_size: Option<u32>,
    /// Closed-loop runs, one per value.
    pub concurrency: Vec<usize>,
    /// Open-loop runs (requests/s; infinity sends all at once), one per value.
    pub request_rates: Vec<f64>,
    /// Cap on requests in flight during open-loop runs.
    pub max_concurrency: Option<usize>,
    pub stop: Stop,
    /// Unmeasured requests before each run (fills caches, JIT, connection pools).
    pub warmup: usize,
    pub seed: u64,
    pub slo: Option<Slo>,
    /// A request taking longer fails as `timeout`.
    pub timeout: Duration,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl BenchConfig {
    /// The runs to do, closed-loop ones first.
    pub fn loads(&self) -> Vec<Load> {
        let closed = self.concurrency.iter().map(|&c| Load::Concurrency(c));
        let open = self.request_rates.iter().map(|&rate| Load::Rate { rate, max_concurrency: self.max_concurrency });
        closed.chain(open).collect()
    }

    /// Checks the load levels, stop condition and prefixes (what the flags cannot check alone).
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.loads().is_empty(), "give at least one --concurrency or --request-rate");
        ensure!(self.concurrency.iter().all(|&c| c > 0), "--concurrency values must be at least 1");
        ensure!(self.request_rates.iter().all(|&r| r > 0.0), "--request-rate values must be positive (or inf)");
        ensure!(self.max_concurrency != Some(0), "--max-concurrency must be at least 1");
        let endless = matches!(self.stop, Stop::Duration(_)) && self.max_concurrency.is_none();
        ensure!(
            !(endless && self.request_rates.iter().any(|r| r.is_infinite())),
            "--request-rate inf with --duration sends without end: add --max-concurrency"
        );
        match self.stop {
            Stop::Requests(n) => ensure!(n > 0, "--num-requests must be at least 1"),
            Stop::Duration(d) => ensure!(!d.is_zero(), "--duration must be positive"),
        }
        if let Some(DatasetConfig::PrefixRepetition(p)) = &self.dataset {
            ensure!(p.prefix_len > 0, "--prefix-len must be at least 1");
            ensure!(p.num_prefixes > 0, "--num-prefixes must be at least 1");
            ensure!(self.input_len > 0, "--input-len (the unique suffix after the prefix) must be at least 1");
        }
        Ok(())
    }
}

/// One load level's outcome.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub load: Load,
    /// Requests sent (the count asked for, or however many fit in the duration).
    pub num_requests: usize,
    pub summary: Summary,
}

/// A sweep's outcome.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub config: BenchConfig,
    /// The model the server reported (or `--model`).
    pub model: String,
    pub runs: Vec<RunResult>,
}

/// Runs the sweep against a live server.
pub async fn run(config: &BenchConfig) -> anyhow::Result<BenchReport> {
    config.validate()?;
    let options = ClientOptions {
        model: config.model.clone(),
        api_key: config.api_key.clone(),
        json_schema: config.json_schema.clone(),
    };
    let client = Arc::new(Client::connect(config.backend, &config.endpoint, &options).await?);
    let vocab = config.vocab_size.or(client.vocab_size()).unwrap_or(DEFAULT_VOCAB);
    let spec = WorkloadSpec {
        input_len: config.input_len,
        output_len: config.output_len,
        random_range: config.random_range,
        token_ids: token_range(vocab),
    };
    let workload = |seed| {
        match &config.dataset {
            Some(DatasetConfig::Replay(d)) => Workload::replay(Arc::clone(d), seed),
            Some(DatasetConfig::PrefixRepetition(p)) => Workload::prefix_repetition(spec.clone(), *p, seed),
            None => Workload::new(spec.clone(), seed),
        }
        .map_err(anyhow::Error::msg)
    };
    workload(config.seed)?;

    let mut runs = Vec::new();
    for load in config.loads() {
        if config.warmup > 0 {
            let width = match load {
                Load::Concurrency(c) => c,
                Load::Rate { max_concurrency, .. } => max_concurrency.unwrap_or(config.warmup),
            };
            let warm = Load::Concurrency(width.min(config.warmup));
            let send = sender(&client, Instant::now(), config.timeout, ProgressBar::hidden());
            let warm_workload = workload(config.seed ^ WARMUP_SALT)?;
            let records = drive(warm, Stop::Requests(config.warmup), warm_workload, 0, send).await;
            if let Some(e) = records.iter().find_map(|r| r.error.as_ref()) {
                bail!("a warm-up request to {} failed ({e}); is the endpoint and workload right?", config.endpoint);
            }
        }
        let bar = progress_bar(config, load);
        let send = sender(&client, Instant::now(), config.timeout, bar.clone());
        let records = drive(load, config.stop, workload(config.seed)?, config.seed ^ ARRIVAL_SALT, send).await;
        let summary = summarize(&records, config.slo.as_ref());
        bar.finish_with_message(format!(
            "{} ok, {} failed, {:.2} req/s, {:.1} output tok/s",
            summary.completed,
            summary.failed(),
            summary.request_throughput,
            summary.output_throughput
        ));
        runs.push(RunResult { load, num_requests: records.len(), summary });
    }
    Ok(BenchReport { config: config.clone(), model: client.model().to_string(), runs })
}

/// The send function a load schedule calls: one request, then a tick of the bar.
fn sender(
    client: &Arc<Client>,
    origin: Instant,
    timeout: Duration,
    bar: ProgressBar,
) -> impl Fn(RequestSpec) -> SendFuture + Send + Sync + 'static {
    let client = Arc::clone(client);
    let failed = Arc::new(AtomicUsize::new(0));
    move |req| {
        let (client, bar, failed) = (Arc::clone(&client), bar.clone(), Arc::clone(&failed));
        Box::pin(async move {
            let record = client.send(&req, origin, timeout).await;
            if let Some(kind) = &record.error {
                let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} failed (last: {kind})"));
            }
            bar.inc(1);
            record
        })
    }
}

/// A bar over the request count (a spinner for a duration), on stderr; hidden unless asked for.
fn progress_bar(config: &BenchConfig, load: Load) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let prefix = crate::report::load_label(load);
    let bar = match config.stop {
        Stop::Requests(n) => ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        Stop::Duration(d) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(&format!(
                "{{prefix:>12}} {{spinner}} {{pos}} done {{elapsed_precise}}/{:.0}s {{msg}}",
                d.as_secs_f64()
            ))
            .expect("valid template"),
        ),
    };
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
