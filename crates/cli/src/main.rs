//! `shardline`: one binary, one subcommand per job.

mod args;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shardline", version, about = "Serve Llama-family models across GPUs with tensor and pipeline parallelism")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate offline, in this process (no server): streams tokens, then prints speed.
    Run(run::RunArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
