//! Writes a model (any source Shardline loads: a GGUF, an HF directory) as an HF directory of
//! one dtype: `config.json` and `model.safetensors`, under HF tensor names, rows in HF order. A
//! dev tool, for example to measure a bf16 checkpoint of the default model:
//!
//!   cargo run --release -p shardline --example export_safetensors -- smollm2-135m /tmp/smollm2-bf16 bf16
//!
//! The tokenizer goes along (`tokenizer.json` and its config, from a GGUF's metadata too).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use shardline_model::testing::tensor_specs;
use shardline_model::ModelConfig;
use shardline_weights::{resolve_model, Slice};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out, dtype] = args.as_slice() else {
        eprintln!("usage: export_safetensors MODEL OUT_DIR f32|bf16|f16");
        std::process::exit(2);
    };
    let dtype = match dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => panic!("unknown dtype {other}"),
    };
    let path = resolve_model(model).expect("model resolves");
    let src = shardline_weights::open(&path).expect("model opens");
    let cfg = ModelConfig::from_json(src.config()).expect("config parses");
    let mut tensors = HashMap::new();
    for (name, shape) in tensor_specs(&cfg) {
        if !src.contains(&name) {
            continue; // a tied LM head
        }
        let t = src.load(&name, &shape, &Slice::Full, dtype, &Device::Cpu).expect("tensor loads");
        tensors.insert(name, t);
    }
    let out = Path::new(out);
    std::fs::create_dir_all(out).expect("output directory");
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(src.config()).unwrap()).unwrap();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).expect("safetensors written");
    shardline_tokenizer::Tokenizer::from_path(&path).and_then(|t| t.save_hf_dir(out)).expect("tokenizer written");
    println!("{} tensors as {dtype:?} in {}", tensors.len(), out.display());
}
