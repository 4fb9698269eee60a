//! A plan as people and programs read it: the ranked table with the reason for the winner,
//! JSON (`shardline.plan.v1`), and the throughput-against-clients chart.

use serde_json::{json, Value};
use shardline_experiment::charts::{Chart, Series};

use crate::search::{LayoutPlan, Load, Plan};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Why the first layout wins, in one paragraph.
pub fn reason(plan: &Plan) -> String {
    let best = plan.best();
    let q = &plan.question;
    let slo = q.slo.ttft_ms.is_some() || q.slo.tpot_ms.is_some();
    let score = |l: &LayoutPlan| if slo { l.goodput_tok_s } else { l.output_tok_s };
    let what = if slo { "goodput within the SLOs" } else { "output tok/s" };
    let mut text = format!("{} gives the most {what}: {:.0}", best.name(), score(best));
    let fitting: Vec<&LayoutPlan> = plan.layouts.iter().filter(|l| l.fits).collect();
    if let Some(next) = fitting.get(1) {
        let ratio = score(best) / score(next).max(f64::MIN_POSITIVE);
        text += &format!(", {ratio:.2}× the runner-up {} ({:.0})", next.name(), score(next));
    }
    if let (Some(p), Some(m)) = (&best.prediction, &best.memory) {
        text += &format!(
            ". At {} it runs {} per replica (TPOT {:.1} ms, TTFT {:.0} ms); its KV cache holds {} tokens per replica",
            plural(best.concurrency, "client"),
            plural(p.running, "request"),
            p.tpot_s * 1e3,
            p.ttft_s * 1e3,
            m.kv_tokens
        );
        let kv_seqs = m.kv_tokens / (q.input_len + q.output_len) as u64;
        if (kv_seqs as usize) < best.concurrency.div_ceil(best.replicas) && kv_seqs < q.limits.max_num_seqs as u64 {
            text += &format!(
                ", {kv_seqs} requests of {} tokens: the KV cache limits the batch",
                q.input_len + q.output_len
            );
        }
        if p.idle > 0.25 && best.pp > 1 {
            text += &format!("; stages idle {:.0}% of the time", p.idle * 100.0);
        }
    }
    let short = plan.layouts.len() - fitting.len();
    if short > 0 {
        let verb = if short == 1 { "does" } else { "do" };
        text += &format!(". {} {verb} not fit or cannot be formed", plural(short, "layout"));
    }
    text + "."
}

pub fn table(plan: &Plan) -> String {
    let q = &plan.question;
    let load = match q.load {
        Load::Concurrency(c) => plural(c, "client"),
        Load::MaxThroughput => "max throughput".to_string(),
    };
    let mut out = format!(
        "Plan for {} on {} × {}{} (weights: {}), {} → {} tokens, {load}\n\n",
        plan.model,
        q.gpus,
        plan.hardware,
        if q.nodes > 1 { format!(" on {} nodes", q.nodes) } else { String::new() },
        plan.weights,
        q.input_len,
        q.output_len
    );
    let slo = q.slo.ttft_ms.is_some() || q.slo.tpot_ms.is_some();
    let mut rows = vec![vec![
        "#".to_string(),
        "layout".into(),
        "mem/GPU GiB".into(),
        "weights/GPU GiB".into(),
        "KV tokens".into(),
        "clients".into(),
        "TTFT ms".into(),
        "TPOT ms".into(),
        "out tok/s".into(),
    ]];
    if slo {
        rows[0].push("goodput tok/s".into());
    }
    rows[0].push("$/1M out".into());
    rows[0].push("note".into());
    for (i, l) in plan.layouts.iter().enumerate() {
        let weights = l.memory.as_ref().map(|m| m.weights_per_rank.iter().copied().max().unwrap_or(0));
        let mut row = vec![
            if l.fits { (i + 1).to_string() } else { "-".into() },
            l.name(),
            l.memory.as_ref().filter(|_| l.fits).map_or("-".into(), |m| format!("{:.2}", m.per_gpu_bytes as f64 / GIB)),
            weights.map_or("-".into(), |w| format!("{:.2}", w as f64 / GIB)),
            l.memory.as_ref().filter(|_| l.fits).map_or("-".into(), |m| m.kv_tokens.to_string()),
        ];
        match &l.prediction {
            Some(p) => row.extend([
                l.concurrency.to_string(),
                format!("{:.0}", p.ttft_s * 1e3),
                format!("{:.1}", p.tpot_s * 1e3),
                format!("{:.1}", l.output_tok_s),
            ]),
            None => row.extend(["-".into(), "-".into(), "-".into(), "-".into()]),
        }
        if slo {
            row.push(if l.prediction.is_some() { format!("{:.1}", l.goodput_tok_s) } else { "-".into() });
        }
        row.push(l.cost_per_1m_output.map_or("-".into(), |c| format!("{c:.3}")));
        let note = match (&l.why, &l.prediction) {
            (Some(why), _) => why.clone(),
            (None, Some(p)) if l.pp > 1 && p.idle > 0.05 => format!("stages idle {:.0}%", p.idle * 100.0),
            _ => String::new(),
        };
        row.push(note);
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(c, (cell, w))| if c == 1 || c + 1 == r.len() { format!("{cell:<w$}") } else { format!("{cell:>w$}") },
            )
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out + &format!("\n{}\n", reason(plan))
}

fn layout_json(l: &LayoutPlan) -> Value {
    let mem = l.memory.as_ref();
    let p = l.prediction.as_ref();
    json!({
        "tp": l.tp,
        "pp": l.pp,
        "replicas": l.replicas,
        "fits": l.fits,
        "why": l.why,
        "memory_per_gpu_bytes": mem.filter(|_| l.fits).map(|m| m.per_gpu_bytes),
        "weights_bytes_per_rank": mem.map(|m| m.weights_per_rank.clone()),
        "kv_bytes_per_token": mem.map(|m| m.kv_bytes_per_token),
        "kv_tokens": mem.filter(|_| l.fits).map(|m| m.kv_tokens),
        "concurrency": p.map(|_| l.concurrency),
        "running_per_replica": p.map(|p| p.running),
        "ttft_ms": p.map(|p| p.ttft_s * 1e3),
        "tpot_ms": p.map(|p| p.tpot_s * 1e3),
        "output_tokens_per_s": p.map(|_| l.output_tok_s),
        "goodput_tokens_per_s": p.map(|_| l.goodput_tok_s),
        "stage_idle_fraction": p.map(|p| p.idle),
        "cost_per_1m_output": l.cost_per_1m_output,
    })
}

pub fn to_json(plan: &Plan) -> Value {
    let q = &plan.question;
    json!({
        "schema": "shardline.plan.v1",
        "model": plan.model,
        "hardware": plan.hardware,
        "weights": plan.weights,
        "gpus": q.gpus,
        "nodes": q.nodes,
        "input_len": q.input_len,
        "output_len": q.output_len,
        "load": match q.load { Load::Concurrency(c) => json!({"concurrency": c}), Load::MaxThroughput => json!("max_throughput") },
        "slo": {"ttft_ms": q.slo.ttft_ms, "tpot_ms": q.slo.tpot_ms},
        "layouts": plan.layouts.iter().map(layout_json).collect::<Vec<_>>(),
        "best": layout_json(plan.best()),
        "reason": reason(plan),
    })
}

/// Predicted output tok/s against clients, one line per fitting layout (the best six).
pub fn throughput_chart(plan: &Plan) -> Chart {
    let series = plan
        .layouts
        .iter()
        .filter(|l| l.fits)
        .take(6)
        .enumerate()
        .map(|(i, l)| Series {
            label: l.name(),
            color: i,
            dashed: false,
            points: l.curve.iter().map(|&(c, t)| (c as f64, t)).collect(),
        })
        .collect();
    Chart {
        stem: "plan-throughput",
        title: format!("{} on {} × {}: predicted output throughput", plan.model, plan.question.gpus, plan.hardware),
        x_label: "concurrent clients".into(),
        y_label: "output tok/s".into(),
        series,
    }
}
