//! The planner's weight bytes per rank equal what the loader holds (what READY reports) at
//! every layout: SmolLM2-135M's Q4_1 GGUF (resolved like `--model smollm2-135m`) and a tiny
//! bf16 checkpoint whose TP slices cut through 32-weight blocks, under every
//! `--quantization`.

use candle_core::DType;
use shardline_model::footprint::LoaderFormats;
use shardline_model::{LoadOptions, ModelSpec, Quantization, ShardPlan};
use shardline_plan::shape::GroupShape;
use shardline_plan::PlanModel;
use shardline_worker::GroupLayout;

const LAYOUTS: [(usize, usize); 7] = [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (1, 3), (2, 2)];

/// Loads every rank of `tp` × `pp` and checks its bytes against the planner's shape.
fn check_layouts(model: &str, quantization: Quantization) {
    let spec = ModelSpec::cpu(model, DType::F32);
    let path = shardline_weights::resolve_model(model).unwrap();
    let src = shardline_weights::open(&path).unwrap();
    let cfg = shardline_model::ModelConfig::from_json(src.config()).unwrap();
    let opts = LoadOptions { quantization, ..LoadOptions::cpu(DType::F32) };
    let formats = LoaderFormats { src: src.as_ref(), opts: &opts };
    for (tp, pp) in LAYOUTS {
        let shape = GroupShape::new(&cfg, tp, pp, &formats).unwrap();
        let layout = GroupLayout::new(tp, pp, cfg.num_layers, None).unwrap();
        for (rank, planned) in shape.ranks.iter().enumerate() {
            let (stage, tp_rank) = (layout.stage_of(rank), layout.tp_rank_of(rank));
            let mut spec = spec.clone();
            spec.options = LoadOptions {
                plan: Some(ShardPlan::new(&cfg, tp_rank, tp).unwrap()),
                layers: Some(layout.layers_of_stage(stage)),
                ..opts.clone()
            };
            let loaded = spec.load().unwrap().weight_bytes() as u64;
            assert_eq!(planned.bytes.total(), loaded, "{model} {quantization}: tp {tp} pp {pp} rank {rank}");
        }
    }
}

#[test]
fn smollm2_weights_per_rank_equal_the_loaded_shards() {
    for q in [Quantization::Auto, Quantization::None] {
        check_layouts("smollm2-135m", q);
    }
    // What `shardline plan --hardware cpu` itself uses for the checkpoint.
    let model = PlanModel::open("smollm2-135m").unwrap();
    let formats = model.formats(true, None);
    let shape = GroupShape::new(&model.cfg, 2, 2, formats.tensors.as_ref()).unwrap();
    assert_eq!(formats.label, "Q4_1 blocks as stored");
    assert!(shape.ranks.iter().all(|r| r.bytes.total() > 20 << 20), "{:?}", shape.ranks);
}

#[test]
fn sixteen_bit_checkpoints_with_slices_through_blocks_match_every_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", 300, false);
    cfg["num_hidden_layers"] = serde_json::json!(3);
    shardline_model::testing::write_tiny_model_as(dir.path(), &cfg, 3, DType::BF16).unwrap();
    let path = dir.path().to_str().unwrap();
    for q in [Quantization::Auto, Quantization::None, Quantization::Q8_0, Quantization::Q4K] {
        check_layouts(path, q);
    }
}
