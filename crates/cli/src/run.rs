//! `shardline run`: load a model in this process and generate, streaming text as it is made.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use shardline_engine::{load_local, Engine, EngineConfig, GenerationOutput, LocalExecutor, ModelSpec, Prompt};
use shardline_tokenizer::ChatMessage;

use crate::args::{init_threads, ModelArgs, SamplingArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// Stream the text, then print speed.
    Text,
    /// One JSON object per request (the same schema `generate` prints).
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompt text.
    #[arg(long, env = "SHARDLINE_PROMPT")]
    prompt: Option<String>,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long, env = "SHARDLINE_CHAT")]
    chat: bool,
    /// System message to put before the user message (with --chat).
    #[arg(long, env = "SHARDLINE_SYSTEM")]
    system: Option<String>,
    /// Instead of --prompt, use this many random token ids (for benchmarking prefill).
    #[arg(long, env = "SHARDLINE_RANDOM_PROMPT_TOKENS", conflicts_with = "prompt")]
    random_prompt_tokens: Option<usize>,
    /// Submit the request this many times at once; they run as one continuous batch.
    #[arg(long, env = "SHARDLINE_BATCH", default_value_t = 1)]
    batch: usize,
    /// Output format.
    #[arg(long, env = "SHARDLINE_OUTPUT", value_enum, default_value = "text")]
    output: OutputFormat,
    /// Tokens per KV-cache block.
    #[arg(long, env = "SHARDLINE_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// Most tokens per forward pass (longer prompts are prefilled in chunks).
    #[arg(long, env = "SHARDLINE_MAX_BATCH_TOKENS", default_value_t = 2048)]
    max_batch_tokens: usize,
}

fn build_prompt(args: &RunArgs, vocab: usize) -> anyhow::Result<Prompt> {
    if let Some(n) = args.random_prompt_tokens {
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.sampling.seed.unwrap_or(0));
        return Ok(Prompt::Tokens((0..n).map(|_| rng.random_range(0..vocab as u32)).collect()));
    }
    let Some(text) = args.prompt.clone() else { bail!("give --prompt (or --random-prompt-tokens)") };
    if !args.chat {
        if args.system.is_some() {
            bail!("--system needs --chat");
        }
        return Ok(Prompt::Text(text));
    }
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &text));
    Ok(Prompt::Chat(messages))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_threads(args.model.threads)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut spec = ModelSpec::cpu(&args.model.model, args.model.dtype.into());
    spec.load_format = args.model.load_format();
    spec.progress = true;
    let (model, tokenizer) = load_local(&spec).with_context(|| format!("loading model `{}`", spec.model))?;
    let cfg = model.config().clone();
    let prompt = build_prompt(&args, cfg.vocab_size)?;
    // One request's worth of blocks per copy: the pool is zero-filled lazily, so untouched
    // blocks cost address space, not memory.
    let per_seq = cfg.max_position_embeddings.min(8192).div_ceil(args.block_size);
    let exec = LocalExecutor::new(model, per_seq * args.batch, args.block_size)?;
    let engine_cfg = EngineConfig { max_batch_tokens: args.max_batch_tokens, max_num_seqs: args.batch.max(1) };
    let mut engine = Engine::new(Box::new(exec), tokenizer, &cfg.eos_token_ids, engine_cfg)?;

    let params = args.sampling.params();
    let mut ids = Vec::with_capacity(args.batch);
    for _ in 0..args.batch {
        ids.push(engine.add_request(&prompt, params.clone())?);
    }
    let text_mode = matches!(args.output, OutputFormat::Text);
    let stream_id = ids[0];
    let mut stdout = std::io::stdout();
    let (mut first_event, mut last_event, mut events) = (None, Instant::now(), 0usize);
    let outputs = engine.run_to_completion(&ids, |e| {
        let now = Instant::now();
        first_event.get_or_insert(now);
        last_event = now;
        events += 1;
        if text_mode && e.request_id == stream_id {
            let _ = write!(stdout, "{}", e.text);
            let _ = stdout.flush();
        }
    })?;
    if text_mode {
        println!();
        print_summary(&outputs, first_event.map(|f| last_event.duration_since(f).as_secs_f64()), events);
    } else {
        for o in &outputs {
            println!("{}", serde_json::to_string(o)?);
        }
    }
    Ok(())
}

fn print_summary(outputs: &[GenerationOutput], decode_wall: Option<f64>, events: usize) {
    let o = &outputs[0];
    let m = &o.metrics;
    let itl = if m.decode_tokens_per_s > 0.0 { 1e3 / m.decode_tokens_per_s } else { 0.0 };
    println!(
        "-- finish: {} | prompt {} tokens | generated {} tokens",
        serde_json::to_value(o.finish_reason).map(|v| v.as_str().unwrap_or("").to_string()).unwrap_or_default(),
        o.prompt_token_ids.len(),
        o.token_ids.len()
    );
    println!(
        "-- TTFT {:.1} ms | ITL {:.1} ms | prefill {:.1} tok/s | decode {:.1} tok/s",
        m.ttft_ms, itl, m.prefill_tokens_per_s, m.decode_tokens_per_s
    );
    if outputs.len() > 1 {
        // Tokens after each request's first, over the time from the first token to the last.
        let decoded = events.saturating_sub(outputs.len());
        let aggregate = decode_wall.filter(|w| *w > 0.0).map_or(0.0, |w| decoded as f64 / w);
        println!("-- batch {}: aggregate decode {:.1} tok/s", outputs.len(), aggregate);
    }
}
