//! `shardline bench`: flags → [`shardline_bench::BenchConfig`], then the sweep and its outputs.
//! Everything else lives in the `shardline-bench` crate.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, ValueEnum};
use shardline_bench::dataset::{self, Dataset};
use shardline_bench::workload::PrefixSpec;
use shardline_bench::{report, BackendKind, BenchConfig, DatasetConfig, Slo, Stop};

/// `--prefix-len` and `--num-prefixes` when not given (options rather than clap defaults, so
/// giving them to another dataset is an error instead of silently ignored).
const DEFAULT_PREFIX_LEN: usize = 1024;
const DEFAULT_NUM_PREFIXES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetKind {
    /// Random token ids of exact lengths (--input-len, --output-len, --random-range).
    Random,
    /// ShareGPT conversations (--dataset-path): the first human turn as a text prompt, the
    /// first reply's token count as max_tokens.
    Sharegpt,
    /// Random token ids after one of --num-prefixes shared prefixes of --prefix-len tokens
    /// (vLLM's prefix_repetition), for measuring prefix caching: --input-len is the unique
    /// suffix's length.
    PrefixRepetition,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// API to load: `grpc` (Shardline's) or `openai` (any OpenAI-compatible server's streaming
    /// /v1/completions: vLLM, TGI, trtllm-serve, llama.cpp, `shardline serve`).
    #[arg(long, env = "SHARDLINE_BENCH_BACKEND", default_value = "grpc")]
    backend: BackendKind,
    /// Server URL [default: http://127.0.0.1:50051 for grpc, http://127.0.0.1:8000 for openai].
    #[arg(long, env = "SHARDLINE_BENCH_ENDPOINT")]
    endpoint: Option<String>,
    /// Model name sent in OpenAI requests [default: the first of GET /v1/models].
    #[arg(long, env = "SHARDLINE_BENCH_MODEL")]
    model: Option<String>,
    /// The server's API key, sent as `Authorization: Bearer KEY` (of a comma-separated list in
    /// the environment, as `serve` takes it, the first).
    #[arg(long, env = "SHARDLINE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Every output must match this JSON Schema (JSON text, or @FILE): the cost of structured
    /// outputs. A schema that cannot end early (an unbounded array) keeps output lengths equal.
    #[arg(long, value_parser = crate::args::parse_json_schema)]
    json_schema: Option<serde_json::Value>,
    /// Where prompts come from.
    #[arg(long, env = "SHARDLINE_BENCH_DATASET", value_enum, default_value = "random")]
    dataset: DatasetKind,
    /// The dataset file (ShareGPT JSON: a list of {"conversations": [{"from": "human", "value":
    /// …}, {"from": "gpt", "value": …}, …]}).
    #[arg(long, env = "SHARDLINE_BENCH_DATASET_PATH")]
    dataset_path: Option<PathBuf>,
    /// Tokenizer that counts a dataset's prompt and reply tokens: an HF directory, a .gguf file
    /// or the alias `smollm2-135m` (use the served model's).
    #[arg(long, env = "SHARDLINE_BENCH_TOKENIZER", default_value = "smollm2-135m")]
    tokenizer: String,
    /// Prompt tokens per request (random token ids, so the length is exact); with --dataset
    /// prefix-repetition, the tokens of the unique suffix after the shared prefix.
    #[arg(long, env = "SHARDLINE_BENCH_INPUT_LEN", default_value_t = 1024)]
    input_len: usize,
    /// Tokens generated per request (EOS ignored).
    #[arg(long, env = "SHARDLINE_BENCH_OUTPUT_LEN", default_value_t = 128)]
    output_len: usize,
    /// Draw each length uniformly from [len·(1−R), len·(1+R)]; 0 keeps them fixed (shared
    /// prefixes always are).
    #[arg(long, env = "SHARDLINE_BENCH_RANDOM_RANGE", default_value_t = 0.0)]
    random_range: f64,
    /// Tokens in each shared prefix of --dataset prefix-repetition [default: 1024].
    #[arg(long, env = "SHARDLINE_BENCH_PREFIX_LEN")]
    prefix_len: Option<usize>,
    /// Distinct shared prefixes of --dataset prefix-repetition, drawn from --seed; each round of
    /// this many requests uses every prefix once, in a seeded order [default: 8].
    #[arg(long, env = "SHARDLINE_BENCH_NUM_PREFIXES")]
    num_prefixes: Option<usize>,
    /// Vocabulary size prompt ids are drawn for (ids in [V/10, V/2)) [default: the server's
    /// over grpc, 32000 over openai].
    #[arg(long, env = "SHARDLINE_BENCH_VOCAB_SIZE")]
    vocab_size: Option<u32>,
    /// Closed-loop runs: this many users, each sending its next request when the previous
    /// ends; one run per value, e.g. `1,8,32` [default: 1 when no --request-rate].
    #[arg(long, env = "SHARDLINE_BENCH_CONCURRENCY", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Open-loop runs: Poisson arrivals at this many requests/s (`inf`: all at once); one run
    /// per value, e.g. `2,4`.
    #[arg(long, env = "SHARDLINE_BENCH_REQUEST_RATE", value_delimiter = ',')]
    request_rate: Vec<f64>,
    /// Most requests in flight during --request-rate runs [default: unbounded].
    #[arg(long, env = "SHARDLINE_BENCH_MAX_CONCURRENCY")]
    max_concurrency: Option<usize>,
    /// Requests per run.
    #[arg(long, env = "SHARDLINE_BENCH_NUM_REQUESTS", default_value_t = 64, conflicts_with = "duration")]
    num_requests: usize,
    /// Run each level for this many seconds instead of --num-requests.
    #[arg(long, env = "SHARDLINE_BENCH_DURATION")]
    duration: Option<f64>,
    /// Unmeasured requests before each run.
    #[arg(long, env = "SHARDLINE_BENCH_WARMUP", default_value_t = 1)]
    warmup: usize,
    /// Seed of prompts and arrivals (the same seed replays the same requests).
    #[arg(long, env = "SHARDLINE_BENCH_SEED", default_value_t = 0)]
    seed: u64,
    /// Goodput objectives in ms, any of `ttft=MS,tpot=MS,e2e=MS`.
    #[arg(long, env = "SHARDLINE_BENCH_SLO")]
    slo: Option<Slo>,
    /// Seconds before a request counts as failed (`timeout`).
    #[arg(long, env = "SHARDLINE_BENCH_TIMEOUT", default_value_t = 600.0)]
    timeout: f64,
    /// Write the results as JSON (schema `shardline.bench.v1`).
    #[arg(long, env = "SHARDLINE_BENCH_OUTPUT_JSON")]
    output_json: Option<PathBuf>,
    /// Write the results as a Markdown table.
    #[arg(long, env = "SHARDLINE_BENCH_OUTPUT_MD")]
    output_md: Option<PathBuf>,
}

impl BenchArgs {
    fn config(self) -> anyhow::Result<BenchConfig> {
        ensure!(self.timeout > 0.0 && self.timeout.is_finite(), "--timeout must be a positive number of seconds");
        let stop = match self.duration {
            Some(d) => {
                ensure!(d > 0.0 && d.is_finite(), "--duration must be a positive number of seconds");
                Stop::Duration(Duration::from_secs_f64(d))
            }
            None => Stop::Requests(self.num_requests),
        };
        let concurrency =
            if self.concurrency.is_empty() && self.request_rate.is_empty() { vec![1] } else { self.concurrency };
        ensure!(
            self.dataset == DatasetKind::PrefixRepetition || (self.prefix_len.is_none() && self.num_prefixes.is_none()),
            "--prefix-len and --num-prefixes need --dataset prefix-repetition"
        );
        let dataset = match (self.dataset, &self.dataset_path) {
            (DatasetKind::Random, None) => None,
            (DatasetKind::Random | DatasetKind::PrefixRepetition, Some(_)) => {
                bail!("--dataset-path needs --dataset sharegpt")
            }
            (DatasetKind::Sharegpt, None) => bail!("--dataset sharegpt needs --dataset-path FILE"),
            (DatasetKind::Sharegpt, Some(path)) => {
                Some(DatasetConfig::Replay(Arc::new(sharegpt(path, &self.tokenizer)?)))
            }
            (DatasetKind::PrefixRepetition, None) => Some(DatasetConfig::PrefixRepetition(PrefixSpec {
                prefix_len: self.prefix_len.unwrap_or(DEFAULT_PREFIX_LEN),
                num_prefixes: self.num_prefixes.unwrap_or(DEFAULT_NUM_PREFIXES),
            })),
        };
        Ok(BenchConfig {
            endpoint: self.endpoint.unwrap_or_else(|| self.backend.default_endpoint().to_string()),
            backend: self.backend,
            model: self.model,
            api_key: self.api_key.map(|k| k.split(',').next().unwrap_or_default().trim().to_string()),
            json_schema: self.json_schema,
            input_len: self.input_len,
            output_len: self.output_len,
            random_range: self.random_range,
            dataset,
            vocab_size: self.vocab_size,
            concurrency,
            request_rates: self.request_rate,
            max_concurrency: self.max_concurrency,
            stop,
            warmup: self.warmup,
            seed: self.seed,
            slo: self.slo,
            timeout: Duration::from_secs_f64(self.timeout),
            progress: std::io::stderr().is_terminal(),
        })
    }
}

/// The ShareGPT file's requests, lengths counted with `tokenizer` (resolved like `--model`).
fn sharegpt(path: &Path, tokenizer: &str) -> anyhow::Result<Dataset> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let exchanges =
        dataset::parse_sharegpt(&text).with_context(|| format!("reading {} as ShareGPT", path.display()))?;
    let model =
        shardline_weights::resolve_model(tokenizer).with_context(|| format!("resolving --tokenizer {tokenizer}"))?;
    let tok = shardline_tokenizer::Tokenizer::from_path(&model)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
    // Counted as the server will see the prompt: with the special tokens it adds (BOS).
    let requests = dataset::requests(&exchanges, |s| tok.encode(s, true).map_or(0, |ids| ids.len()));
    ensure!(
        !requests.is_empty(),
        "none of the {} conversations in {} passes the length filter (prompt and reply at least {} tokens, \
         prompt at most {}, both at most {})",
        exchanges.len(),
        path.display(),
        dataset::MIN_LEN,
        dataset::MAX_PROMPT_LEN,
        dataset::MAX_TOTAL_LEN
    );
    Ok(Dataset { name: format!("sharegpt:{}", path.display()), requests })
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let (json_path, md_path) = (args.output_json.clone(), args.output_md.clone());
    let config = args.config()?;
    // One thread: the client stays light next to a CPU server on the same machine, and one
    // event loop is plenty for hundreds of streams (vLLM's client is one asyncio loop).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(shardline_bench::run(&config))?;
    print!("{}", report::table(&result));
    if let Some(path) = json_path {
        let text = serde_json::to_string_pretty(&report::to_json(&result))?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = md_path {
        std::fs::write(&path, report::markdown(&result)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
