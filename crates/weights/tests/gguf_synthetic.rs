//! GGUF loading against small files written with candle's GGUF writer: name mapping, config
//! synthesis, q/k un-permutation, row/column slicing of quantized tensors, and error paths.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use shardline_weights::{open, Slice, WeightSource, WeightsError};

const N_HEAD: usize = 4;
const N_KV: usize = 2;
const HEAD_DIM: usize = 8;
const HIDDEN: usize = N_HEAD * HEAD_DIM; // 32 = one Q8_0/Q4_0 block per row
const FFN: usize = 64;

/// Distinct values so any row mix-up is visible: element (r, c) = r + c / 100.
fn hf_matrix(rows: usize, cols: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * cols).map(|i| (i / cols) as f32 + (i % cols) as f32 / 100.0).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// llama.cpp's converter permutation, applied literally:
/// `w.reshape(n_head, 2, dim/n_head/2, *rest).swapaxes(1, 2).reshape(w.shape)`.
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    q_hf: Tensor,
    k_hf: Tensor,
    down: Tensor,
}

fn write_gguf(path: &Path, arch: &str, tensors: &[(&str, QTensor)], with_output: bool) {
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(FFN as u32)),
        (format!("{arch}.block_count"), Value::U32(1)),
        (format!("{arch}.attention.head_count"), Value::U32(N_HEAD as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(N_KV as u32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (format!("{arch}.context_length"), Value::U32(256)),
        (format!("{arch}.rope.scaling.type"), Value::String("linear".into())),
        (format!("{arch}.rope.scaling.factor"), Value::F32(2.0)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(7)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(8)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let out;
    if with_output {
        out = QTensor::quantize(&hf_matrix(16, HIDDEN), GgmlDType::F32).unwrap();
        ts.push(("output.weight", &out));
    }
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &ts).unwrap();
}

fn fixture(arch: &str, with_output: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let q_hf = hf_matrix(N_HEAD * HEAD_DIM, HIDDEN);
    let k_hf = (hf_matrix(N_KV * HEAD_DIM, HIDDEN) * -1.0).unwrap();
    let (q_file, k_file) = if arch == "qwen2" {
        (q_hf.clone(), k_hf.clone())
    } else {
        (llama_cpp_permute(&q_hf, N_HEAD), llama_cpp_permute(&k_hf, N_KV))
    };
    let down = (hf_matrix(HIDDEN, FFN).sin().unwrap() * 0.5).unwrap();
    let f32q = |t: &Tensor| QTensor::quantize(t, GgmlDType::F32).unwrap();
    let tensors = vec![
        ("token_embd.weight", QTensor::quantize(&hf_matrix(16, HIDDEN).cos().unwrap(), GgmlDType::Q4_0).unwrap()),
        ("output_norm.weight", f32q(&Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap())),
        ("blk.0.attn_q.weight", f32q(&q_file)),
        ("blk.0.attn_k.weight", f32q(&k_file)),
        ("blk.0.ffn_down.weight", QTensor::quantize(&down, GgmlDType::Q8_0).unwrap()),
    ];
    write_gguf(&path, arch, &tensors, with_output);
    Fixture { _dir: dir, path, q_hf, k_hf, down }
}

fn load2(src: &dyn WeightSource, name: &str, shape: &[usize], slice: Slice) -> Vec<Vec<f32>> {
    src.load(name, shape, &slice, DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn config_is_synthesized_from_metadata() {
    let fx = fixture("llama", false);
    let src = open(&fx.path).unwrap();
    let c = src.config();
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], FFN);
    assert_eq!(c["num_hidden_layers"], 1);
    assert_eq!(c["num_attention_heads"], N_HEAD);
    assert_eq!(c["num_key_value_heads"], N_KV);
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["rope_theta"], 10000.0);
    assert!((c["rms_norm_eps"].as_f64().unwrap() - 1e-6).abs() < 1e-12);
    // No tokenizer in the file: vocab comes from token_embd rows.
    assert_eq!(c["vocab_size"], 16);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rope_scaling"]["type"], "linear");
    assert_eq!(c["rope_scaling"]["factor"], 2.0);
    assert_eq!((c["bos_token_id"].as_u64(), c["eos_token_id"].as_u64()), (Some(7), Some(8)));
    assert!(!src.contains("lm_head.weight"));
    assert!(src.contains("model.embed_tokens.weight") && src.contains("model.norm.weight"));

    let fx = fixture("qwen2", true);
    let src = open(&fx.path).unwrap();
    assert_eq!(src.config()["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(src.config()["tie_word_embeddings"], false);
    assert!(src.contains("lm_head.weight"));
}

#[test]
fn llama_q_and_k_are_unpermuted_to_hf_layout() {
    let fx = fixture("llama", false);
    let src = open(&fx.path).unwrap();
    let q = load2(src.as_ref(), "model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN], Slice::Full);
    assert_eq!(q, fx.q_hf.to_vec2::<f32>().unwrap());
    let k = load2(src.as_ref(), "model.layers.0.self_attn.k_proj.weight", &[N_KV * HEAD_DIM, HIDDEN], Slice::Full);
    assert_eq!(k, fx.k_hf.to_vec2::<f32>().unwrap());

    // A whole-head Rows slice equals the same rows of the HF tensor.
    let r = 2 * HEAD_DIM..4 * HEAD_DIM;
    let q_part =
        load2(src.as_ref(), "model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN], Slice::Rows(r.clone()));
    assert_eq!(q_part, q[r].to_vec());
    let k_part = load2(
        src.as_ref(),
        "model.layers.0.self_attn.k_proj.weight",
        &[N_KV * HEAD_DIM, HIDDEN],
        Slice::Rows(HEAD_DIM..2 * HEAD_DIM),
    );
    assert_eq!(k_part, k[HEAD_DIM..].to_vec());
    let q_cols = load2(src.as_ref(), "model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN], Slice::Cols(3..9));
    assert_eq!(q_cols, q.iter().map(|r| r[3..9].to_vec()).collect::<Vec<_>>());

    // A slice that splits a head cannot be un-permuted and is rejected, naming the tensor.
    let err = src
        .load(
            "model.layers.0.self_attn.q_proj.weight",
            &[HIDDEN, HIDDEN],
            &Slice::Rows(4..12),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj") && err.contains("tiny.gguf"), "{err}");
}

#[test]
fn qwen2_q_is_not_permuted() {
    let fx = fixture("qwen2", true);
    let src = open(&fx.path).unwrap();
    let q = load2(src.as_ref(), "model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN], Slice::Full);
    assert_eq!(q, fx.q_hf.to_vec2::<f32>().unwrap());
}

#[test]
fn quantized_slices_equal_slices_of_full() {
    let fx = fixture("llama", false);
    let src = open(&fx.path).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    let full = load2(src.as_ref(), name, &[HIDDEN, FFN], Slice::Full);
    // Q8_0 is close to the original values.
    let orig = fx.down.to_vec2::<f32>().unwrap();
    let max_err = full.iter().flatten().zip(orig.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_err < 0.01, "Q8_0 dequantization error {max_err}");

    assert_eq!(load2(src.as_ref(), name, &[HIDDEN, FFN], Slice::Rows(5..17)), full[5..17].to_vec());
    // Column ranges inside one block and straddling the block boundary at 32.
    for c in [0..32, 3..9, 20..45, 40..64] {
        let got = load2(src.as_ref(), name, &[HIDDEN, FFN], Slice::Cols(c.clone()));
        assert_eq!(got, full.iter().map(|r| r[c.clone()].to_vec()).collect::<Vec<_>>(), "{c:?}");
    }

    let emb = load2(src.as_ref(), "model.embed_tokens.weight", &[16, HIDDEN], Slice::Full);
    assert_eq!(load2(src.as_ref(), "model.embed_tokens.weight", &[16, HIDDEN], Slice::Rows(8..16)), emb[8..].to_vec());

    let norm = src.load("model.norm.weight", &[HIDDEN], &Slice::Rows(0..4), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(norm.dtype(), DType::BF16);
    assert_eq!(norm.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 4]);
}

#[test]
fn errors_name_tensor_and_file() {
    let fx = fixture("llama", false);
    let src = open(&fx.path).unwrap();
    let err = src.load("lm_head.weight", &[16, HIDDEN], &Slice::Full, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, WeightsError::MissingTensor { .. }));
    let msg = err.to_string();
    assert!(msg.contains("lm_head.weight") && msg.contains("output.weight") && msg.contains("tiny.gguf"), "{msg}");

    let msg = src
        .load("model.layers.0.mlp.down_proj.weight", &[FFN, HIDDEN], &Slice::Full, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("down_proj") && msg.contains("tiny.gguf") && msg.contains("[32, 64]"), "{msg}");

    // Truncating the data section is caught at open, naming the cut tensor.
    let len = std::fs::metadata(&fx.path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&fx.path).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let err = match open(&fx.path) {
        Ok(_) => panic!("truncated GGUF opened"),
        Err(e) => e,
    };
    assert!(matches!(err, WeightsError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("tiny.gguf"), "{err}");
}

#[test]
fn unsupported_ggml_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q81.gguf");
    let q81 = QTensor::quantize(&hf_matrix(2, HIDDEN), GgmlDType::Q8_1).unwrap();
    let emb = QTensor::quantize(&hf_matrix(16, HIDDEN), GgmlDType::F32).unwrap();
    write_gguf(&path, "llama", &[("token_embd.weight", emb), ("blk.0.ffn_up.weight", q81)], false);
    let src = open(&path).unwrap();
    let err = src
        .load("model.layers.0.mlp.up_proj.weight", &[2, HIDDEN], &Slice::Full, DType::F32, &Device::Cpu)
        .unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedDtype { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("up_proj") && msg.contains("Q8_1") && msg.contains("q81.gguf"), "{msg}");
}

/// Blocks kept as stored decode to exactly what `load` dequantizes, for whole tensors, row
/// slices (q rows un-permuted) and block-aligned column slices; unaligned or unquantized ones
/// are not offered.
#[test]
fn raw_blocks_equal_dequantized_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.gguf");
    let q_file = llama_cpp_permute(&hf_matrix(N_HEAD * HEAD_DIM, HIDDEN), N_HEAD);
    let down = (hf_matrix(HIDDEN, FFN).sin().unwrap() * 0.5).unwrap();
    let tensors = vec![
        ("token_embd.weight", QTensor::quantize(&hf_matrix(16, HIDDEN), GgmlDType::F32).unwrap()),
        (
            "output_norm.weight",
            QTensor::quantize(&Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap(),
        ),
        ("blk.0.attn_q.weight", QTensor::quantize(&q_file, GgmlDType::Q8_0).unwrap()),
        ("blk.0.ffn_down.weight", QTensor::quantize(&down, GgmlDType::Q4_1).unwrap()),
    ];
    write_gguf(&path, "llama", &tensors, false);
    let src = open(&path).unwrap();
    let decode = |b: &shardline_weights::RawBlocks| {
        // A fresh allocation: candle reads the bytes as blocks, which a slice of the mapping
        // need not be aligned for.
        let bytes = b.bytes.as_slice().to_vec();
        candle_core::quantized::ggml_file::qtensor_from_ggml(b.dtype, &bytes, vec![b.rows, b.cols], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let q = "model.layers.0.self_attn.q_proj.weight";
    for slice in [Slice::Full, Slice::Rows(HEAD_DIM..3 * HEAD_DIM)] {
        let blocks = src.load_blocks(q, &[HIDDEN, HIDDEN], &slice).unwrap().expect("Q8_0 rows are offered");
        assert_eq!(blocks.dtype, GgmlDType::Q8_0);
        assert!(matches!(blocks.bytes, shardline_weights::BlockBytes::Owned(_)), "un-permuted rows are copies");
        assert_eq!(decode(&blocks), load2(src.as_ref(), q, &[HIDDEN, HIDDEN], slice.clone()), "{slice}");
    }
    let d = "model.layers.0.mlp.down_proj.weight";
    for slice in [Slice::Full, Slice::Rows(5..17), Slice::Cols(32..64)] {
        let blocks = src.load_blocks(d, &[HIDDEN, FFN], &slice).unwrap().expect("whole Q4_1 blocks");
        assert_eq!(decode(&blocks), load2(src.as_ref(), d, &[HIDDEN, FFN], slice.clone()), "{slice}");
        // Whole rows in file order stay in the mapping; column slices are gathered.
        let mapped = matches!(blocks.bytes, shardline_weights::BlockBytes::Mapped { .. });
        assert_eq!(mapped, !matches!(slice, Slice::Cols(_)), "{slice}");
    }
    assert!(src.load_blocks(d, &[HIDDEN, FFN], &Slice::Cols(16..48)).unwrap().is_none(), "splits a block");
    assert!(src.load_blocks(q, &[HIDDEN, HIDDEN], &Slice::Rows(4..12)).unwrap().is_none(), "splits a head");
    assert!(src.load_blocks("model.embed_tokens.weight", &[16, HIDDEN], &Slice::Full).unwrap().is_none(), "F32");
}
