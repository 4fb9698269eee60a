//! Safetensors directory loading: single and sharded layouts, stored-dtype conversion, slicing,
//! and every error path (each message must name the tensor and the file).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use shardline_weights::{open, Slice, WeightSource, WeightsError};

const CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4}"#;

/// A 6x4 matrix with distinct, exactly representable values (so f16/bf16 round trips are exact).
fn matrix() -> Tensor {
    Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().affine(0.5, -3.0).unwrap().reshape((6, 4)).unwrap()
}

fn write_dir(dir: &Path, files: &[(&str, Vec<(&str, Tensor)>)]) {
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    for (file, tensors) in files {
        let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, dir.join(file)).unwrap();
    }
}

fn write_index(dir: &Path, entries: &[(&str, &str)]) {
    let map: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(n, f)| (n.to_string(), serde_json::Value::from(*f))).collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn load(src: &dyn WeightSource, name: &str, shape: &[usize], slice: Slice) -> Vec<Vec<f32>> {
    src.load(name, shape, &slice, DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap()
}

fn expect_err(r: shardline_weights::Result<Box<dyn WeightSource>>) -> WeightsError {
    match r {
        Ok(s) => panic!("expected an error, opened {}", s.describe()),
        Err(e) => e,
    }
}

#[test]
fn single_file_full_rows_cols() {
    let dir = tempfile::tempdir().unwrap();
    let w = matrix();
    let norm = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
    write_dir(dir.path(), &[("model.safetensors", vec![("a.weight", w.clone()), ("model.norm.weight", norm)])]);
    let src = open(dir.path()).unwrap();
    assert_eq!(src.config()["hidden_size"], 4);
    assert!(src.contains("a.weight") && !src.contains("b.weight"));
    assert!(src.describe().ends_with("model.safetensors"));

    let full = load(src.as_ref(), "a.weight", &[6, 4], Slice::Full);
    assert_eq!(full, w.to_vec2::<f32>().unwrap());
    let rows = load(src.as_ref(), "a.weight", &[6, 4], Slice::Rows(2..5));
    assert_eq!(rows, full[2..5].to_vec());
    let cols = load(src.as_ref(), "a.weight", &[6, 4], Slice::Cols(1..3));
    let want: Vec<Vec<f32>> = full.iter().map(|r| r[1..3].to_vec()).collect();
    assert_eq!(cols, want);

    let n = src.load("model.norm.weight", &[4], &Slice::Rows(1..3), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(n.to_vec1::<f32>().unwrap(), vec![2., 3.]);
}

#[test]
fn half_precision_stored_converts() {
    let dir = tempfile::tempdir().unwrap();
    let w = matrix();
    write_dir(
        dir.path(),
        &[(
            "model.safetensors",
            vec![("h.weight", w.to_dtype(DType::F16).unwrap()), ("b.weight", w.to_dtype(DType::BF16).unwrap())],
        )],
    );
    let src = open(dir.path()).unwrap();
    let want = w.to_vec2::<f32>().unwrap();
    for name in ["h.weight", "b.weight"] {
        assert_eq!(load(src.as_ref(), name, &[6, 4], Slice::Full), want, "{name}");
        let cols = load(src.as_ref(), name, &[6, 4], Slice::Cols(3..4));
        assert_eq!(cols, want.iter().map(|r| vec![r[3]]).collect::<Vec<_>>());
    }
    // And to a half dtype: stored f16 -> bf16.
    let t = src.load("h.weight", &[6, 4], &Slice::Rows(0..1), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    assert_eq!(t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()[0], want[0]);
}

#[test]
fn sharded_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let w = matrix();
    let v = (matrix() * 2.0).unwrap();
    write_dir(
        dir.path(),
        &[
            ("model-00001-of-00002.safetensors", vec![("a.weight", w.clone())]),
            ("model-00002-of-00002.safetensors", vec![("b.weight", v.clone())]),
        ],
    );
    write_index(
        dir.path(),
        &[("a.weight", "model-00001-of-00002.safetensors"), ("b.weight", "model-00002-of-00002.safetensors")],
    );
    let src = open(dir.path()).unwrap();
    assert!(src.contains("a.weight") && src.contains("b.weight"));
    assert_eq!(load(src.as_ref(), "a.weight", &[6, 4], Slice::Full), w.to_vec2::<f32>().unwrap());
    assert_eq!(load(src.as_ref(), "b.weight", &[6, 4], Slice::Rows(4..6)), v.to_vec2::<f32>().unwrap()[4..6].to_vec());
    let err = src.load("c.weight", &[1], &Slice::Full, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("c.weight") && err.contains("model.safetensors.index.json"), "{err}");
}

#[test]
fn missing_tensor_and_wrong_shape_name_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &[("model.safetensors", vec![("a.weight", matrix())])]);
    let src = open(dir.path()).unwrap();

    let err = src.load("lm_head.weight", &[6, 4], &Slice::Full, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, WeightsError::MissingTensor { .. }));
    let msg = err.to_string();
    assert!(msg.contains("lm_head.weight") && msg.contains("model.safetensors"), "{msg}");

    let err = src.load("a.weight", &[4, 6], &Slice::Full, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, WeightsError::ShapeMismatch { .. }));
    let msg = err.to_string();
    assert!(msg.contains("a.weight") && msg.contains("model.safetensors") && msg.contains("[6, 4]"), "{msg}");

    let err = src.load("a.weight", &[6, 4], &Slice::Rows(5..7), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("a.weight") && err.contains("Rows(5..7)"), "{err}");
}

#[test]
fn truncated_file_is_an_error_naming_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &[("model.safetensors", vec![("a.weight", matrix()), ("z.weight", matrix())])]);
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);
    let err = expect_err(open(dir.path()));
    assert!(matches!(err, WeightsError::Truncated { .. }), "{err}");
    let msg = err.to_string();
    // Tensors are laid out sorted by name, so the last one ("z.weight") is cut.
    assert!(msg.contains("z.weight") && msg.contains("model.safetensors"), "{msg}");

    // A file cut inside its header is also a named error.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(20).unwrap();
    drop(f);
    let msg = expect_err(open(dir.path())).to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &[("model.safetensors", vec![("a.weight", matrix())])]);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = expect_err(open(dir.path()));
    assert!(matches!(err, WeightsError::BadConfig { .. }));
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn bad_index_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &[("shard-1.safetensors", vec![("a.weight", matrix())])]);

    // Entry pointing at a shard that does not exist.
    write_index(dir.path(), &[("a.weight", "shard-1.safetensors"), ("b.weight", "shard-9.safetensors")]);
    let msg = expect_err(open(dir.path())).to_string();
    assert!(msg.contains("b.weight") && msg.contains("shard-9.safetensors") && msg.contains("index.json"), "{msg}");

    // Entry pointing at a shard that lacks the tensor.
    write_index(dir.path(), &[("a.weight", "shard-1.safetensors"), ("c.weight", "shard-1.safetensors")]);
    let msg = expect_err(open(dir.path())).to_string();
    assert!(msg.contains("c.weight") && msg.contains("shard-1.safetensors"), "{msg}");

    // Entry escaping the model directory.
    write_index(dir.path(), &[("a.weight", "../shard-1.safetensors")]);
    let msg = expect_err(open(dir.path())).to_string();
    assert!(msg.contains("a.weight") && msg.contains("../shard-1.safetensors"), "{msg}");
}

#[test]
fn unsupported_stored_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ids = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    write_dir(dir.path(), &[("model.safetensors", vec![("ids", ids)])]);
    let src = open(dir.path()).unwrap();
    let err = src.load("ids", &[3], &Slice::Full, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedDtype { .. }));
    let msg = err.to_string();
    assert!(msg.contains("ids") && msg.contains("U32") && msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn not_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    let msg = expect_err(open(dir.path())).to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    let msg = expect_err(open(&dir.path().join("nope.gguf"))).to_string();
    assert!(msg.contains("nope.gguf"), "{msg}");
}
