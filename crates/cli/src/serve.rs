//! `shardline serve`: rank 0 as a server. The engine core runs the model (or the TP × PP group)
//! while the router answers gRPC and OpenAI-compatible HTTP until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use shardline_engine::{EngineConfig, SchedulerPolicy};
use shardline_router::{CoreConfig, EngineCore, Metrics, ServeConfig, ServerInfo};

use crate::args::ModelArgs;
use crate::backend::{self, Backend, EngineShape, ParallelArgs, Role};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    parallel: ParallelArgs,
    /// gRPC listen address (`shardline.v1.Generation`).
    #[arg(long, env = "SHARDLINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// OpenAI-compatible HTTP listen address, or `off`.
    #[arg(long, env = "SHARDLINE_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    http_addr: String,
    /// How requests are batched: `continuous` (join and leave every step), `static` (fixed
    /// batches run to completion) or `sequential` (one at a time, the naive server).
    #[arg(long, env = "SHARDLINE_SCHEDULER", default_value = "continuous")]
    scheduler: SchedulerPolicy,
    /// Most sequences in the running batch.
    #[arg(long, env = "SHARDLINE_MAX_NUM_SEQS", default_value_t = 64)]
    max_num_seqs: usize,
    /// Most tokens per forward pass (prompts beyond it are prefilled in chunks).
    #[arg(long, env = "SHARDLINE_MAX_BATCH_TOKENS", default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Tokens per KV-cache block.
    #[arg(long, env = "SHARDLINE_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// KV-cache capacity in tokens, shared by all sequences (rounded up to whole blocks); when it
    /// runs out the newest sequence is preempted and recomputed later.
    #[arg(long, env = "SHARDLINE_KV_CACHE_TOKENS", default_value_t = 32768)]
    kv_cache_tokens: usize,
    /// Requests waiting or running before new ones are refused (RESOURCE_EXHAUSTED / 429).
    #[arg(long, env = "SHARDLINE_MAX_QUEUE", default_value_t = 1024)]
    max_queue: usize,
    /// Threads for network I/O (the model's kernels have their own pool).
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
    if args.kv_cache_tokens < args.block_size {
        bail!("--kv-cache-tokens must hold at least one block ({} tokens)", args.block_size);
    }
    let blocks = args.kv_cache_tokens.div_ceil(args.block_size);
    let shape = EngineShape {
        block_size: args.block_size,
        num_blocks: Box::new(move |_| blocks),
        engine: EngineConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_num_seqs: args.max_num_seqs,
            policy: args.scheduler,
        },
    };
    let Backend { engine, workers, vocab_size, max_model_len, num_blocks } =
        backend::build(&args.model, &args.parallel, shape, env)?;
    let info = Arc::new(ServerInfo {
        model_id: args.model.model.clone(),
        tokenizer: engine.shared_tokenizer(),
        vocab_size,
        max_model_len,
        eos_token_ids: engine.eos_token_ids().to_vec(),
        tp: args.parallel.tp,
        pp: args.parallel.pp,
        block_size: args.block_size,
        num_kv_blocks: num_blocks,
        dtype: format!("{:?}", args.model.dtype).to_lowercase(),
        scheduler: args.scheduler.to_string(),
    });
    eprintln!(
        "router: {} | TP {} × PP {} | scheduler {} | KV cache {} blocks × {} tokens",
        info.model_id, info.tp, info.pp, info.scheduler, num_blocks, args.block_size
    );
    let core =
        EngineCore::start(engine, CoreConfig { max_queue: args.max_queue }, Arc::new(Metrics::new(&info.model_id)));
    let cfg = ServeConfig { grpc_addr: args.grpc_addr, http_addr, io_threads: args.io_threads };
    let result = shardline_router::serve(core, info, cfg);
    // The engine (and with it the group) is gone by now: workers got Shutdown or saw rank 0 go.
    if let Some(w) = workers {
        w.finish();
    }
    Ok(result?)
}
