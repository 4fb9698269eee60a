//! `shardline`: one binary, one subcommand per job.

mod args;
mod backend;
mod bench;
mod cost;
mod experiment;
mod export_tokenizer;
mod generate;
mod group;
mod launch;
mod plan;
mod run;
mod serve;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shardline",
    version,
    about = "Serve Llama-family models across GPUs with tensor and pipeline parallelism"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// RunArgs is much larger than the others; the enum is parsed once at start-up.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate offline (no server): streams tokens, then prints speed. With --tp/--pp the
    /// model is split over a group of local ranks, this process being rank 0.
    Run(run::RunArgs),
    /// Serve the model over gRPC and OpenAI-compatible HTTP (rank 0 of a group with --tp/--pp).
    Serve(serve::ServeArgs),
    /// Generate through a running server over gRPC (same flags and JSON as `run`).
    Generate(generate::GenerateArgs),
    /// Start and supervise this node's ranks of a group (rank 0 serves, or runs the job given
    /// after `--`).
    Launch(launch::LaunchCmdArgs),
    /// One rank of a group (started by `launch`, torchrun, mpirun or srun).
    Worker(worker::WorkerArgs),
    /// Load-test a running server (gRPC or OpenAI-compatible): TTFT, TPOT, ITL, E2E and
    /// throughput per concurrency level or request rate.
    Bench(bench::BenchArgs),
    /// Price a bench or experiment report: $ per 1M tokens from GPU-hour prices, and the
    /// utilization above which self-hosting beats an API.
    Cost(cost::CostArgs),
    /// Run an experiment (launch/experiments/*.toml): each server layout in turn under the same
    /// bench sweep, then a report folder with tables, plots and costs.
    Experiment(experiment::ExperimentArgs),
    /// Predict every TP × PP layout of a model on N GPUs (memory, TTFT, TPOT, throughput,
    /// cost) and rank them; `--calibrate` measures this machine for `--hardware cpu`.
    Plan(plan::PlanArgs),
    /// Write a model's tokenizer (HF directory, GGUF or alias) as a Hugging Face directory, for
    /// load tools that count tokens with transformers.
    ExportTokenizer(export_tokenizer::ExportTokenizerArgs),
}

/// Keeps freed buffers in the heap instead of returning them to the kernel. A forward pass
/// allocates its activations afresh (logits alone are 6 MiB at batch 32); with glibc's
/// defaults big blocks are mmapped and unmapped every time, and re-faulting and zeroing those
/// pages was ~4% of a batch-32 step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Generate(args) => generate::generate(args),
        Command::Launch(args) => launch::launch(args),
        Command::Worker(args) => worker::worker(args),
        Command::Bench(args) => bench::bench(args),
        Command::Cost(args) => cost::cost(args),
        Command::Experiment(args) => experiment::experiment(args),
        Command::Plan(args) => plan::plan(args),
        Command::ExportTokenizer(args) => export_tokenizer::export_tokenizer(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // A rank that found its group gone tells its launcher not to start it again.
        let gone = e.chain().any(|c| matches!(c.downcast_ref(), Some(shardline_worker::WorkerError::GroupGone(_))));
        std::process::exit(if gone { shardline_launcher::EXIT_GROUP_GONE } else { 1 });
    }
}
