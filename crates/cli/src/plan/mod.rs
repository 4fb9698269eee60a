//! `shardline plan`: every TP × PP layout of a model on N devices, predicted (the
//! `shardline-plan` crate), printed as a ranked table or JSON, and plotted; `--calibrate`
//! measures this machine for the `cpu` profile.

mod calibrate;

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args, ValueEnum};
use shardline_plan::memory::{EngineLimits, KvRule};
use shardline_plan::{report, Hardware, KvDtype, Load, PlanModel, Question, Slo, WeightsDtype};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("load").args(["concurrency", "max_throughput"])))]
pub struct PlanArgs {
    /// A built-in config (llama-3.1-8b, llama-3.1-70b, llama-3.3-70b, llama-3.1-405b,
    /// qwen2.5-7b), a config.json, an HF directory, a GGUF file or an alias (smollm2-135m).
    #[arg(long, env = "SHARDLINE_MODEL", default_value = "smollm2-135m")]
    model: String,
    /// Devices (GPUs, or CPU ranks with --hardware cpu) to lay the model out on.
    #[arg(long, required_unless_present = "calibrate")]
    gpus: Option<usize>,
    /// Nodes the devices are spread over (evenly).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// A preset (h100-sxm, h200, a100-80g, l4, rtx6000-pro, cpu) or a TOML profile.
    #[arg(long, default_value = "cpu")]
    hardware: String,
    /// Format the matrices are held in [default: the checkpoint's own on CPU ranks, else bf16].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["bf16", "fp16", "fp8", "int4", "f32"]))]
    weights_dtype: Option<String>,
    /// KV cache element type [default: the activations' (f32 on CPU ranks, else bf16)].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["bf16", "fp8", "f32"]))]
    kv_dtype: Option<String>,
    /// Prompt tokens per request.
    #[arg(long, required_unless_present = "calibrate")]
    input_len: Option<usize>,
    /// Output tokens per request.
    #[arg(long, required_unless_present = "calibrate")]
    output_len: Option<usize>,
    /// Closed-loop clients over all replicas.
    #[arg(long)]
    concurrency: Option<usize>,
    /// As many requests as each layout's KV cache and --max-num-seqs allow.
    #[arg(long)]
    max_throughput: bool,
    /// TTFT target in ms: goodput counts only loads meeting it.
    #[arg(long)]
    slo_ttft_ms: Option<f64>,
    /// TPOT target in ms: goodput counts only loads meeting it.
    #[arg(long)]
    slo_tpot_ms: Option<f64>,
    /// Price of one device-hour in $, for $ per 1M output tokens.
    #[arg(long)]
    gpu_hour_price: Option<f64>,
    /// KV blocks take memory up to this fraction of each device's (vLLM's rule) [default:
    /// the hardware profile's memory_utilization].
    #[arg(long, conflicts_with = "kv_cache_free_fraction")]
    gpu_memory_utilization: Option<f64>,
    /// KV blocks take this fraction of the memory free after weights and activations
    /// (TensorRT-LLM's rule, 0.9 by default there).
    #[arg(long)]
    kv_cache_free_fraction: Option<f64>,
    /// The engine's --max-num-seqs.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// The engine's --max-batch-tokens.
    #[arg(long, default_value_t = 2048)]
    max_batch_tokens: usize,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Also draw predicted throughput against clients (plan-throughput.svg/.png) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Measure this machine (matmuls at --model's shapes, attention, all-reduce, step
    /// overhead) and write the `cpu` profile `--hardware cpu` then uses.
    #[arg(long)]
    calibrate: bool,
    /// Where --calibrate writes the profile [default: $SHARDLINE_CACHE/plan/cpu.toml].
    #[arg(long, requires = "calibrate")]
    calibrate_output: Option<PathBuf>,
}

pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    if args.calibrate {
        let path = args.calibrate_output.unwrap_or_else(shardline_plan::hardware::calibrated_cpu_path);
        return calibrate::calibrate(&path, &args.model);
    }
    let (Some(gpus), Some(input_len), Some(output_len)) = (args.gpus, args.input_len, args.output_len) else {
        unreachable!("clap requires --gpus, --input-len and --output-len without --calibrate");
    };
    let load = match (args.concurrency, args.max_throughput) {
        (Some(c), false) => Load::Concurrency(c),
        (None, true) => Load::MaxThroughput,
        _ => anyhow::bail!("give --concurrency C or --max-throughput"),
    };
    // clap has checked the names against the enums' own.
    let weights: Option<WeightsDtype> = args.weights_dtype.as_deref().map(str::parse).transpose()?;
    let kv: Option<KvDtype> = args.kv_dtype.as_deref().map(str::parse).transpose()?;
    let hw = Hardware::load(&args.hardware)?;
    let model = PlanModel::open(&args.model)?;
    let question = Question {
        gpus,
        nodes: args.nodes,
        weights,
        kv,
        input_len,
        output_len,
        load,
        slo: Slo { ttft_ms: args.slo_ttft_ms, tpot_ms: args.slo_tpot_ms },
        gpu_hour_usd: args.gpu_hour_price,
        limits: EngineLimits { max_num_seqs: args.max_num_seqs, max_batch_tokens: args.max_batch_tokens },
        kv_rule: match (args.gpu_memory_utilization, args.kv_cache_free_fraction) {
            (Some(u), _) => Some(KvRule::Utilization(u)),
            (None, Some(f)) => Some(KvRule::FreeFraction(f)),
            (None, None) => None,
        },
    };
    let plan = shardline_plan::plan(&model, &hw, &question)?;
    match args.output {
        Output::Table => print!("{}", report::table(&plan)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report::to_json(&plan))?),
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = shardline_experiment::plot::render(&report::throughput_chart(&plan), dir)?;
        eprintln!("plot: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}
