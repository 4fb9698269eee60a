//! The performance model's qualitative laws, each of which a wrong formula would break:
//! pipeline bubbles at low load, KV memory capping the batch, TP across nodes paying for the
//! slower link, and uneven TP degrees planned like the others.

use shardline_plan::memory::EngineLimits;
use shardline_plan::search::LayoutPlan;
use shardline_plan::{plan, Hardware, Load, PlanModel, Question, Slo, WeightsDtype};

fn question(gpus: usize, nodes: usize, load: Load) -> Question {
    Question {
        gpus,
        nodes,
        weights: Some(WeightsDtype::Bf16),
        kv: None,
        input_len: 512,
        output_len: 128,
        load,
        slo: Slo::default(),
        gpu_hour_usd: None,
        limits: EngineLimits { max_num_seqs: 256, max_batch_tokens: 8192 },
        kv_rule: None,
    }
}

fn find(layouts: &[LayoutPlan], tp: usize, pp: usize) -> &LayoutPlan {
    layouts.iter().find(|l| l.tp == tp && l.pp == pp).unwrap()
}

#[test]
fn a_pipeline_idles_at_one_client_and_fills_with_many() {
    let (model, hw) = (PlanModel::open("llama-3.1-8b").unwrap(), Hardware::load("h100-sxm").unwrap());
    let one = plan(&model, &hw, &question(2, 1, Load::Concurrency(1))).unwrap();
    let (pp1, pp2) = (find(&one.layouts, 1, 1), find(&one.layouts, 1, 2));
    let (a, b) = (pp1.prediction.unwrap(), pp2.prediction.unwrap());
    assert!(b.idle > 0.4, "one microbatch leaves one of two stages idle: {}", b.idle);
    assert!(b.tpot_s > 0.9 * a.tpot_s, "PP does not speed up one stream: {} vs {}", b.tpot_s, a.tpot_s);
    let many = plan(&model, &hw, &question(2, 1, Load::Concurrency(128))).unwrap();
    let (pp2_many, pp1_many) = (find(&many.layouts, 1, 2), find(&many.layouts, 1, 1));
    let idle = pp2_many.prediction.unwrap().idle;
    assert!(idle < 0.3 && idle < b.idle / 2.0, "many microbatches fill the pipeline: {idle} vs {}", b.idle);
    // Two replicas of PP 1 versus one PP 2 group: at 128 clients both keep both GPUs busy.
    assert!(pp2_many.output_tok_s > 0.7 * pp1_many.output_tok_s);
}

#[test]
fn kv_memory_caps_the_batch() {
    let model = PlanModel::open("llama-3.1-70b").unwrap();
    let hw = Hardware::load("h100-sxm").unwrap();
    let mut q = question(2, 1, Load::MaxThroughput);
    q.weights = Some(WeightsDtype::Fp8);
    q.limits.max_num_seqs = 4096;
    let p = plan(&model, &hw, &q).unwrap();
    let tp2 = find(&p.layouts, 2, 1);
    let kv = tp2.memory.as_ref().unwrap().kv_tokens as usize;
    assert_eq!(tp2.prediction.unwrap().running, kv / (q.input_len + q.output_len));
}

#[test]
fn tensor_parallelism_across_nodes_pays_for_the_slower_link() {
    let (model, hw) = (PlanModel::open("llama-3.1-70b").unwrap(), Hardware::load("h100-sxm").unwrap());
    let p = plan(&model, &hw, &question(16, 2, Load::Concurrency(64))).unwrap();
    let (tp16, tp8_pp2) = (find(&p.layouts, 16, 1), find(&p.layouts, 8, 2));
    assert!(tp16.fits && tp8_pp2.fits);
    assert!(
        tp8_pp2.output_tok_s > tp16.output_tok_s,
        "TP 16 all-reduces over InfiniBand every layer: {} vs {}",
        tp16.output_tok_s,
        tp8_pp2.output_tok_s
    );
}

#[test]
fn uneven_tensor_parallel_degrees_are_planned() {
    let (model, hw) = (PlanModel::open("llama-3.1-8b").unwrap(), Hardware::load("l4").unwrap());
    let p = plan(&model, &hw, &question(3, 1, Load::Concurrency(8))).unwrap();
    let tp3 = find(&p.layouts, 3, 1);
    assert!(tp3.fits, "{:?}", tp3.why);
    let weights = &tp3.memory.as_ref().unwrap().weights_per_rank;
    assert!(weights[0] > weights[2], "8 KV heads over 3 ranks: 3, 3, 2 → {weights:?}");
}
