//! Invariants of the batched forward pass on tiny random models written to disk in-test:
//! KV-cached decoding equals recomputation, a ragged batch equals each sequence alone, and the
//! candle path (f16/bf16) tracks the f32 kernel path.

use candle_core::DType;
use shardline_model::testing::{tiny_config, write_tiny_model, write_tiny_model_as};
use shardline_model::{BatchInput, KvCache, Llama, LoadOptions, ModelError, Quantization, SeqInput, SingleRank};

const BLOCK: usize = 4;
const BLOCKS: usize = 64;

fn load(arch: &str, tied: bool, dtype: DType) -> (tempfile::TempDir, Llama) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(arch, 300, tied), 7).unwrap();
    let src = shardline_weights::open(dir.path()).unwrap();
    let model = Llama::load(src.as_ref(), &LoadOptions::cpu(dtype)).unwrap();
    (dir, model)
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + salt * 11 + 5) % 300).collect()
}

/// Blocks for sequence `seq`, deliberately interleaved and out of order.
fn table(seq: u32, n_blocks: usize) -> Vec<u32> {
    (0..n_blocks as u32).rev().map(|b| b * 4 + seq).collect()
}

fn step(model: &Llama, cache: &mut KvCache, seqs: Vec<SeqInput>) -> Vec<Vec<f32>> {
    let batch = BatchInput::new(seqs, BLOCK, BLOCKS).unwrap();
    model.forward(&batch, cache, &SingleRank).unwrap().to_vec2().unwrap()
}

fn seq(tokens: Vec<u32>, cached_len: usize, block_table: Vec<u32>) -> SeqInput {
    SeqInput { tokens, cached_len, block_table, wants_logits: true }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits after each prefix of `toks`, each computed from scratch in a fresh cache.
fn recomputed(model: &Llama, toks: &[u32]) -> Vec<Vec<f32>> {
    (1..=toks.len())
        .map(|n| {
            let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
            step(model, &mut cache, vec![seq(toks[..n].to_vec(), 0, table(0, 8))]).remove(0)
        })
        .collect()
}

fn check_cached_decode_matches_recompute(arch: &str, tied: bool) {
    let (_d, model) = load(arch, tied, DType::F32);
    let toks = tokens(13, 1);
    let full = recomputed(&model, &toks);
    let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
    // Prefill 5 tokens, then one token per step.
    let mut got = vec![step(&model, &mut cache, vec![seq(toks[..5].to_vec(), 0, table(0, 8))]).remove(0)];
    for (i, &t) in toks.iter().enumerate().skip(5) {
        got.push(step(&model, &mut cache, vec![seq(vec![t], i, table(0, 8))]).remove(0));
    }
    for (k, g) in got.iter().enumerate() {
        let d = max_diff(g, &full[4 + k]);
        assert!(d < 1e-4, "{arch}: position {} differs by {d}", 4 + k);
    }
}

#[test]
fn cached_decode_equals_recompute_llama() {
    check_cached_decode_matches_recompute("LlamaForCausalLM", false);
}

#[test]
fn cached_decode_equals_recompute_qwen2_bias_tied() {
    check_cached_decode_matches_recompute("Qwen2ForCausalLM", true);
}

/// With block weights every kernel treats each row alone, so a sequence recomputed from scratch
/// (as after a preemption or a rank's recovery) gives the logits cached decoding gave, bit for
/// bit, including spans of 32+ rows; seeded sampling relies on it to resume unchanged.
#[test]
fn block_weights_make_cached_decode_and_recompute_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config("LlamaForCausalLM", 300, false), 7).unwrap();
    let src = shardline_weights::open(dir.path()).unwrap();
    let opts = LoadOptions { quantization: Quantization::Q8_0, ..LoadOptions::cpu(DType::F32) };
    let model = Llama::load(src.as_ref(), &opts).unwrap();
    assert!(model.weight_formats().contains("Q8_0"), "{}", model.weight_formats());
    let toks = tokens(40, 3);
    let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
    let mut decoded = vec![step(&model, &mut cache, vec![seq(toks[..3].to_vec(), 0, table(0, 12))]).remove(0)];
    for (i, &t) in toks.iter().enumerate().skip(3) {
        decoded.push(step(&model, &mut cache, vec![seq(vec![t], i, table(0, 12))]).remove(0));
    }
    for n in [3, 20, 33, 40] {
        let mut fresh = model.new_cache(BLOCKS, BLOCK).unwrap();
        let again = step(&model, &mut fresh, vec![seq(toks[..n].to_vec(), 0, table(1, 12))]).remove(0);
        assert_eq!(again, decoded[n - 3], "{n} tokens recomputed");
    }
}

/// A bf16 or f16 checkpoint stays 16-bit by default (`--quantization auto`) and gives the
/// logits of the same weights widened to f32 (`none`), up to the order of the sums.
#[test]
fn sixteen_bit_checkpoints_stay_sixteen_bit_and_match_f32() {
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_as(dir.path(), &tiny_config("LlamaForCausalLM", 300, false), 7, dtype).unwrap();
        let src = shardline_weights::open(dir.path()).unwrap();
        let kept = Llama::load(src.as_ref(), &LoadOptions::cpu(DType::F32)).unwrap();
        let none = LoadOptions { quantization: Quantization::None, ..LoadOptions::cpu(DType::F32) };
        let widened = Llama::load(src.as_ref(), &none).unwrap();
        assert!(kept.weight_formats().contains(name), "{}", kept.weight_formats());
        assert!(!widened.weight_formats().contains(name), "{}", widened.weight_formats());
        let toks = tokens(9, 2);
        let run = |m: &Llama| {
            let mut cache = m.new_cache(BLOCKS, BLOCK).unwrap();
            step(m, &mut cache, vec![seq(toks.clone(), 0, table(0, 4))]).remove(0)
        };
        let d = max_diff(&run(&kept), &run(&widened));
        assert!(d < 1e-4, "{name}: {d}");
    }
}

#[test]
fn ragged_batch_equals_each_sequence_alone() {
    let (_d, model) = load("MistralForCausalLM", false, DType::F32);
    let (a, b, c) = (tokens(9, 1), tokens(3, 2), tokens(6, 3));
    let alone = |t: &[u32]| recomputed(&model, t).pop().unwrap();
    let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
    // Step 1: three prompts of different lengths in one pass.
    let out = step(
        &model,
        &mut cache,
        vec![
            seq(a[..8].to_vec(), 0, table(1, 4)),
            seq(b.clone(), 0, table(2, 4)),
            seq(c[..6].to_vec(), 0, table(3, 4)),
        ],
    );
    assert!(max_diff(&out[1], &alone(&b)) < 1e-4);
    assert!(max_diff(&out[2], &alone(&c)) < 1e-4);
    // Step 2: a decode for `a` mixed with a fresh prefill of `b` extended (as a new sequence)
    // and a sequence that wants no logits (a prompt chunk).
    let b2 = tokens(5, 4);
    let batch = vec![
        seq(vec![a[8]], 8, table(1, 4)),
        SeqInput { tokens: b2[..3].to_vec(), cached_len: 0, block_table: vec![60, 61], wants_logits: false },
        seq(b2.clone(), 0, vec![62, 63]),
    ];
    let out = step(&model, &mut cache, batch);
    assert_eq!(out.len(), 2, "one logits row per sequence that asked");
    assert!(max_diff(&out[0], &alone(&a)) < 1e-4);
    assert!(max_diff(&out[1], &alone(&b2)) < 1e-4);
}

#[test]
fn half_precision_candle_path_tracks_f32_kernels() {
    let toks = tokens(10, 5);
    let (_d, reference) = load("LlamaForCausalLM", false, DType::F32);
    let want = recomputed(&reference, &toks);
    for dtype in [DType::F16, DType::BF16] {
        let (_d, model) = load("LlamaForCausalLM", false, dtype);
        let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
        let mut got = vec![step(&model, &mut cache, vec![seq(toks[..6].to_vec(), 0, table(0, 4))]).remove(0)];
        for (i, &t) in toks.iter().enumerate().skip(6) {
            got.push(step(&model, &mut cache, vec![seq(vec![t], i, table(0, 4))]).remove(0));
        }
        for (k, g) in got.iter().enumerate() {
            let d = max_diff(g, &want[5 + k]);
            assert!(d < 0.1, "{dtype:?} position {} differs by {d}", 5 + k);
        }
    }
}

#[test]
fn batch_errors_are_clear() {
    let (_d, model) = load("LlamaForCausalLM", false, DType::F32);
    let short = BatchInput::new(vec![seq(tokens(9, 0), 0, vec![0, 1])], BLOCK, BLOCKS).unwrap_err();
    assert!(short.to_string().contains("needs 9 KV positions"), "{short}");
    let oob = BatchInput::new(vec![seq(tokens(2, 0), 0, vec![BLOCKS as u32])], BLOCK, BLOCKS).unwrap_err();
    assert!(oob.to_string().contains("KV block 64"), "{oob}");
    let mut cache = model.new_cache(BLOCKS, BLOCK).unwrap();
    let batch = BatchInput::new(vec![seq(vec![299, 300], 0, vec![0])], BLOCK, BLOCKS).unwrap();
    let err = model.forward(&batch, &mut cache, &SingleRank).unwrap_err();
    assert!(matches!(err, ModelError::Batch(_)) && err.to_string().contains("300"), "{err}");
}

#[test]
fn unsupported_architecture_and_missing_tensor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config("LlamaForCausalLM", 300, false);
    write_tiny_model(dir.path(), &cfg, 1).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let src = shardline_weights::open(dir.path()).unwrap();
    let err = Llama::load(src.as_ref(), &LoadOptions::cpu(DType::F32)).err().unwrap();
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");

    // A config promising more layers than the file holds.
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["num_hidden_layers"] = serde_json::json!(3);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let src = shardline_weights::open(dir.path()).unwrap();
    let err = Llama::load(src.as_ref(), &LoadOptions::cpu(DType::F32)).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("model.layers.2") && msg.contains("model.safetensors"), "{msg}");
}
