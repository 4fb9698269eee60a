//! From a `--model` argument to this rank's share of the model: resolve aliases (fetching into
//! the cache), pick the weight source (a safetensors directory, a GGUF file, or random weights
//! from the config alone) and load. The tokenizer of the same path is the front ends' business
//! (`Tokenizer::from_path`); workers never load one.

use std::path::Path;

use candle_core::DType;
use shardline_weights::{DummySource, WeightSource};
use strum::{Display, EnumString, IntoStaticStr, VariantNames};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::{Llama, LoadOptions};

/// Where weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Display, EnumString, IntoStaticStr, VariantNames)]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
pub enum LoadFormat {
    /// The checkpoint at the model path.
    #[default]
    Auto,
    /// Random weights shaped by the model's config (benchmarking without a checkpoint).
    Dummy,
}

/// Where a rank runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Display, EnumString, IntoStaticStr, VariantNames)]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// A CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// A model to load: what `--model` names, where its weights come from, and this rank's share.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// A path (HF directory, .gguf file, or for `Dummy` also a config.json) or a known alias.
    pub model: String,
    pub load_format: LoadFormat,
    pub options: LoadOptions,
}

impl ModelSpec {
    /// The whole model on the CPU.
    pub fn cpu(model: &str, dtype: DType) -> Self {
        ModelSpec { model: model.to_string(), load_format: LoadFormat::Auto, options: LoadOptions::cpu(dtype) }
    }

    fn source(&self) -> Result<Box<dyn WeightSource>> {
        let path = shardline_weights::resolve_model(&self.model)?;
        match self.load_format {
            LoadFormat::Auto => Ok(shardline_weights::open(&path)?),
            LoadFormat::Dummy => Ok(Box::new(DummySource::new(dummy_config(&path)?, 0))),
        }
    }

    /// The resolved config, without loading any weights.
    pub fn read_config(&self) -> Result<ModelConfig> {
        ModelConfig::from_json(self.source()?.config())
    }

    /// Loads this rank's and stage's share, as `options` say.
    pub fn load(&self) -> Result<Llama> {
        Llama::load(self.source()?.as_ref(), &self.options)
    }
}

/// The config dummy weights are shaped by: a config.json (or a directory holding one), or the
/// metadata of a checkpoint; only the config is read, so a directory need not hold weights.
fn dummy_config(path: &Path) -> Result<serde_json::Value> {
    let json = if path.is_dir() {
        path.join("config.json")
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        path.to_path_buf()
    } else {
        return Ok(shardline_weights::open(path)?.config().clone());
    };
    let text = std::fs::read_to_string(&json).map_err(|e| ModelError::Config(format!("{}: {e}", json.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", json.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!((LoadFormat::VARIANTS, DeviceKind::VARIANTS), (&["auto", "dummy"][..], &["cpu", "cuda"][..]));
        for name in LoadFormat::VARIANTS {
            assert_eq!(name.parse::<LoadFormat>().unwrap().to_string(), *name);
        }
        for name in DeviceKind::VARIANTS {
            assert_eq!(name.parse::<DeviceKind>().unwrap().to_string(), *name);
        }
        assert!("safetensors".parse::<LoadFormat>().is_err() && "tpu".parse::<DeviceKind>().is_err());
    }
}
