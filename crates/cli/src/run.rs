//! `shardline run`: load a model in this process and generate, streaming text as it is made.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use shardline_engine::{Engine, GenerationOutput};
use shardline_tokenizer::{ChatMessage, Prompt};

use crate::args::{EngineArgs, ModelArgs, SamplingArgs};
use crate::backend::{self, Backend, ParallelArgs, Role};

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
    #[command(flatten)]
    engine: EngineArgs,
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

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let env = match backend::role()? {
        Role::Worker(env) => return backend::run_worker_rank(&args.model, &args.parallel, &env),
        Role::Rank0(env) => env,
    };
    // One request's worth of KV cache per copy by default. The pool is zero-filled lazily, so
    // untouched blocks cost address space, not memory.
    let batch = args.batch;
    let default_kv_tokens = move |max_len: usize| max_len.min(8192) * batch;
    let Backend { mut engine, workers } =
        backend::build(&args.model, &args.parallel, &args.engine, &default_kv_tokens, env)?;
    let result = build_prompt(&args, engine.limits().vocab_size)
        .and_then(|prompt| engine.tokenizer().encode_prompt(&prompt).context("tokenizing the prompt"))
        .and_then(|prompt| generate(&args, &mut engine, prompt));
    drop(engine); // ends the group: every rank gets Shutdown
    match (workers, &result) {
        (Some(w), Ok(())) => w.finish(),
        // A failed group may have ranks stuck on a dead or stopped peer: no waiting for them.
        (Some(w), Err(_)) => w.abort(),
        (None, _) => {}
    }
    result
}

fn generate(args: &RunArgs, engine: &mut Engine, prompt: Vec<u32>) -> anyhow::Result<()> {
    let params = args.sampling.params();
    let mut ids = Vec::with_capacity(args.batch);
    for _ in 0..args.batch {
        ids.push(engine.add_request(prompt.clone(), params.clone())?);
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
        "-- finish: {} | prompt {} tokens ({} cached) | generated {} tokens",
        o.finish_reason.as_str(),
        o.prompt_token_ids.len(),
        o.num_cached_tokens,
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
