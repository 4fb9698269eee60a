//! GGUF files (llama.cpp format): metadata and tensor directory parsed with candle's
//! `gguf_file`, tensor bytes read from our own memory mapping so a rank dequantizes only the
//! rows (or per-row block ranges) it needs. HF names are mapped to GGUF names and llama.cpp's
//! q/k row permutation is undone so callers always see the HF layout.

mod config;
mod names;
mod permute;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file, gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{Result, WeightsError};
use crate::source::{check_shape, release_pages, BlockBytes, RawBlocks, Slice, WeightSource};
use names::{hf_to_gguf, RopeProj};

/// One tensor's location and format inside the mapping.
struct Info {
    dtype: GgmlDType,
    /// PyTorch order ([out, in] for matrices); candle already reversed GGUF's dims.
    dims: Vec<usize>,
    /// Absolute byte offset of the tensor data in the file.
    start: usize,
}

/// A weight source backed by one memory-mapped GGUF file.
pub struct GgufSource {
    path: PathBuf,
    mmap: std::sync::Arc<Mmap>,
    config: serde_json::Value,
    tensors: HashMap<String, Info>,
    rope_permuted: bool,
    n_head: usize,
    n_kv_head: usize,
}

/// Dtypes `ggml_file::qtensor_from_ggml` can build a `QTensor` from.
fn supported(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

impl GgufSource {
    /// Opens and validates a GGUF file: every tensor's byte range must lie inside the file.
    pub fn open(path: &Path) -> Result<GgufSource> {
        let bad = |reason: String| WeightsError::BadGguf { file: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
        // SAFETY: read-only mapping; offsets are validated against its length below.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
        let content = gguf_file::Content::read(&mut std::io::Cursor::new(&mmap[..]))
            .map_err(|e| bad(format!("cannot parse header: {e}")))?;
        let arch = config::arch(path, &content.metadata)?;
        let config = config::synthesize(path, &arch, &content.metadata, &content.tensor_infos)?;

        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, ti) in &content.tensor_infos {
            let dims = ti.shape.dims().to_vec();
            let elems: usize = dims.iter().product();
            let bs = ti.ggml_dtype.block_size();
            let start = content.tensor_data_offset as usize + ti.offset as usize;
            let end = start.saturating_add(elems / bs * ti.ggml_dtype.type_size());
            if end > mmap.len() {
                return Err(WeightsError::Truncated {
                    name: name.clone(),
                    file: path.display().to_string(),
                    needed: end as u64,
                    len: mmap.len() as u64,
                });
            }
            // Row-wise dequantization relies on every row being whole blocks.
            if dims.last().is_some_and(|&c| c % bs != 0) {
                return Err(bad(format!(
                    "tensor `{name}` has rows of {} elements, not a multiple of the {:?} block size {bs}",
                    dims.last().unwrap_or(&0),
                    ti.ggml_dtype
                )));
            }
            tensors.insert(name.clone(), Info { dtype: ti.ggml_dtype, dims, start });
        }
        let n_head = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let n_kv_head = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        tracing::debug!(file = %path.display(), arch = %arch.name, tensors = tensors.len(), "opened GGUF");
        Ok(GgufSource {
            path: path.to_path_buf(),
            mmap: std::sync::Arc::new(mmap),
            config,
            tensors,
            rope_permuted: arch.rope_permuted,
            n_head,
            n_kv_head,
        })
    }

    fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// Dequantizes rows `rows` of `info`, restricted to the blocks covering `cols` (all columns
    /// when `None`), returning f32 on the CPU with exactly `cols` columns.
    fn dequantize_rows(
        &self,
        name: &str,
        info: &Info,
        rows: std::ops::Range<usize>,
        cols: Option<std::ops::Range<usize>>,
    ) -> Result<Tensor> {
        let n_cols = *info.dims.last().unwrap_or(&1);
        let bs = info.dtype.block_size();
        let ts = info.dtype.type_size();
        let row_bytes = n_cols / bs * ts;
        let cols = cols.unwrap_or(0..n_cols);
        // Whole blocks covering the column range; the excess is trimmed after dequantizing.
        let (b0, b1) = (cols.start / bs, cols.end.div_ceil(bs));
        let sub = b0 * ts..b1 * ts;
        let n_rows = rows.len();
        let mut buf: Vec<u64> = vec![0; (n_rows * sub.len()).div_ceil(8)];
        let bytes = as_bytes_mut(&mut buf, n_rows * sub.len());
        for (k, row) in rows.enumerate() {
            let base = info.start + row * row_bytes;
            bytes[k * sub.len()..(k + 1) * sub.len()].copy_from_slice(&self.mmap[base + sub.start..base + sub.end]);
        }
        let width = (b1 - b0) * bs;
        let t = ggml_file::qtensor_from_ggml(info.dtype, bytes, vec![n_rows, width], &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| WeightsError::candle(name, self.file(), e))?;
        if width == cols.len() {
            Ok(t)
        } else {
            t.narrow(1, cols.start - b0 * bs, cols.len()).map_err(|e| WeightsError::candle(name, self.file(), e))
        }
    }
}

/// Views the first `len` bytes of a `u64` buffer as bytes; the `u64` backing guarantees the
/// alignment `qtensor_from_ggml` assumes for its block structs.
fn as_bytes_mut(buf: &mut [u64], len: usize) -> &mut [u8] {
    let all: &mut [u8] = bytemuck_cast(buf);
    &mut all[..len]
}

fn bytemuck_cast(buf: &mut [u64]) -> &mut [u8] {
    let len = std::mem::size_of_val(buf);
    // SAFETY: u8 has no alignment or validity requirements and the length covers exactly the
    // same allocation.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) }
}

impl WeightSource for GgufSource {
    fn config(&self) -> &serde_json::Value {
        &self.config
    }

    fn contains(&self, name: &str) -> bool {
        hf_to_gguf(name).is_some_and(|g| self.tensors.contains_key(&g.name))
    }

    fn load(&self, name: &str, full_shape: &[usize], slice: &Slice, dtype: DType, device: &Device) -> Result<Tensor> {
        let file = self.file();
        let missing = |looked: &str| WeightsError::MissingTensor {
            name: name.to_string(),
            file: format!("{file} (as GGUF tensor `{looked}`)"),
        };
        let gname = hf_to_gguf(name).ok_or_else(|| missing("<no GGUF equivalent>"))?;
        let info = self.tensors.get(&gname.name).ok_or_else(|| missing(&gname.name))?;
        check_shape(name, &file, full_shape, &info.dims)?;
        if !supported(info.dtype) {
            return Err(WeightsError::UnsupportedDtype {
                name: name.to_string(),
                file,
                dtype: format!("{:?}", info.dtype),
            });
        }
        slice.output_shape(&info.dims, name, &file)?;
        if info.dims.is_empty() || info.dims.len() > 2 {
            return Err(WeightsError::BadGguf {
                file: self.path.clone(),
                reason: format!(
                    "tensor `{}` has shape {:?}; only 1-D and 2-D tensors are supported",
                    gname.name, info.dims
                ),
            });
        }
        let head_dim = match (self.rope_permuted, gname.rope) {
            (true, Some(p)) => {
                let heads = if p == RopeProj::Q { self.n_head } else { self.n_kv_head };
                Some(self.head_dim(name, info.dims[0], heads)?)
            }
            _ => None,
        };
        let cerr = |e| WeightsError::candle(name, &file, e);

        let t = if info.dims.len() == 1 {
            // Norm weights and biases: tiny, so dequantize whole, fix order, then slice.
            let t = self.dequantize_rows(name, info, 0..1, None)?.flatten_all().map_err(cerr)?;
            let t = match head_dim {
                Some(hd) => permute::unpermute_rows(&t, hd).map_err(cerr)?,
                None => t,
            };
            match slice {
                Slice::Rows(r) => t.narrow(0, r.start, r.len()).map_err(cerr)?,
                _ => t,
            }
        } else {
            let rows_total = info.dims[0];
            let rows = match slice {
                Slice::Rows(r) => r.clone(),
                _ => 0..rows_total,
            };
            if let (Some(hd), Slice::Rows(r)) = (head_dim, slice) {
                // The permutation is within heads, so it commutes with whole-head slicing only.
                if r.start % hd != 0 || r.len() % hd != 0 {
                    return Err(WeightsError::BadSlice {
                        name: name.to_string(),
                        file,
                        slice: format!("{slice} (must cover whole heads of {hd} rows)"),
                        shape: info.dims.clone(),
                    });
                }
            }
            let cols = match slice {
                Slice::Cols(c) => Some(c.clone()),
                _ => None,
            };
            let t = self.dequantize_rows(name, info, rows, cols)?;
            match head_dim {
                Some(hd) => permute::unpermute_rows(&t, hd).map_err(cerr)?,
                None => t,
            }
        };
        t.to_device(device).and_then(|t| t.to_dtype(dtype)).map_err(cerr)
    }

    fn load_blocks(&self, name: &str, full_shape: &[usize], slice: &Slice) -> Result<Option<RawBlocks>> {
        let file = self.file();
        let Some(info) = hf_to_gguf(name).and_then(|g| self.tensors.get(&g.name).map(|i| (g, i))) else {
            return Ok(None); // `load` names what is missing
        };
        let (gname, info) = info;
        check_shape(name, &file, full_shape, &info.dims)?;
        slice.output_shape(&info.dims, name, &file)?;
        let quantized = !matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if !quantized || info.dims.len() != 2 || !supported(info.dtype) {
            return Ok(None);
        }
        let (n_rows, n_cols) = (info.dims[0], info.dims[1]);
        let (bs, ts) = (info.dtype.block_size(), info.dtype.type_size());
        let row_bytes = n_cols / bs * ts;
        let (rows, cols) = match slice {
            Slice::Full => (0..n_rows, 0..n_cols),
            Slice::Rows(r) => (r.clone(), 0..n_cols),
            Slice::Cols(c) => (0..n_rows, c.clone()),
        };
        if !cols.start.is_multiple_of(bs) || !cols.end.is_multiple_of(bs) {
            return Ok(None);
        }
        // GGUF rows in the order HF rows come from them (llama.cpp permutes q/k within heads).
        let order: Vec<usize> = match (self.rope_permuted, gname.rope) {
            (true, Some(p)) => {
                let heads = if p == RopeProj::Q { self.n_head } else { self.n_kv_head };
                let hd = self.head_dim(name, n_rows, heads)?;
                if !rows.start.is_multiple_of(hd) || !rows.len().is_multiple_of(hd) {
                    return Ok(None);
                }
                let index = permute::unpermute_index(n_rows, hd);
                rows.map(|r| index[r] as usize).collect()
            }
            _ => rows.collect(),
        };
        let sub = cols.start / bs * ts..cols.end / bs * ts;
        let in_file_order = order.windows(2).all(|w| w[1] == w[0] + 1);
        let bytes = if sub.len() == row_bytes && in_file_order {
            // Whole rows, consecutive: used where they lie in the mapping.
            let start = info.start + order.first().map_or(0, |&r| r * row_bytes);
            BlockBytes::Mapped {
                file: std::sync::Arc::clone(&self.mmap),
                range: start..start + order.len() * row_bytes,
            }
        } else {
            let mut bytes = Vec::with_capacity(order.len() * sub.len());
            for r in &order {
                let base = info.start + r * row_bytes;
                bytes.extend_from_slice(&self.mmap[base + sub.start..base + sub.end]);
            }
            if let (Some(lo), Some(hi)) = (order.iter().min(), order.iter().max()) {
                release_pages(&self.mmap, info.start + lo * row_bytes..info.start + (hi + 1) * row_bytes);
            }
            BlockBytes::Owned(bytes)
        };
        Ok(Some(RawBlocks { dtype: info.dtype, rows: order.len(), cols: cols.len(), bytes }))
    }

    fn block_type(&self, name: &str) -> Option<GgmlDType> {
        let info = self.tensors.get(&hf_to_gguf(name)?.name)?;
        let quantized = !matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        (quantized && info.dims.len() == 2 && supported(info.dtype)).then_some(info.dtype)
    }

    fn stored_dtype(&self, name: &str) -> Option<DType> {
        match self.tensors.get(&hf_to_gguf(name)?.name)?.dtype {
            GgmlDType::F32 => Some(DType::F32),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        self.file()
    }
}

impl GgufSource {
    /// Rows per head of a q/k projection with `rows` rows split over `heads` heads.
    fn head_dim(&self, name: &str, rows: usize, heads: usize) -> Result<usize> {
        if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
            return Err(WeightsError::BadGguf {
                file: self.path.clone(),
                reason: format!(
                    "tensor `{name}` has {rows} rows, which cannot be split into {heads} heads of even size"
                ),
            });
        }
        Ok(rows / heads)
    }
}
