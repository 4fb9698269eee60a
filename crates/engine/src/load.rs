//! From a `--model` argument to a loaded model and tokenizer: resolve aliases (fetching into the
//! cache), pick the weight source (safetensors directory, GGUF, or dummy weights from the config
//! alone) and the matching tokenizer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use shardline_model::{Llama, LoadOptions, ShardPlan};
use shardline_tokenizer::Tokenizer;
use shardline_weights::{DummySource, WeightSource};

use crate::error::{EngineError, Result};

/// Where weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// The checkpoint at the model path.
    #[default]
    Auto,
    /// Random weights shaped by the model's config (benchmarking without a checkpoint).
    Dummy,
}

#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// A path (HF directory, .gguf file, or for `Dummy` also a config.json) or a known alias.
    pub model: String,
    pub load_format: LoadFormat,
    pub dtype: DType,
    pub device: Device,
    pub plan: Option<ShardPlan>,
    pub layers: Option<std::ops::Range<usize>>,
    pub progress: bool,
}

impl ModelSpec {
    pub fn cpu(model: &str, dtype: DType) -> Self {
        ModelSpec {
            model: model.to_string(),
            load_format: LoadFormat::Auto,
            dtype,
            device: Device::Cpu,
            plan: None,
            layers: None,
            progress: false,
        }
    }
}

fn weight_source(path: &Path, format: LoadFormat) -> Result<Box<dyn WeightSource>> {
    match format {
        LoadFormat::Auto => Ok(shardline_weights::open(path)?),
        LoadFormat::Dummy => {
            // Only the config is read: the directory need not hold any weights.
            let config = if path.is_dir() {
                read_json(&path.join("config.json"))?
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
                read_json(path)?
            } else {
                shardline_weights::open(path)?.config().clone()
            };
            Ok(Box::new(DummySource::new(config, 0)))
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
}

/// The tokenizer that goes with a model path: tokenizer.json in the directory (or next to a
/// config file), or the one embedded in a GGUF.
fn tokenizer_for(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return Ok(Tokenizer::from_dir(path)?);
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok(Tokenizer::from_dir(&dir)?);
    }
    Ok(Tokenizer::from_gguf(path)?)
}

/// The resolved config of the model `spec` names, without loading any weights.
pub fn read_config(spec: &ModelSpec) -> Result<shardline_model::ModelConfig> {
    let path = shardline_weights::resolve_model(&spec.model)?;
    let src = weight_source(&path, spec.load_format)?;
    Ok(shardline_model::ModelConfig::from_json(src.config())?)
}

/// Loads the model (this rank's and stage's share, per `spec`) and its tokenizer.
pub fn load_local(spec: &ModelSpec) -> Result<(Llama, Tokenizer)> {
    let path = shardline_weights::resolve_model(&spec.model)?;
    let src = weight_source(&path, spec.load_format)?;
    let opts = LoadOptions {
        dtype: spec.dtype,
        device: spec.device.clone(),
        plan: spec.plan.clone(),
        layers: spec.layers.clone(),
        progress: spec.progress,
    };
    let model = Llama::load(src.as_ref(), &opts)?;
    let tokenizer = tokenizer_for(&path)?;
    Ok((model, tokenizer))
}
