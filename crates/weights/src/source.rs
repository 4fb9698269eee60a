//! The `WeightSource` trait every backend (safetensors directory, GGUF file, dummy) implements,
//! plus the `Slice` description of which part of a tensor a tensor-parallel rank needs.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};

/// Which part of a 2-D (or 1-D) tensor a rank needs. `Rows` is a range of dim 0, `Cols` a range
/// of dim 1 (only valid for 2-D tensors).
#[derive(Clone, Debug, PartialEq)]
pub enum Slice {
    Full,
    Rows(Range<usize>),
    Cols(Range<usize>),
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slice::Full => write!(f, "Full"),
            Slice::Rows(r) => write!(f, "Rows({}..{})", r.start, r.end),
            Slice::Cols(c) => write!(f, "Cols({}..{})", c.start, c.end),
        }
    }
}

impl Slice {
    /// Shape of the result of applying this slice to a tensor of shape `full`, or a `BadSlice`
    /// error (naming `name` and `file`) when the range is empty-inverted, out of bounds, or a
    /// `Cols` slice is applied to something that is not 2-D.
    pub fn output_shape(&self, full: &[usize], name: &str, file: &str) -> Result<Vec<usize>> {
        let bad = || WeightsError::BadSlice {
            name: name.to_string(),
            file: file.to_string(),
            slice: self.to_string(),
            shape: full.to_vec(),
        };
        let mut out = full.to_vec();
        match self {
            Slice::Full => {}
            Slice::Rows(r) => {
                if full.is_empty() || r.start > r.end || r.end > full[0] {
                    return Err(bad());
                }
                out[0] = r.len();
            }
            Slice::Cols(c) => {
                if full.len() != 2 || c.start > c.end || c.end > full[1] {
                    return Err(bad());
                }
                out[1] = c.len();
            }
        }
        Ok(out)
    }
}

/// A provider of model tensors under their HF/transformers names
/// ("model.layers.3.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight", ...).
pub trait WeightSource: Send + Sync {
    /// HF-style config.json object (for GGUF it is synthesized from the metadata).
    fn config(&self) -> &serde_json::Value;

    /// Whether the tensor `name` exists in this source.
    fn contains(&self, name: &str) -> bool;

    /// Loads `name`, checks its full shape equals `full_shape` (`ShapeMismatch` otherwise), takes
    /// `slice` of it and converts it to `dtype` on `device`. Implementations touch only the bytes
    /// the slice needs, so a rank's resident memory is roughly its share of the model.
    fn load(&self, name: &str, full_shape: &[usize], slice: &Slice, dtype: DType, device: &Device) -> Result<Tensor>;

    /// `name`'s `slice` in the block format the file stores it in (GGUF's quantized types), for
    /// running it as it is: `None` when it is stored unquantized, or when the slice does not
    /// cut whole blocks (then `load` dequantizes it). Rows come in HF order.
    fn load_blocks(&self, name: &str, full_shape: &[usize], slice: &Slice) -> Result<Option<RawBlocks>> {
        let _ = (name, full_shape, slice);
        Ok(None)
    }

    /// The block format `name` is stored in when it is a quantized matrix `load_blocks` can
    /// return (whole-block slices of it): what a loader would keep it as, without reading it.
    fn block_type(&self, name: &str) -> Option<candle_core::quantized::GgmlDType> {
        let _ = name;
        None
    }

    /// The dtype `name` is stored in when it is a plain float tensor (f32, f16, bf16): what
    /// `load` converts from. `None` when unknown, missing, or stored in blocks.
    fn stored_dtype(&self, name: &str) -> Option<DType> {
        let _ = name;
        None
    }

    /// Human-readable origin for messages ("/path/model.safetensors", "x.gguf", "dummy").
    fn describe(&self) -> String;
}

/// A 2-D tensor (or a slice of one) as its file stores it: rows × cols values in GGUF blocks,
/// each row `cols / block_size` whole blocks.
#[derive(Clone, Debug)]
pub struct RawBlocks {
    pub dtype: candle_core::quantized::GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: BlockBytes,
}

/// Where a tensor's blocks are: in place in the memory-mapped file (whole rows in file order,
/// shared by every process mapping it), or copied out (column slices, reordered rows).
#[derive(Clone)]
pub enum BlockBytes {
    Mapped { file: std::sync::Arc<memmap2::Mmap>, range: std::ops::Range<usize> },
    Owned(Vec<u8>),
}

impl BlockBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            BlockBytes::Mapped { file, range } => &file[range.clone()],
            BlockBytes::Owned(v) => v,
        }
    }

    /// For mapped bytes a caller copied (and will not read here again): drops their pages from
    /// this process's resident set, so that a copy does not count twice (see [`release_pages`]).
    pub fn release(&self) {
        if let BlockBytes::Mapped { file, range } = self {
            release_pages(file, range.clone());
        }
    }
}

/// Drops the whole pages inside `range` of a read-only file mapping from this process's
/// resident set (madvise DONTNEED). They stay in the page cache, and a later read maps them
/// again with the same bytes, so this only lowers RSS. Best effort: an error changes nothing.
pub fn release_pages(file: &memmap2::Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let base = file.as_ptr() as usize;
        let start = (base + range.start).next_multiple_of(PAGE) - base;
        let end = ((base + range.end) / PAGE * PAGE).saturating_sub(base);
        if end > start {
            // SAFETY: a read-only shared file mapping: DONTNEED discards no data (the file
            // holds it) and every reference into the range stays valid, reading the same bytes.
            let _ = unsafe { file.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

impl std::fmt::Debug for BlockBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockBytes::Mapped { range, .. } => write!(f, "Mapped({range:?})"),
            BlockBytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// Returns `ShapeMismatch` unless `found == expected`.
pub(crate) fn check_shape(name: &str, file: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(WeightsError::ShapeMismatch {
            name: name.to_string(),
            file: file.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

/// Copies the bytes a slice selects out of a row-major buffer holding a tensor of shape `full`
/// with `elem_size`-byte elements. `Rows` borrows a contiguous sub-range; `Cols` gathers each
/// row's sub-range, so only those pages of a memory-mapped buffer are touched.
pub(crate) fn slice_bytes<'a>(
    data: &'a [u8],
    full: &[usize],
    elem_size: usize,
    slice: &Slice,
) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    match slice {
        Slice::Full => Cow::Borrowed(data),
        Slice::Rows(r) => {
            let row_bytes = full[1..].iter().product::<usize>() * elem_size;
            Cow::Borrowed(&data[r.start * row_bytes..r.end * row_bytes])
        }
        Slice::Cols(c) => {
            let row_bytes = full[1] * elem_size;
            let mut out = Vec::with_capacity(full[0] * c.len() * elem_size);
            for row in 0..full[0] {
                let base = row * row_bytes;
                out.extend_from_slice(&data[base + c.start * elem_size..base + c.end * elem_size]);
            }
            Cow::Owned(out)
        }
    }
}
