//! `shardline run`: load a model in this process and generate, streaming text as it is made.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use shardline_engine::{Engine, EngineConfig, GenerationOutput, Prompt};
use shardline_tokenizer::ChatMessage;

use crate::args::{ModelArgs, SamplingArgs};
use crate::backend::{self, Backend, EngineShape, ParallelArgs, Role};

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
    #[command(flatten)]
    parallel: ParallelArgs,
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

/// KV blocks: one request's worth per copy. The pool is zero-filled lazily, so untouched blocks
/// cost address space, not memory.
fn num_blocks(block_size: usize, batch: usize, max_len: usize) -> usize {
    max_len.min(8192).div_ceil(block_size) * batch
}

fn engine_shape(args: &RunArgs) -> EngineShape {
    let (block_size, batch) = (args.block_size, args.batch);
    EngineShape {
        block_size,
        num_blocks: Box::new(move |max_len| num_blocks(block_size, batch, max_len)),
        engine: EngineConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_num_seqs: batch.max(1),
            ..Default::default()
        },
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let env = match backend::role()? {
        Role::Worker(env) => return backend::run_worker_rank(&args.model, &args.parallel, &env),
        Role::Rank0(env) => env,
    };
    let Backend { mut engine, workers, vocab_size, .. } =
        backend::build(&args.model, &args.parallel, engine_shape(&args), env)?;
    let prompt = build_prompt(&args, vocab_size)?;
    let result = generate(&args, &mut engine, &prompt);
    drop(engine); // ends the group: every rank gets Shutdown
    if let Some(w) = workers {
        w.finish();
    }
    result
}

fn generate(args: &RunArgs, engine: &mut Engine, prompt: &Prompt) -> anyhow::Result<()> {
    let params = args.sampling.params();
    let mut ids = Vec::with_capacity(args.batch);
    for _ in 0..args.batch {
        ids.push(engine.add_request(prompt, params.clone())?);
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
