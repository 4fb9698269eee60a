//! Building the engine a command runs on: the whole model in this process, or a TP × PP group
//! with rank 0 here (spawning the other local ranks unless a launcher already did).

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use shardline_engine::Engine;
use shardline_launcher::Watch;
use shardline_model::{DeviceKind, ModelSpec};
use shardline_tokenizer::Tokenizer;
use shardline_worker::{start_group, GroupConfig, GroupExecutor, GroupLayout, LocalExecutor, RankEnv};

use crate::args::{device_parser, init_threads, EngineArgs, ModelArgs};
use crate::group::{rank0_env, spawn_local_workers, LaunchArgs, Replacer};

/// How the model is split and where its ranks run.
#[derive(Args, Debug)]
pub struct ParallelArgs {
    /// Tensor-parallel degree: each layer split over this many ranks.
    #[arg(long, env = "SHARDLINE_TP", default_value_t = 1)]
    pub tp: usize,
    /// Pipeline-parallel degree: the layers split into this many stages.
    #[arg(long, env = "SHARDLINE_PP", default_value_t = 1)]
    pub pp: usize,
    /// Layers per pipeline stage, e.g. `10,10,10` (default: as even as possible).
    #[arg(long, env = "SHARDLINE_PP_LAYERS", value_delimiter = ',')]
    pub pp_layers: Vec<usize>,
    /// Device kind of every rank.
    #[arg(long, env = "SHARDLINE_DEVICE", default_value = "cpu", value_parser = device_parser())]
    pub device: DeviceKind,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

impl ParallelArgs {
    pub fn world_size(&self) -> usize {
        self.tp * self.pp
    }
}

/// What generation runs on.
pub struct Backend {
    pub engine: Engine,
    /// Local ranks spawned by this process (a group started without a launcher).
    pub workers: Option<Watch>,
}

/// What to do in this process, given the rank environment a launcher may have set.
pub enum Role {
    /// A worker rank (mpirun/srun/torchrun started the same command everywhere).
    Worker(RankEnv),
    /// Rank 0 of a group, or a single process.
    Rank0(Option<RankEnv>),
}

pub fn role() -> anyhow::Result<Role> {
    Ok(match RankEnv::from_env()? {
        Some(env) if env.rank != 0 => Role::Worker(env),
        env => Role::Rank0(env),
    })
}

/// Runs this process as a worker rank.
pub fn run_worker_rank(model: &ModelArgs, parallel: &ParallelArgs, env: &RankEnv) -> anyhow::Result<()> {
    init_threads(model.threads)?;
    crate::worker::run_rank(env, parallel.launch.comm_timeout)
}

/// The engine for `model` split as `parallel` says. `default_kv_tokens` sizes the KV cache from
/// the model's context length when `--kv-cache-tokens` is not given.
pub fn build(
    model: &ModelArgs,
    parallel: &ParallelArgs,
    engine: &EngineArgs,
    default_kv_tokens: &dyn Fn(usize) -> usize,
    env: Option<RankEnv>,
) -> anyhow::Result<Backend> {
    if parallel.world_size() == 0 {
        bail!("--tp and --pp must be at least 1");
    }
    if env.is_some() || parallel.world_size() > 1 {
        group_backend(model, parallel, engine, default_kv_tokens, env)
    } else {
        local_backend(model, parallel, engine, default_kv_tokens)
    }
}

fn model_spec(model: &ModelArgs, parallel: &ParallelArgs) -> anyhow::Result<ModelSpec> {
    let mut spec = ModelSpec::cpu(&model.model, model.dtype(parallel.device));
    spec.load_format = model.load_format;
    spec.options.quantization = model.quantization;
    spec.options.progress = true;
    spec.options.device = shardline_worker::device_for(parallel.device, 0, &parallel.launch.devices)?;
    Ok(spec)
}

/// The tokenizer front ends encode with and the engine decodes with.
fn tokenizer(model: &ModelArgs) -> anyhow::Result<Arc<Tokenizer>> {
    let path = shardline_weights::resolve_model(&model.model)?;
    let tokenizer =
        Tokenizer::from_path(&path).with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    Ok(Arc::new(tokenizer))
}

fn local_backend(
    model: &ModelArgs,
    parallel: &ParallelArgs,
    engine: &EngineArgs,
    default_kv_tokens: &dyn Fn(usize) -> usize,
) -> anyhow::Result<Backend> {
    init_threads(model.threads)?;
    let spec = model_spec(model, parallel)?;
    let llama = spec.load().with_context(|| format!("loading model `{}`", spec.model))?;
    eprintln!(
        "loaded: weights {:.1} MiB ({}) | peak RSS {:.1} MiB",
        llama.weight_bytes() as f64 / 1048576.0,
        llama.weight_formats(),
        shardline_worker::peak_rss_bytes() as f64 / 1048576.0
    );
    let cfg = llama.config().clone();
    let num_blocks = engine.num_blocks(default_kv_tokens(cfg.max_position_embeddings))?;
    let exec = LocalExecutor::new(llama, num_blocks, engine.block_size)?;
    let engine = Engine::new(Box::new(exec), tokenizer(model)?, &cfg.eos_token_ids, engine.config())?;
    Ok(Backend { engine, workers: None })
}

/// Model loading on the other ranks can take a while; dead ranks are still noticed at once.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn group_backend(
    model: &ModelArgs,
    parallel: &ParallelArgs,
    engine: &EngineArgs,
    default_kv_tokens: &dyn Fn(usize) -> usize,
    env: Option<RankEnv>,
) -> anyhow::Result<Backend> {
    let world = parallel.world_size();
    let (env, mut workers) = match env {
        Some(env) => {
            init_threads(model.threads)?;
            (env, None)
        }
        None => {
            let plan = parallel.launch.plan(world)?;
            let threads = if model.threads > 0 { model.threads } else { plan.threads() };
            init_threads(threads)?;
            let secret = parallel.launch.group_secret(&plan)?;
            let workers = spawn_local_workers(&plan, &parallel.launch, &secret)?;
            (rank0_env(&plan, &parallel.launch, secret)?, Some(workers))
        }
    };
    // Recover from a lost worker rank unless --max-restarts 0: the ranks this process spawned
    // are restarted by it, others by their own launchers.
    let replacer =
        parallel.launch.restart_policy().filter(|_| world > 1).map(|p| Replacer::new(workers.as_mut(), world, p));
    if env.world_size != world {
        bail!(
            "--tp {} × --pp {} = {world} ranks, but the launcher started {}",
            parallel.tp,
            parallel.pp,
            env.world_size
        );
    }
    let spec = model_spec(model, parallel)?;
    let cfg = spec.read_config().with_context(|| format!("reading the config of `{}`", spec.model))?;
    let pp_layers = (!parallel.pp_layers.is_empty()).then_some(parallel.pp_layers.as_slice());
    let layout = GroupLayout::new(parallel.tp, parallel.pp, cfg.num_layers, pp_layers)?;
    let config = GroupConfig {
        model: model.model.clone(),
        load_format: model.load_format,
        quantization: model.quantization,
        dtype: model.dtype(parallel.device),
        device: parallel.device,
        layout: layout.clone(),
        num_blocks: engine.num_blocks(default_kv_tokens(cfg.max_position_embeddings))?,
        block_size: engine.block_size,
        heartbeat_timeout: parallel.launch.heartbeat_timeout(),
        recover: replacer.is_some(),
    };
    let tokenizer = tokenizer(model)?;
    let ready = start_group(config, &env, parallel.launch.timeout(), LOAD_TIMEOUT)?;
    for r in &ready.ready {
        eprintln!(
            "rank {} ready: stage {} tp {} | weights {:.1} MiB ({}) | kv cache {:.1} MiB | peak RSS {:.1} MiB",
            r.rank,
            layout.stage_of(r.rank as usize),
            layout.tp_rank_of(r.rank as usize),
            r.weight_bytes as f64 / 1048576.0,
            r.weight_formats,
            r.kv_cache_bytes as f64 / 1048576.0,
            r.peak_rss_bytes as f64 / 1048576.0
        );
    }
    let mut exec = GroupExecutor::new(ready);
    if let Some(replacer) = replacer {
        exec = exec.with_replacer(Box::new(replacer));
    }
    let engine = Engine::new(Box::new(exec), tokenizer, &cfg.eos_token_ids, engine.config())?;
    Ok(Backend { engine, workers: workers.map(|w| w.watch) })
}
