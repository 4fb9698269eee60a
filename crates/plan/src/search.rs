//! Every layout of a model on N devices: each TP × PP group whose size divides N (as N / size
//! replicas), including TP degrees that do not divide the heads; each sized, predicted at the
//! load asked for, priced, and ranked.

use shardline_bench::cost::{run_cost, MeasuredRun, Prices};

use crate::error::{PlanError, Result};
use crate::hardware::{Hardware, Link};
use crate::memory::{memory, EngineLimits, KvRule, Memory, MemoryInputs};
use crate::model::{KvDtype, PlanModel, WeightsDtype};
use crate::perf::{predict, Machine, Prediction};
use crate::shape::GroupShape;

/// The load a layout is judged at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// This many closed-loop clients over all replicas.
    Concurrency(usize),
    /// As many requests at once as each replica's KV cache and `max_num_seqs` allow.
    MaxThroughput,
}

/// Latency targets; goodput counts only loads meeting every one given.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

impl Slo {
    fn met(&self, p: &Prediction) -> bool {
        self.ttft_ms.is_none_or(|t| p.ttft_s * 1e3 <= t) && self.tpot_ms.is_none_or(|t| p.tpot_s * 1e3 <= t)
    }

    fn any(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some()
    }
}

/// What is asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub gpus: usize,
    pub nodes: usize,
    pub weights: Option<WeightsDtype>,
    pub kv: Option<KvDtype>,
    pub input_len: usize,
    pub output_len: usize,
    pub load: Load,
    pub slo: Slo,
    pub gpu_hour_usd: Option<f64>,
    pub limits: EngineLimits,
    /// `None`: the hardware's `memory_utilization`.
    pub kv_rule: Option<KvRule>,
}

/// One layout's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutPlan {
    pub tp: usize,
    pub pp: usize,
    pub replicas: usize,
    pub fits: bool,
    /// Why it does not fit (or cannot be formed).
    pub why: Option<String>,
    pub memory: Option<Memory>,
    /// Clients over all replicas at the load judged.
    pub concurrency: usize,
    /// Per replica.
    pub prediction: Option<Prediction>,
    pub output_tok_s: f64,
    /// Output tok/s at the best load meeting the SLOs (equal to `output_tok_s` without SLOs).
    pub goodput_tok_s: f64,
    pub cost_per_1m_output: Option<f64>,
    /// (clients, output tok/s) from 1 client up, for the plot.
    pub curve: Vec<(usize, f64)>,
}

impl LayoutPlan {
    pub fn name(&self) -> String {
        let group = format!("TP {} × PP {}", self.tp, self.pp);
        if self.replicas > 1 {
            format!("{group} ×{}", self.replicas)
        } else {
            group
        }
    }
}

pub struct Plan {
    pub model: String,
    pub hardware: String,
    pub weights: String,
    pub question: Question,
    /// Fitting layouts best first, then the others.
    pub layouts: Vec<LayoutPlan>,
}

impl Plan {
    pub fn best(&self) -> &LayoutPlan {
        &self.layouts[0]
    }
}

/// Plans every layout; an error when the question is malformed or nothing fits.
pub fn plan(model: &PlanModel, hw: &Hardware, q: &Question) -> Result<Plan> {
    check(hw, q)?;
    let cpu = hw.shares_host;
    let formats = model.formats(cpu, q.weights);
    let cfg = &model.cfg;
    let kv_bytes = q.kv.map_or(formats.activation_bytes, KvDtype::bytes);
    let per_node = q.gpus / q.nodes;
    let ranks_per_host = if cpu { per_node } else { 1 };
    let mut layouts = Vec::new();
    for group in (1..=q.gpus).filter(|g| q.gpus.is_multiple_of(*g)) {
        for tp in (1..=group).filter(|t| group.is_multiple_of(*t)) {
            let (pp, replicas) = (group / tp, q.gpus / group);
            let mut out = LayoutPlan {
                tp,
                pp,
                replicas,
                fits: false,
                why: None,
                memory: None,
                concurrency: 0,
                prediction: None,
                output_tok_s: 0.0,
                goodput_tok_s: 0.0,
                cost_per_1m_output: None,
                curve: Vec::new(),
            };
            let shape = match GroupShape::new(cfg, tp, pp, formats.tensors.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    out.why = Some(e.to_string());
                    layouts.push(out);
                    continue;
                }
            };
            let mem = memory(
                &shape,
                &MemoryInputs {
                    hw,
                    hidden: cfg.hidden_size,
                    head_dim: cfg.head_dim,
                    activation_bytes: formats.activation_bytes,
                    kv_bytes,
                    limits: q.limits,
                    ranks_per_host,
                    request_tokens: (q.input_len + q.output_len) as u64,
                    rule: q.kv_rule,
                },
            );
            out.why = mem.short.clone();
            out.fits = mem.short.is_none();
            if out.fits {
                let machine = Machine {
                    hw,
                    hidden: cfg.hidden_size,
                    head_dim: cfg.head_dim,
                    activation_bytes: formats.activation_bytes,
                    reduce_bytes: formats.reduce_bytes,
                    kv_bytes,
                    matmul_compute: formats.compute,
                    ranks_per_host,
                    tp_link: link(hw, crosses_nodes(q.gpus, tp, per_node, |r| r..r + tp)),
                    pp_links: (0..pp - 1)
                        .map(|s| {
                            let boundary = move |base: usize| base + (s + 1) * tp - 1..base + (s + 1) * tp + 1;
                            link(hw, crosses_nodes(q.gpus, group, per_node, boundary))
                        })
                        .collect(),
                    limits: q.limits,
                };
                evaluate(&mut out, &machine, &shape, mem.kv_tokens, q);
            }
            out.memory = Some(mem);
            layouts.push(out);
        }
    }
    let score = |l: &LayoutPlan| if q.slo.any() { l.goodput_tok_s } else { l.output_tok_s };
    layouts.sort_by(|a, b| {
        b.fits.cmp(&a.fits).then(score(b).total_cmp(&score(a))).then((a.tp * a.pp).cmp(&(b.tp * b.pp)))
    });
    if !layouts[0].fits {
        let reasons: Vec<String> =
            layouts.iter().map(|l| format!("  {}: {}", l.name(), l.why.as_deref().unwrap_or("?"))).collect();
        return Err(PlanError::FitsNowhere(format!(
            "{} fits in no layout on {} × {} (weights: {}):\n{}",
            model.name,
            q.gpus,
            hw.name,
            formats.label,
            reasons.join("\n")
        )));
    }
    Ok(Plan {
        model: model.name.clone(),
        hardware: hw.name.clone(),
        weights: formats.label,
        question: q.clone(),
        layouts,
    })
}

fn check(hw: &Hardware, q: &Question) -> Result<()> {
    let bad = |m: String| Err(PlanError::Invalid(m));
    if q.gpus == 0 || q.nodes == 0 || !q.gpus.is_multiple_of(q.nodes) {
        return bad(format!("--gpus {} must be a positive multiple of --nodes {}", q.gpus, q.nodes));
    }
    if q.gpus / q.nodes > hw.devices_per_node {
        return bad(format!(
            "{} devices per node, but a {} node has {}: pass --nodes",
            q.gpus / q.nodes,
            hw.name,
            hw.devices_per_node
        ));
    }
    if q.input_len == 0 || q.output_len == 0 {
        return bad("--input-len and --output-len must be at least 1".into());
    }
    if q.load == Load::Concurrency(0) {
        return bad("--concurrency must be at least 1".into());
    }
    if q.limits.max_num_seqs == 0 || q.limits.max_batch_tokens == 0 {
        return bad("--max-num-seqs and --max-batch-tokens must be at least 1".into());
    }
    if let Some(KvRule::Utilization(f) | KvRule::FreeFraction(f)) = q.kv_rule {
        if !(f > 0.0 && f <= 1.0) {
            return bad(format!("--gpu-memory-utilization and --kv-cache-free-fraction must be in (0, 1], not {f}"));
        }
    }
    if let Some(p) = q.gpu_hour_usd {
        if !(p.is_finite() && p > 0.0) {
            return bad(format!("--gpu-hour-price must be a positive number, not {p}"));
        }
    }
    Ok(())
}

/// Whether the ranks `span(base)` lie on two nodes for any `base` in steps of `step` over
/// the `gpus` ranks (packed per node, rank = replica · group + stage · tp + tp_rank).
fn crosses_nodes(gpus: usize, step: usize, per_node: usize, span: impl Fn(usize) -> std::ops::Range<usize>) -> bool {
    (0..gpus).step_by(step).any(|base| {
        let r = span(base);
        r.start / per_node != (r.end - 1) / per_node
    })
}

fn link(hw: &Hardware, inter: bool) -> &Link {
    if inter {
        &hw.inter_node
    } else {
        &hw.intra_node
    }
}

/// Predicts `out` at the question's load, its goodput and its throughput curve.
fn evaluate(out: &mut LayoutPlan, machine: &Machine, shape: &GroupShape, kv_tokens: u64, q: &Question) {
    let replicas = out.replicas;
    let kv_seqs = (kv_tokens / (q.input_len + q.output_len) as u64).max(1) as usize;
    let most = kv_seqs.min(q.limits.max_num_seqs);
    let at = |clients: usize| predict(machine, shape, kv_tokens, clients, q.input_len, q.output_len);
    // Total output tok/s with `total` clients spread over the replicas as evenly as possible.
    let total_tok_s = |total: usize| {
        let (each, extra) = (total / replicas, total % replicas);
        let mut sum = extra as f64 * at(each + 1).output_tok_s;
        if each > 0 {
            sum += (replicas - extra) as f64 * at(each).output_tok_s;
        }
        sum
    };
    out.concurrency = match q.load {
        Load::Concurrency(c) => c,
        Load::MaxThroughput => most * replicas,
    };
    let busiest = out.concurrency.div_ceil(replicas);
    out.prediction = Some(at(busiest));
    out.output_tok_s = total_tok_s(out.concurrency);
    let mut levels: Vec<usize> = std::iter::successors(Some(1usize), |c| Some(c * 2))
        .take_while(|&c| c <= (2 * most * replicas).max(out.concurrency))
        .collect();
    levels.push(out.concurrency);
    levels.sort_unstable();
    levels.dedup();
    out.curve = levels.iter().map(|&c| (c, total_tok_s(c))).collect();
    out.goodput_tok_s = match q.slo.any() {
        true => levels
            .iter()
            .filter(|&&c| c <= out.concurrency && q.slo.met(&at(c.div_ceil(replicas))))
            .map(|&c| total_tok_s(c))
            .fold(0.0, f64::max),
        false => out.output_tok_s,
    };
    out.cost_per_1m_output = q.gpu_hour_usd.and_then(|gpu_hour_usd| {
        let prices = Prices { gpu_hour_usd, gpus: q.gpus as f64, utilization: 1.0, api: None };
        let run = MeasuredRun {
            layout: out.name(),
            load: format!("c={}", out.concurrency),
            input_tok_s: 0.0,
            output_tok_s: out.output_tok_s,
            ranks: Some(q.gpus),
        };
        run_cost(&run, &prices).output_usd_per_m
    });
}
