//! `shardline export-tokenizer`: a model's tokenizer as a Hugging Face directory, for tools
//! that count tokens with transformers (AIPerf, GuideLLM, vLLM's benchmark scripts) when the
//! model is a GGUF file or the hub is out of reach.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ExportTokenizerArgs {
    /// Model whose tokenizer to export: an HF directory, a `.gguf` file or an alias
    /// (`smollm2-135m`).
    #[arg(long, env = "SHARDLINE_MODEL", default_value = "smollm2-135m")]
    model: String,
    /// Directory to write `tokenizer.json` and `tokenizer_config.json` into (created if missing).
    #[arg(long)]
    output: PathBuf,
}

pub fn export_tokenizer(args: ExportTokenizerArgs) -> anyhow::Result<()> {
    let path =
        shardline_weights::resolve_model(&args.model).with_context(|| format!("resolving --model {}", args.model))?;
    let tokenizer = shardline_tokenizer::Tokenizer::from_path(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    tokenizer.save_hf_dir(&args.output)?;
    println!("wrote {} ({} tokens)", args.output.display(), tokenizer.vocab_size());
    Ok(())
}
