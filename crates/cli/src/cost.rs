//! `shardline cost`: a bench or experiment report plus prices → the cost table. The arithmetic
//! (and its formulas) lives in `shardline_bench::cost`; this reads, checks and prints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shardline_bench::cost::{self, ApiPrices, Prices};

#[derive(Args, Debug)]
pub struct CostArgs {
    /// A report: `shardline bench --output-json` (shardline.bench.v1) or `shardline
    /// experiment`'s report.json (shardline.experiment.v1).
    #[arg(long, env = "SHARDLINE_COST_REPORT")]
    report: PathBuf,
    /// Price of one GPU for one hour, in $.
    #[arg(long, env = "SHARDLINE_COST_GPU_HOUR_USD")]
    gpu_hour_usd: f64,
    /// GPUs the server occupies: a number (every run is charged for it), or `tp*pp` (one GPU
    /// per rank of each layout; experiment reports only).
    #[arg(long, env = "SHARDLINE_COST_GPUS")]
    gpus: String,
    /// Fraction of hours the server is busy at the measured throughput, in (0, 1].
    #[arg(long, env = "SHARDLINE_COST_UTILIZATION", default_value_t = 1.0)]
    utilization: f64,
    /// An API's price per 1M input tokens, to compare with (needs --api-output-usd-per-m).
    #[arg(long, env = "SHARDLINE_COST_API_INPUT_USD_PER_M", requires = "api_output_usd_per_m")]
    api_input_usd_per_m: Option<f64>,
    /// The API's price per 1M output tokens (needs --api-input-usd-per-m).
    #[arg(long, env = "SHARDLINE_COST_API_OUTPUT_USD_PER_M", requires = "api_input_usd_per_m")]
    api_output_usd_per_m: Option<f64>,
    /// Also write the table to this Markdown file.
    #[arg(long, env = "SHARDLINE_COST_OUTPUT_MD")]
    output_md: Option<PathBuf>,
}

pub fn cost(args: CostArgs) -> anyhow::Result<()> {
    let api = match (args.api_input_usd_per_m, args.api_output_usd_per_m) {
        (Some(input_usd_per_m), Some(output_usd_per_m)) => Some(ApiPrices { input_usd_per_m, output_usd_per_m }),
        _ => None,
    };
    let per_rank = args.gpus.replace(' ', "") == "tp*pp";
    let gpus = if per_rank {
        1.0
    } else {
        args.gpus.parse().map_err(|_| anyhow::anyhow!("--gpus `{}` is not a number or `tp*pp`", args.gpus))?
    };
    let prices = Prices { gpu_hour_usd: args.gpu_hour_usd, gpus, utilization: args.utilization, api };
    prices.validate()?;
    let path = &args.report;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let runs = cost::measured_runs(&report).with_context(|| format!("reading the runs of {}", path.display()))?;
    anyhow::ensure!(!runs.is_empty(), "{} has no runs to price", path.display());
    let mut rows = Vec::new();
    for run in runs {
        let gpus = match (per_rank, run.ranks) {
            (false, _) => gpus,
            (true, Some(ranks)) => ranks as f64,
            (true, None) => anyhow::bail!(
                "--gpus tp*pp needs an experiment report: {} does not name layouts' ranks",
                path.display()
            ),
        };
        rows.push((run, Prices { gpus, ..prices }));
    }
    let table = format!("## Cost\n\n{}", cost::markdown(&rows));
    print!("{table}");
    if let Some(out) = &args.output_md {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
