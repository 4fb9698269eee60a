//! The weight matrices the block kernels read: their formats ([`QuantType`]), where their bytes
//! live (owned, borrowed from a memory-mapped file, or regrouped for the interleaved kernels),
//! and conversion to and from f32. The matmuls over them are in the parent module.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ6K, GgmlType};
use candle_core::quantized::GgmlDType;

use super::{half16, q4_1, q4_1x16, q8_0, q8_0x16};

/// The block formats kept as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q5K,
    Q6K,
    /// 16-bit floats kept as they are (HF checkpoints), with f32 activations.
    BF16,
    F16,
}

impl QuantType {
    pub const ALL: [QuantType; 8] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
        QuantType::BF16,
        QuantType::F16,
    ];

    /// The format of a GGUF tensor type, if it is one kept as it is.
    pub fn from_ggml(t: GgmlDType) -> Option<QuantType> {
        Some(match t {
            GgmlDType::Q8_0 => QuantType::Q8_0,
            GgmlDType::Q4_0 => QuantType::Q4_0,
            GgmlDType::Q4_1 => QuantType::Q4_1,
            GgmlDType::Q4K => QuantType::Q4K,
            GgmlDType::Q5K => QuantType::Q5K,
            GgmlDType::Q6K => QuantType::Q6K,
            _ => return None,
        })
    }

    /// Weights per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 | QuantType::BF16 | QuantType::F16 => 32,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => std::mem::size_of::<q8_0::BlockQ8_0>(),
            QuantType::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            QuantType::Q4_1 => std::mem::size_of::<q4_1::BlockQ4_1>(),
            QuantType::Q4K => std::mem::size_of::<BlockQ4K>(),
            QuantType::Q5K => std::mem::size_of::<BlockQ5K>(),
            QuantType::Q6K => std::mem::size_of::<BlockQ6K>(),
            QuantType::BF16 | QuantType::F16 => 2 * half16::BLOCK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
            QuantType::BF16 => "bf16",
            QuantType::F16 => "f16",
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a matrix cannot be kept in a block format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBlockAligned(pub String);

impl std::fmt::Display for NotBlockAligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bytes a matrix may borrow for as long as it lives: a memory-mapped file, shared with every
/// process mapping it.
pub type SharedBytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A [rows × cols] weight matrix in one block format; each row is cols / block_elems blocks.
#[derive(Clone)]
pub struct QuantMatrix {
    pub(super) ty: QuantType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) blocks: Blocks,
}

#[derive(Clone)]
pub(super) enum Blocks {
    /// In u32 words, so that every block format's fields are aligned.
    Owned(Vec<u32>),
    /// A range of shared bytes (checked aligned).
    Shared(SharedBytes, std::ops::Range<usize>),
    /// Q4_1 with 16 rows interleaved ([`q4_1x16`]), the layout its fast kernels read.
    Q4_1x16(Vec<q4_1x16::BlockQ4_1x16>),
    /// Q8_0 likewise ([`q8_0x16`]).
    Q8_0x16(Vec<q8_0x16::BlockQ8_0x16>),
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.blocks {
            Blocks::Owned(_) => "owned",
            Blocks::Shared(..) => "mapped",
            Blocks::Q4_1x16(_) | Blocks::Q8_0x16(_) => "owned, 16 rows interleaved",
        };
        write!(f, "QuantMatrix({}×{} {}, {place})", self.rows, self.cols, self.ty)
    }
}

impl QuantMatrix {
    /// Takes `bytes` (rows × cols/block blocks, GGUF's layout) as they are.
    pub fn from_bytes(ty: QuantType, rows: usize, cols: usize, bytes: &[u8]) -> Result<QuantMatrix, NotBlockAligned> {
        Self::check_len(ty, rows, cols, bytes.len())?;
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        as_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Ok(QuantMatrix { ty, rows, cols, blocks: Blocks::Owned(words) }.in_kernel_layout())
    }

    /// Uses `range` of `shared` (GGUF's layout) in place, without copying, when it is aligned
    /// for the block format and no kernel wants another layout (else copies it).
    pub fn mapped(
        ty: QuantType,
        rows: usize,
        cols: usize,
        shared: SharedBytes,
        range: std::ops::Range<usize>,
    ) -> Result<QuantMatrix, NotBlockAligned> {
        let bytes = &(*shared).as_ref()[range.clone()];
        if !(bytes.as_ptr() as usize).is_multiple_of(4) || Self::interleaves(ty, rows) {
            return Self::from_bytes(ty, rows, cols, bytes);
        }
        Self::check_len(ty, rows, cols, bytes.len())?;
        Ok(QuantMatrix { ty, rows, cols, blocks: Blocks::Shared(shared, range) })
    }

    /// Whether `len` bytes are exactly rows × cols in `ty`'s whole blocks.
    fn check_len(ty: QuantType, rows: usize, cols: usize, len: usize) -> Result<(), NotBlockAligned> {
        let want = rows * Self::row_bytes_of(ty, cols)?;
        if len != want {
            return Err(NotBlockAligned(format!("{rows}×{cols} {ty} needs {want} bytes, got {len}")));
        }
        Ok(())
    }

    /// Whether the blocks are borrowed in place (see [`QuantMatrix::mapped`]).
    pub fn is_mapped(&self) -> bool {
        matches!(self.blocks, Blocks::Shared(..))
    }

    /// Quantizes row-major f32 weights (in-situ quantization of a dense checkpoint).
    pub fn quantize(ty: QuantType, rows: usize, cols: usize, w: &[f32]) -> Result<QuantMatrix, NotBlockAligned> {
        assert_eq!(w.len(), rows * cols, "quantize: shape");
        let row_bytes = Self::row_bytes_of(ty, cols)?;
        let mut words = vec![0u32; (rows * row_bytes).div_ceil(4)];
        let bytes = &mut as_bytes_mut(&mut words)[..rows * row_bytes];
        fn encode<T: GgmlType>(w: &[f32], out: &mut [u8]) {
            T::from_float(w, blocks_mut::<T>(out))
        }
        match ty {
            QuantType::Q8_0 => q8_0::quantize(w, blocks_mut(bytes)),
            QuantType::Q4_0 => encode::<BlockQ4_0>(w, bytes),
            QuantType::Q4_1 => q4_1::quantize_q4_1(w, blocks_mut(bytes)),
            QuantType::Q4K => encode::<BlockQ4K>(w, bytes),
            QuantType::Q5K => encode::<BlockQ5K>(w, bytes),
            QuantType::Q6K => encode::<BlockQ6K>(w, bytes),
            QuantType::BF16 => half16::encode::<half::bf16>(w, blocks_mut(bytes)),
            QuantType::F16 => half16::encode::<half::f16>(w, blocks_mut(bytes)),
        }
        Ok(QuantMatrix { ty, rows, cols, blocks: Blocks::Owned(words) }.in_kernel_layout())
    }

    /// Whether a matrix is regrouped for its kernels: Q4_1 and Q8_0 in whole groups of 16 rows.
    /// (The interleaved kernels are several times faster than the row-at-a-time ones on the
    /// file's layout, which then serve only odd row counts.)
    fn interleaves(ty: QuantType, rows: usize) -> bool {
        matches!(ty, QuantType::Q4_1 | QuantType::Q8_0) && rows.is_multiple_of(16)
    }

    fn in_kernel_layout(self) -> QuantMatrix {
        if !Self::interleaves(self.ty, self.rows) || !matches!(self.blocks, Blocks::Owned(_) | Blocks::Shared(..)) {
            return self;
        }
        let per_row = self.cols / self.ty.block_elems();
        let groups = self.rows * per_row / 16;
        let blocks = match self.ty {
            QuantType::Q4_1 => {
                let zero =
                    q4_1x16::BlockQ4_1x16 { d: [half::f16::ZERO; 16], m: [half::f16::ZERO; 16], qs: [[0; 64]; 4] };
                let mut out = vec![zero; groups];
                q4_1x16::interleave(blocks(self.bytes()), self.rows, per_row, &mut out);
                Blocks::Q4_1x16(out)
            }
            _ => {
                let mut out = vec![q8_0x16::BlockQ8_0x16::ZERO; groups];
                q8_0x16::interleave(blocks(self.bytes()), self.rows, per_row, &mut out);
                Blocks::Q8_0x16(out)
            }
        };
        QuantMatrix { blocks, ..self }
    }

    fn row_bytes_of(ty: QuantType, cols: usize) -> Result<usize, NotBlockAligned> {
        if cols == 0 || !cols.is_multiple_of(ty.block_elems()) {
            return Err(NotBlockAligned(format!(
                "rows of {cols} weights are not whole {ty} blocks of {}",
                ty.block_elems()
            )));
        }
        Ok(cols / ty.block_elems() * ty.block_bytes())
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The blocks as stored: GGUF's layout, or Q4_1's interleaved one.
    pub fn bytes(&self) -> &[u8] {
        match &self.blocks {
            Blocks::Owned(words) => &as_bytes(words)[..self.rows * self.row_bytes()],
            Blocks::Shared(shared, range) => &(**shared).as_ref()[range.clone()],
            Blocks::Q4_1x16(groups) => plain_bytes(groups),
            Blocks::Q8_0x16(groups) => plain_bytes(groups),
        }
    }

    /// Row-major f32 values.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// Row `r`'s values into `out` (cols long): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let per_row = self.cols / self.ty.block_elems();
        let (g, j) = (r / 16, r % 16);
        match &self.blocks {
            Blocks::Q4_1x16(groups) => {
                let row: Vec<_> =
                    groups[g * per_row..(g + 1) * per_row].iter().map(|b| q4_1x16::row_block(b, j)).collect();
                return q4_1::dequantize_q4_1(&row, out);
            }
            Blocks::Q8_0x16(groups) => {
                let row: Vec<_> =
                    groups[g * per_row..(g + 1) * per_row].iter().map(|b| q8_0x16::row_block(b, j)).collect();
                return q8_0::dequantize(&row, out);
            }
            Blocks::Owned(_) | Blocks::Shared(..) => {}
        }
        let rb = self.row_bytes();
        self.decode(&self.bytes()[r * rb..(r + 1) * rb], out);
    }

    fn decode(&self, bytes: &[u8], out: &mut [f32]) {
        fn decode<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
            T::to_float(blocks::<T>(bytes), out)
        }
        match self.ty {
            QuantType::Q8_0 => q8_0::dequantize(blocks(bytes), out),
            QuantType::Q4_0 => decode::<BlockQ4_0>(bytes, out),
            QuantType::Q4_1 => q4_1::dequantize_q4_1(blocks(bytes), out),
            QuantType::Q4K => decode::<BlockQ4K>(bytes, out),
            QuantType::Q5K => decode::<BlockQ5K>(bytes, out),
            QuantType::Q6K => decode::<BlockQ6K>(bytes, out),
            QuantType::BF16 => half16::decode::<half::bf16>(blocks(bytes), out),
            QuantType::F16 => half16::decode::<half::f16>(blocks(bytes), out),
        }
    }
}

/// The bytes of plain-data blocks (f16 and integer fields, no padding).
fn plain_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: callers pass block types of f16 and byte arrays only; same allocation and length.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes(words: &[u32]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; same allocation and byte length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), std::mem::size_of_val(words)) }
}

fn as_bytes_mut(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), std::mem::size_of_val(words)) }
}

/// Views block bytes as blocks. Every block type here is plain data (f16, f32, integer arrays:
/// any bit pattern is valid) with alignment at most 4, which the u32 backing provides.
pub(super) fn blocks<T>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(bytes.len().is_multiple_of(size) && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: checked length and alignment; see above for validity.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size) }
}

fn blocks_mut<T>(bytes: &mut [u8]) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    assert!(bytes.len().is_multiple_of(size) && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: as `blocks`.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len() / size) }
}
