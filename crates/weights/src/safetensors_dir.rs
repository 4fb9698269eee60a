//! HF model directories: `config.json` plus either one `model.safetensors` or a sharded set
//! described by `model.safetensors.index.json`. Every shard is memory-mapped and its header is
//! validated against the file length at open, so a truncated download is a named error instead
//! of a SIGBUS halfway through loading.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{Result, WeightsError};
use crate::source::{check_shape, release_pages, slice_bytes, Slice, WeightSource};

pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor's header entry, with offsets already made absolute within the mapping.
#[derive(Debug)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One memory-mapped `.safetensors` file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    tensors: HashMap<String, Entry>,
}

/// A weight source backed by an HF directory of safetensors files.
pub struct SafetensorsDir {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    locations: HashMap<String, usize>,
    /// What `MissingTensor` reports as searched: the single file or the index.
    searched: String,
}

/// Size in bytes of one element of a safetensors dtype, `None` for dtypes we do not know.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Maps a stored safetensors dtype to the candle dtype we read it as; only float formats a
/// Llama checkpoint actually uses are accepted.
fn candle_dtype(dtype: &str) -> Option<DType> {
    match dtype {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
        // SAFETY: the mapping is read-only; a file modified underneath us is a user error we
        // cannot guard against, but truncation *before* open is caught by the checks below.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
        let tensors = parse_header(path, &mmap)?;
        Ok(Shard { path: path.to_path_buf(), mmap, tensors })
    }
}

/// Parses and validates a safetensors header: every tensor's byte range must match its shape
/// and dtype and lie inside the file.
fn parse_header(path: &Path, data: &[u8]) -> Result<HashMap<String, Entry>> {
    let bad = |reason: String| WeightsError::BadHeader { file: path.to_path_buf(), reason };
    let len = data.len();
    if len < 8 {
        return Err(bad(format!("file is {len} bytes, too short for the 8-byte header length")));
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    let data_start = n
        .checked_add(8)
        .filter(|&end| end <= len)
        .ok_or_else(|| bad(format!("header length {n} exceeds file length {len}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&data[8..data_start]).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;

    let mut tensors = HashMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().ok_or_else(|| bad(format!("tensor `{name}` has no dtype")))?.to_string();
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone())
            .map_err(|e| bad(format!("tensor `{name}` has an invalid shape: {e}")))?;
        let offsets: [usize; 2] = serde_json::from_value(info["data_offsets"].clone())
            .map_err(|e| bad(format!("tensor `{name}` has invalid data_offsets: {e}")))?;
        let [s, e] = offsets;
        if e < s {
            return Err(bad(format!("tensor `{name}` has data_offsets end {e} < start {s}")));
        }
        if let Some(size) = dtype_size(&dtype) {
            let expected = shape.iter().product::<usize>() * size;
            if e - s != expected {
                return Err(bad(format!(
                    "tensor `{name}` spans {} bytes but shape {shape:?} of {dtype} needs {expected}",
                    e - s
                )));
            }
        }
        let end = data_start.saturating_add(e);
        if end > len {
            return Err(WeightsError::Truncated {
                name,
                file: path.display().to_string(),
                needed: end as u64,
                len: len as u64,
            });
        }
        tensors.insert(name, Entry { dtype, shape, start: data_start + s, end });
    }
    Ok(tensors)
}

/// Reads and parses `config.json` in `dir`.
pub(crate) fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| WeightsError::BadConfig { file: path.clone(), reason: format!("cannot read: {e}") })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| WeightsError::BadConfig { file: path.clone(), reason: format!("invalid JSON: {e}") })?;
    if !value.is_object() {
        return Err(WeightsError::BadConfig { file: path, reason: "top level is not a JSON object".to_string() });
    }
    Ok(value)
}

impl SafetensorsDir {
    /// Opens an HF directory; see the module docs for the expected layout.
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let config = read_config(dir)?;
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let (shards, locations, searched) = if index_path.is_file() {
            open_sharded(dir, &index_path)?
        } else if single_path.is_file() {
            let shard = Shard::open(&single_path)?;
            let locations = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
            (vec![shard], locations, single_path.display().to_string())
        } else {
            return Err(WeightsError::UnknownFormat { path: dir.to_path_buf() });
        };
        tracing::debug!(dir = %dir.display(), shards = shards.len(), tensors = locations.len(), "opened safetensors directory");
        Ok(SafetensorsDir { dir: dir.to_path_buf(), config, shards, locations, searched })
    }
}

type Opened = (Vec<Shard>, HashMap<String, usize>, String);

/// Opens every shard named by the index and checks each `weight_map` entry points at a shard
/// that really holds that tensor.
fn open_sharded(dir: &Path, index_path: &Path) -> Result<Opened> {
    let bad = |reason: String| WeightsError::BadIndex { file: index_path.to_path_buf(), reason };
    let bytes = std::fs::read(index_path).map_err(|e| WeightsError::io(index_path, e))?;
    let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = index["weight_map"].as_object().ok_or_else(|| bad("no `weight_map` object".to_string()))?;

    let mut shards: Vec<Shard> = Vec::new();
    let mut by_file: HashMap<String, usize> = HashMap::new();
    let mut locations = HashMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("entry for tensor `{name}` is not a string")))?;
        // Shards must be siblings of the index; anything else is a malformed or hostile index.
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "tensor `{name}` maps to `{file}`, which is not a file name in {}",
                dir.display()
            )));
        }
        let idx = match by_file.get(file) {
            Some(&i) => i,
            None => {
                let path = dir.join(file);
                if !path.is_file() {
                    return Err(bad(format!(
                        "tensor `{name}` maps to shard file {} which does not exist",
                        path.display()
                    )));
                }
                shards.push(Shard::open(&path)?);
                by_file.insert(file.to_string(), shards.len() - 1);
                shards.len() - 1
            }
        };
        if !shards[idx].tensors.contains_key(name) {
            return Err(bad(format!(
                "tensor `{name}` maps to {} but that file has no such tensor",
                shards[idx].path.display()
            )));
        }
        locations.insert(name.clone(), idx);
    }
    Ok((shards, locations, index_path.display().to_string()))
}

impl WeightSource for SafetensorsDir {
    fn config(&self) -> &serde_json::Value {
        &self.config
    }

    fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    fn load(&self, name: &str, full_shape: &[usize], slice: &Slice, dtype: DType, device: &Device) -> Result<Tensor> {
        let shard = match self.locations.get(name) {
            Some(&i) => &self.shards[i],
            None => return Err(WeightsError::MissingTensor { name: name.to_string(), file: self.searched.clone() }),
        };
        let file = shard.path.display().to_string();
        let entry = &shard.tensors[name];
        check_shape(name, &file, full_shape, &entry.shape)?;
        let stored = candle_dtype(&entry.dtype).ok_or_else(|| WeightsError::UnsupportedDtype {
            name: name.to_string(),
            file: file.clone(),
            dtype: entry.dtype.clone(),
        })?;
        let out_shape = slice.output_shape(&entry.shape, name, &file)?;
        // Re-checked here (not just at open) because it is what keeps the slicing below in bounds.
        if entry.end > shard.mmap.len() {
            return Err(WeightsError::Truncated {
                name: name.to_string(),
                file,
                needed: entry.end as u64,
                len: shard.mmap.len() as u64,
            });
        }
        let data = &shard.mmap[entry.start..entry.end];
        let bytes = slice_bytes(data, &entry.shape, stored.size_in_bytes(), slice);
        // Upload in the stored dtype and convert on the device: half the transfer for 16-bit
        // checkpoints and the conversion runs where the compute is.
        let t = Tensor::from_raw_buffer(&bytes, stored, &out_shape, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| WeightsError::candle(name, &file, e));
        // The tensor is a copy: the file's pages need not stay resident as well.
        release_pages(&shard.mmap, entry.start..entry.end);
        t
    }

    fn stored_dtype(&self, name: &str) -> Option<DType> {
        let &i = self.locations.get(name)?;
        candle_dtype(&self.shards[i].tensors.get(name)?.dtype)
    }

    fn describe(&self) -> String {
        if self.shards.len() == 1 {
            self.shards[0].path.display().to_string()
        } else {
            format!("{} ({} shards)", self.dir.display(), self.shards.len())
        }
    }
}
