//! `shardline run`: load a model in this process and generate, streaming text as it is made.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use shardline_engine::{load_local, read_config, Engine, EngineConfig, GenerationOutput, LoadFormat, LocalExecutor, ModelSpec, Prompt};
use shardline_launcher::Watch;
use shardline_worker::{start_group, GroupExecutor, GroupLayout, GroupSpec, RankEnv};
use shardline_tokenizer::ChatMessage;

use crate::args::{init_threads, ModelArgs, SamplingArgs};
use crate::group::{rank0_env, spawn_local_workers, DeviceArg, LaunchArgs};

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
    /// Tensor-parallel degree: each layer split over this many ranks.
    #[arg(long, env = "SHARDLINE_TP", default_value_t = 1)]
    tp: usize,
    /// Pipeline-parallel degree: the layers split into this many stages.
    #[arg(long, env = "SHARDLINE_PP", default_value_t = 1)]
    pp: usize,
    /// Layers per pipeline stage, e.g. `10,10,10` (default: as even as possible).
    #[arg(long, env = "SHARDLINE_PP_LAYERS", value_delimiter = ',')]
    pp_layers: Vec<usize>,
    /// Device kind of every rank.
    #[arg(long, env = "SHARDLINE_DEVICE", value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[command(flatten)]
    launch: LaunchArgs,
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

/// What generation runs on: the model in this process, or a group with rank 0 here.
struct Backend {
    engine: Engine,
    /// Local ranks spawned by this process (a group started without a launcher).
    workers: Option<Watch>,
    vocab_size: usize,
}

fn model_spec(args: &RunArgs) -> anyhow::Result<ModelSpec> {
    let mut spec = ModelSpec::cpu(&args.model.model, args.model.dtype.into());
    spec.load_format = args.model.load_format();
    spec.progress = true;
    spec.device = shardline_worker::device_for(args.device.name(), 0)?;
    Ok(spec)
}

/// KV blocks: one request's worth per copy. The pool is zero-filled lazily, so untouched blocks
/// cost address space, not memory.
fn num_blocks(args: &RunArgs, max_len: usize) -> usize {
    max_len.min(8192).div_ceil(args.block_size) * args.batch
}

fn engine_config(args: &RunArgs) -> EngineConfig {
    EngineConfig { max_batch_tokens: args.max_batch_tokens, max_num_seqs: args.batch.max(1) }
}

fn local_backend(args: &RunArgs) -> anyhow::Result<Backend> {
    init_threads(args.model.threads)?;
    let spec = model_spec(args)?;
    let (model, tokenizer) = load_local(&spec).with_context(|| format!("loading model `{}`", spec.model))?;
    let cfg = model.config().clone();
    let exec = LocalExecutor::new(model, num_blocks(args, cfg.max_position_embeddings), args.block_size)?;
    let engine = Engine::new(Box::new(exec), tokenizer, &cfg.eos_token_ids, engine_config(args))?;
    Ok(Backend { engine, workers: None, vocab_size: cfg.vocab_size })
}

fn group_backend(args: &RunArgs, env: Option<RankEnv>) -> anyhow::Result<Backend> {
    let world = args.tp * args.pp;
    let (env, workers) = match env {
        Some(env) => {
            init_threads(args.model.threads)?;
            (env, None)
        }
        None => {
            let plan = args.launch.plan(world)?;
            let threads = if args.model.threads > 0 { args.model.threads } else { plan.threads() };
            init_threads(threads)?;
            let watch = spawn_local_workers(&plan, args.launch.comm_timeout)?;
            (rank0_env(&plan)?, Some(watch))
        }
    };
    if env.world_size != world {
        bail!("--tp {} × --pp {} = {world} ranks, but the launcher started {}", args.tp, args.pp, env.world_size);
    }
    let spec = model_spec(args)?;
    let cfg = read_config(&spec).with_context(|| format!("reading the config of `{}`", spec.model))?;
    let pp_layers = (!args.pp_layers.is_empty()).then_some(args.pp_layers.as_slice());
    let layout = GroupLayout::new(args.tp, args.pp, cfg.num_layers, pp_layers)?;
    let group_spec = GroupSpec {
        model: args.model.model.clone(),
        load_format: if spec.load_format == LoadFormat::Dummy { "dummy" } else { "auto" }.into(),
        dtype: format!("{:?}", args.model.dtype).to_lowercase(),
        tp: args.tp as u32,
        pp: args.pp as u32,
        stage_layers: layout.stage_layers.iter().map(|&l| l as u32).collect(),
        num_blocks: num_blocks(args, cfg.max_position_embeddings) as u32,
        block_size: args.block_size as u32,
        device: args.device.name().into(),
    };
    let ready = start_group(group_spec, &env, args.launch.timeout(), LOAD_TIMEOUT)?;
    for r in &ready.ready {
        eprintln!(
            "rank {} ready: stage {} tp {} | weights {:.1} MiB | kv cache {:.1} MiB | peak RSS {:.1} MiB",
            r.rank,
            layout.stage_of(r.rank as usize),
            layout.tp_rank_of(r.rank as usize),
            r.weight_bytes as f64 / 1048576.0,
            r.kv_cache_bytes as f64 / 1048576.0,
            r.peak_rss_bytes as f64 / 1048576.0
        );
    }
    let (exec, tokenizer) = GroupExecutor::new(ready);
    let engine = Engine::new(Box::new(exec), tokenizer, &cfg.eos_token_ids, engine_config(args))?;
    Ok(Backend { engine, workers, vocab_size: cfg.vocab_size })
}

/// Model loading on the other ranks can take a while; dead ranks are still noticed at once.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let env = RankEnv::from_env()?;
    if let Some(env) = env.as_ref().filter(|e| e.rank != 0) {
        // Started by mpirun/srun/torchrun with the same command on every rank.
        init_threads(args.model.threads)?;
        return crate::worker::run_rank(env, args.launch.comm_timeout);
    }
    let backend = if env.is_some() || args.tp * args.pp > 1 { group_backend(&args, env)? } else { local_backend(&args)? };
    let Backend { mut engine, workers, vocab_size } = backend;
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
