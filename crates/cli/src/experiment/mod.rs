//! `shardline experiment`: for each layout of a TOML definition, start that server group, run
//! the bench sweep against it in-process, tear it down; then write the report folder. The
//! definition, the report and the plots are the `shardline-experiment` crate's; this is the
//! part that needs processes and a clock.

mod server;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use shardline_bench::report;
use shardline_experiment::config::Backend;
use shardline_experiment::{machine, ExperimentConfig, ExperimentReport, Layout, LayoutResult};

use server::ServerGroup;

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The experiment definition (TOML; see launch/experiments/).
    #[arg(long, env = "SHARDLINE_EXPERIMENT_CONFIG")]
    config: PathBuf,
    /// Report folder [default: reports/<name>-<YYYYmmdd-HHMMSS, UTC>].
    #[arg(long, env = "SHARDLINE_EXPERIMENT_OUTPUT")]
    output: Option<PathBuf>,
    /// Seconds each server group gets to print READY (model load and rendezvous).
    #[arg(long, env = "SHARDLINE_EXPERIMENT_READY_TIMEOUT", default_value_t = 300)]
    ready_timeout: u64,
}

/// `launch --tp T --pp P [--threads-per-rank N] -- serve …`: the launcher starts the ranks and
/// hands TP/PP to rank 0's `serve` through the environment. Ephemeral ports, read back from
/// the READY line, so layouts never collide with each other or with anything else running.
fn launch_args(config: &ExperimentConfig, layout: &Layout) -> Vec<String> {
    let mut args: Vec<String> =
        ["launch", "--tp", &layout.tp.to_string(), "--pp", &layout.pp.to_string()].map(String::from).to_vec();
    if let Some(t) = config.model.threads {
        args.extend(["--threads-per-rank".into(), t.to_string()]);
    }
    args.extend(
        ["--", "serve", "--model", &config.model.name, "--scheduler", <&str>::from(layout.scheduler)]
            .into_iter()
            .chain(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .map(String::from),
    );
    if let Some(d) = &config.model.dtype {
        args.extend(["--dtype".into(), d.clone()]);
    }
    args.extend(layout.serve_args.iter().cloned());
    args
}

pub fn experiment(args: ExperimentArgs) -> anyhow::Result<()> {
    let config = ExperimentConfig::load(&args.config)?;
    let started_utc = machine::utc_stamp_now();
    let dir = args.output.unwrap_or_else(|| PathBuf::from("reports").join(format!("{}-{started_utc}", config.name)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let machine = machine::machine_line();
    let total = config.layouts.len();
    println!("experiment: {} ({total} layouts) on {machine}; report in {}", config.name, dir.display());
    let runner = Runner {
        config: &config,
        exe: std::env::current_exe().context("locating the shardline binary to start servers")?,
        dir: &dir,
        ready_within: Duration::from_secs(args.ready_timeout),
        // One thread, as for `shardline bench`: the client stays light next to a CPU server.
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        progress: std::io::stderr().is_terminal(),
    };

    let mut layouts = Vec::new();
    let mut failure = None;
    for (i, layout) in config.layouts.iter().enumerate() {
        let tag = format!("layout {}/{total} {}", i + 1, layout.name);
        match runner.measure(layout, &tag) {
            Ok(result) => layouts.push(result),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(runner);
    // A failed layout still leaves the finished ones' results behind, marked as partial.
    let failure = match failure {
        Some(e) if layouts.is_empty() => return Err(e),
        f => f,
    };
    let done = layouts.len();
    let incomplete = failure.as_ref().map(|e| format!("{e:#}"));
    let report = ExperimentReport { config, machine, started_utc, layouts, incomplete };
    let written = report.write(&dir)?;
    let names: Vec<String> =
        written.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    match failure {
        None => {
            println!("experiment: wrote {} into {}", names.join(", "), dir.display());
            Ok(())
        }
        Some(e) => {
            println!("experiment: wrote a partial report ({done}/{total} layouts) into {}", dir.display());
            Err(e)
        }
    }
}

/// What every layout's run shares.
struct Runner<'a> {
    config: &'a ExperimentConfig,
    exe: PathBuf,
    dir: &'a Path,
    ready_within: Duration,
    runtime: tokio::runtime::Runtime,
    progress: bool,
}

impl Runner<'_> {
    /// One layout: start its server group, run the sweep, tear the group down (before the next
    /// layout starts, whatever the sweep did).
    fn measure(&self, layout: &Layout, tag: &str) -> anyhow::Result<LayoutResult> {
        let (config, dir) = (self.config, self.dir);
        println!("experiment: {tag}: starting (TP {} × PP {}, {} scheduler)…", layout.tp, layout.pp, layout.scheduler);
        let log = dir.join(format!("{}.server.log", layout.name));
        let t0 = Instant::now();
        let server = ServerGroup::start(&self.exe, &launch_args(config, layout), &log, self.ready_within)
            .with_context(|| format!("{tag}: starting the server"))?;
        let ready_s = t0.elapsed().as_secs_f64();
        println!("experiment: {tag}: ready in {ready_s:.1} s at {}", server.grpc);
        let endpoint = match config.bench.backend {
            Backend::Grpc => server.grpc.clone(),
            Backend::Openai => server.http.clone(),
        };
        let bench = self.runtime.block_on(shardline_bench::run(&config.bench_config(endpoint, self.progress)));
        let stopped = server.stop();
        let bench = bench.with_context(|| format!("{tag}: bench"))?;
        stopped.with_context(|| format!("{tag}: stopping the server"))?;
        print!("{}", report::table(&bench));
        Ok(LayoutResult { layout: layout.clone(), ready_s, bench })
    }
}
