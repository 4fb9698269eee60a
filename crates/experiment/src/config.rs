//! The experiment definition (`launch/experiments/*.toml`): one model, one bench sweep, and the
//! server layouts to run it against, plus optional prices for a cost table.
//!
//! Parsing is strict: an unknown key is an error naming it (a misspelt `concurency` would
//! otherwise silently fall back to a default and measure something else), and every value is
//! checked before any server starts, so a bad config fails in milliseconds, not after the first
//! layout's minutes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardline_bench::{BackendKind, BenchConfig, Slo, Stop};
use shardline_engine::SchedulerPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Names the report folder (`reports/<name>-<timestamp>`): letters, digits, `-`, `_`, `.`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model: ModelSection,
    pub bench: BenchSection,
    #[serde(rename = "layout")]
    pub layouts: Vec<Layout>,
    pub cost: Option<CostSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// What `serve --model` takes: an HF directory, a `.gguf` file or an alias.
    #[serde(default = "default_model")]
    pub name: String,
    /// `serve --dtype` (f32, f16, bf16); the server's default when absent.
    pub dtype: Option<String>,
    /// CPU threads per rank (`launch --threads-per-rank`); the cores split evenly when absent.
    pub threads: Option<usize>,
}

fn default_model() -> String {
    "smollm2-135m".into()
}

impl Default for ModelSection {
    fn default() -> ModelSection {
        ModelSection { name: default_model(), dtype: None, threads: None }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Grpc,
    Openai,
}

/// `shardline bench`'s flags, with the same meanings and defaults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    #[serde(default = "default_backend")]
    pub backend: Backend,
    pub input_len: usize,
    pub output_len: usize,
    #[serde(default)]
    pub random_range: f64,
    #[serde(default)]
    pub concurrency: Vec<usize>,
    /// Requests/s (TOML's `inf` sends all at once).
    #[serde(default)]
    pub request_rate: Vec<f64>,
    pub max_concurrency: Option<usize>,
    /// Requests per run (64 when neither this nor `duration` is given).
    pub num_requests: Option<usize>,
    /// Seconds per run instead of `num_requests`.
    pub duration: Option<f64>,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    #[serde(default)]
    pub seed: u64,
    /// `ttft=MS,tpot=MS,e2e=MS`, any subset.
    pub slo: Option<String>,
    /// Seconds before a request counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_backend() -> Backend {
    Backend::Grpc
}
fn default_warmup() -> usize {
    1
}
fn default_timeout() -> f64 {
    600.0
}

/// One server configuration to measure.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub name: String,
    #[serde(default = "one")]
    pub tp: usize,
    #[serde(default = "one")]
    pub pp: usize,
    #[serde(default = "default_scheduler")]
    pub scheduler: SchedulerPolicy,
    /// More `serve` flags, e.g. `["--max-num-seqs", "32"]`.
    #[serde(default)]
    pub serve_args: Vec<String>,
}

fn one() -> usize {
    1
}
fn default_scheduler() -> SchedulerPolicy {
    SchedulerPolicy::Continuous
}

/// GPUs a layout occupies: a fixed count, or `"tp*pp"` ranks × `gpus_per_rank`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Gpus {
    Count(f64),
    Formula(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CostSection {
    pub gpu_hour_usd: f64,
    /// Default `"tp*pp"`.
    pub gpus: Option<Gpus>,
    /// GPUs per rank with `gpus = "tp*pp"` (default 1).
    pub gpus_per_rank: Option<f64>,
    pub api_input_usd_per_m: Option<f64>,
    pub api_output_usd_per_m: Option<f64>,
    #[serde(default = "full")]
    pub utilization: f64,
}

fn full() -> f64 {
    1.0
}

impl CostSection {
    /// The GPUs `layout` is charged for.
    pub fn gpus_for(&self, layout: &Layout) -> f64 {
        match self.gpus {
            Some(Gpus::Count(n)) => n,
            _ => (layout.tp * layout.pp) as f64 * self.gpus_per_rank.unwrap_or(1.0),
        }
    }

    /// The prices `shardline cost` would be given for `layout`.
    pub fn prices_for(&self, layout: &Layout) -> shardline_bench::cost::Prices {
        let api = match (self.api_input_usd_per_m, self.api_output_usd_per_m) {
            (Some(a), Some(b)) => Some(shardline_bench::cost::ApiPrices { input_usd_per_m: a, output_usd_per_m: b }),
            _ => None,
        };
        shardline_bench::cost::Prices {
            gpu_hour_usd: self.gpu_hour_usd,
            gpus: self.gpus_for(layout),
            utilization: self.utilization,
            api,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |v: f64, key: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("[cost] {key} must be a positive number, not {v}"))
            }
        };
        positive(self.gpu_hour_usd, "gpu_hour_usd")?;
        match &self.gpus {
            Some(Gpus::Count(n)) if self.gpus_per_rank.is_some() => {
                return Err(format!(
                    "[cost] gives gpus = {n} and gpus_per_rank: use one (gpus_per_rank goes with gpus = \"tp*pp\")"
                ))
            }
            Some(Gpus::Count(n)) => positive(*n, "gpus")?,
            Some(Gpus::Formula(f)) if f.replace(' ', "") != "tp*pp" => {
                return Err(format!("[cost] gpus = \"{f}\": give a number or \"tp*pp\""))
            }
            _ => {}
        }
        if let Some(g) = self.gpus_per_rank {
            positive(g, "gpus_per_rank")?;
        }
        match (self.api_input_usd_per_m, self.api_output_usd_per_m) {
            (Some(a), Some(b)) => {
                positive(a, "api_input_usd_per_m")?;
                positive(b, "api_output_usd_per_m")?;
            }
            (None, None) => {}
            _ => return Err("[cost] give both api_input_usd_per_m and api_output_usd_per_m, or neither".into()),
        }
        if !(self.utilization > 0.0 && self.utilization <= 1.0) {
            return Err(format!("[cost] utilization must be in (0, 1], not {}", self.utilization));
        }
        Ok(())
    }
}

impl ExperimentConfig {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<ExperimentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        ExperimentConfig::parse(&text, path)
    }

    /// Parses and checks `text` (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ExperimentConfig, ConfigError> {
        let config: ExperimentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.into(), message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let safe = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !safe(&self.name) {
            return Err(format!(
                "name `{}` must be non-empty letters, digits, `-`, `_` or `.` (it names the report folder)",
                self.name
            ));
        }
        if self.layouts.is_empty() {
            return Err("no [[layout]] to run".into());
        }
        let mut names = HashSet::new();
        for l in &self.layouts {
            if !safe(&l.name) {
                return Err(format!("layout name `{}` must be non-empty letters, digits, `-`, `_` or `.`", l.name));
            }
            if !names.insert(&l.name) {
                return Err(format!("two layouts are named `{}`", l.name));
            }
            if l.tp == 0 || l.pp == 0 {
                return Err(format!(
                    "layout `{}`: tp and pp must be at least 1 (got tp = {}, pp = {})",
                    l.name, l.tp, l.pp
                ));
            }
        }
        if self.model.threads == Some(0) {
            return Err("[model] threads must be at least 1 (leave it out to split the cores evenly)".into());
        }
        if let Some(d) = &self.model.dtype {
            if !["f32", "f16", "bf16"].contains(&d.as_str()) {
                return Err(format!("[model] dtype `{d}` is not f32, f16 or bf16"));
            }
        }
        let b = &self.bench;
        if b.input_len == 0 || b.output_len == 0 {
            return Err("[bench] input_len and output_len must be at least 1".into());
        }
        if !(0.0..1.0).contains(&b.random_range) {
            return Err(format!("[bench] random_range {} is not in [0, 1)", b.random_range));
        }
        if b.concurrency.is_empty() {
            return Err(
                "[bench] concurrency must list at least one level (rate runs are not plotted, see README)".into()
            );
        }
        if b.num_requests.is_some() && b.duration.is_some() {
            return Err("[bench] give num_requests or duration, not both".into());
        }
        if let Some(d) = b.duration {
            if !(d.is_finite() && d > 0.0) {
                return Err(format!("[bench] duration must be a positive number of seconds, not {d}"));
            }
        }
        if !(b.timeout.is_finite() && b.timeout > 0.0) {
            return Err(format!("[bench] timeout must be a positive number of seconds, not {}", b.timeout));
        }
        if let Some(slo) = &b.slo {
            slo.parse::<Slo>().map_err(|e| format!("[bench] slo: {e}"))?;
        }
        // The rest (lengths, levels, rates) is what `shardline bench` checks: check it the
        // same way now rather than after a server has started.
        self.bench_config("http://127.0.0.1:1".into(), false).validate().map_err(|e| format!("[bench] {e}"))?;
        if let Some(cost) = &self.cost {
            cost.validate()?;
        }
        Ok(())
    }

    /// The sweep to run against a server at `endpoint`.
    pub fn bench_config(&self, endpoint: String, progress: bool) -> BenchConfig {
        let b = &self.bench;
        BenchConfig {
            backend: match b.backend {
                Backend::Grpc => BackendKind::Grpc,
                Backend::Openai => BackendKind::OpenAi,
            },
            endpoint,
            model: None,
            api_key: None,
            json_schema: None,
            input_len: b.input_len,
            output_len: b.output_len,
            random_range: b.random_range,
            dataset: None,
            vocab_size: None,
            concurrency: b.concurrency.clone(),
            request_rates: b.request_rate.clone(),
            max_concurrency: b.max_concurrency,
            stop: match b.duration {
                Some(d) => Stop::Duration(Duration::from_secs_f64(d)),
                None => Stop::Requests(b.num_requests.unwrap_or(64)),
            },
            warmup: b.warmup,
            seed: b.seed,
            slo: b.slo.as_ref().and_then(|s| s.parse().ok()),
            timeout: Duration::from_secs_f64(b.timeout),
            progress,
        }
    }
}
