//! `shardline serve`: rank 0 as a server. The engine core runs the model (or the TP × PP group)
//! while the router answers gRPC and OpenAI-compatible HTTP until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use shardline_router::{ApiKeys, CoreConfig, EngineCore, Metrics, ServeConfig, ServerInfo};

use crate::args::{EngineArgs, ModelArgs};
use crate::backend::{self, Backend, ParallelArgs, Role};

/// KV-cache tokens when `--kv-cache-tokens` is not given.
const DEFAULT_KV_CACHE_TOKENS: usize = 32768;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    parallel: ParallelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// gRPC listen address (`shardline.v1.Generation`).
    #[arg(long, env = "SHARDLINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// OpenAI-compatible HTTP listen address, or `off`.
    #[arg(long, env = "SHARDLINE_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    http_addr: String,
    /// Requests waiting or running before new ones are refused (RESOURCE_EXHAUSTED / 429).
    #[arg(long, env = "SHARDLINE_MAX_QUEUE", default_value_t = 1024)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every /v1 route and gRPC call (repeatable; the
    /// environment variable takes a comma-separated list). /health and /metrics stay open.
    #[arg(long = "api-key", env = "SHARDLINE_API_KEY", value_delimiter = ',', hide_env_values = true)]
    api_keys: Vec<String>,
    /// Threads for network I/O and tokenization (the model's kernels have their own pool).
    #[arg(long, env = "SHARDLINE_IO_THREADS", default_value_t = 2)]
    io_threads: usize,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let env = match backend::role()? {
        Role::Worker(env) => return backend::run_worker_rank(&args.model, &args.parallel, &env),
        Role::Rank0(env) => env,
    };
    let http_addr = match args.http_addr.as_str() {
        "off" | "" => None,
        a => Some(a.parse::<SocketAddr>().with_context(|| format!("--http-addr `{a}` is not HOST:PORT or `off`"))?),
    };
    let api_keys = ApiKeys::new(args.api_keys.clone()).map_err(|e| anyhow::anyhow!("--api-key: {e}"))?;
    let default_kv_tokens = |_max_len: usize| DEFAULT_KV_CACHE_TOKENS;
    let Backend { engine, workers } =
        backend::build(&args.model, &args.parallel, &args.engine, &default_kv_tokens, env)?;
    let info = Arc::new(ServerInfo::new(
        args.model.model.clone(),
        &engine,
        args.parallel.tp,
        args.parallel.pp,
        args.model.dtype(args.parallel.device).as_str().to_string(),
    ));
    let limits = &info.limits;
    eprintln!(
        "router: {} | TP {} × PP {} | scheduler {} | KV cache {} blocks × {} tokens | prefix caching {}",
        info.model_id,
        info.tp,
        info.pp,
        limits.policy,
        limits.num_kv_blocks,
        limits.block_size,
        if limits.prefix_caching { "on" } else { "off" }
    );
    let core =
        EngineCore::start(engine, CoreConfig { max_queue: args.max_queue }, Arc::new(Metrics::new(&info.model_id)));
    let cfg = ServeConfig { grpc_addr: args.grpc_addr, http_addr, io_threads: args.io_threads, api_keys };
    let result = shardline_router::serve(core, info, cfg);
    // The engine (and with it the group) is gone by now: workers got Shutdown or saw rank 0 go.
    match (workers, &result) {
        (Some(w), Ok(())) => w.finish(),
        // A failed group may have ranks stuck on a dead or stopped peer: no waiting for them.
        (Some(w), Err(_)) => w.abort(),
        (None, _) => {}
    }
    Ok(result?)
}
