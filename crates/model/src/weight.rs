//! A linear layer's weight as this rank holds it: a dense tensor (any dtype, any device), or
//! rows kept in GGUF block formats on the CPU (`shardline-ops`' block matmul runs them with
//! 8-bit activations, as llama.cpp does). A fused projection (q|k|v, gate|up) stacks its parts'
//! rows; block parts keep their own formats (a Q4_K_M file mixes Q4_K and Q6_K).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use shardline_ops::{QuantMatrix, QuantType};
use strum::{Display, EnumString, IntoStaticStr, VariantNames};

use crate::error::Result;

/// Which precision weights are kept in (`--quantization`); activations follow `--dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Display, EnumString, IntoStaticStr, VariantNames)]
pub enum Quantization {
    /// Block formats a file stores stay as they are (GGUF Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K),
    /// and so do bf16/f16 matrices (f32 accumulation); everything else loads in `--dtype`.
    #[default]
    #[strum(serialize = "auto")]
    Auto,
    /// Every weight dequantized to `--dtype`.
    #[strum(serialize = "none")]
    None,
    /// As `auto`, and weights stored unquantized (f32/f16/bf16) are quantized to Q8_0 on load.
    #[strum(serialize = "q8_0")]
    Q8_0,
    /// As `auto`, and weights stored unquantized are quantized to Q4_K on load (Q8_0 for rows
    /// that are not whole 256-weight blocks).
    #[strum(serialize = "q4_k")]
    Q4K,
}

impl Quantization {
    /// The format unquantized weights are quantized to on load, if any.
    pub fn in_situ(self) -> Option<QuantType> {
        match self {
            Quantization::Q8_0 => Some(QuantType::Q8_0),
            Quantization::Q4K => Some(QuantType::Q4K),
            Quantization::Auto | Quantization::None => None,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    /// Row parts stacked in order, each in one block format (host memory, f32 activations).
    Blocks(Arc<[QuantMatrix]>),
}

impl Weight {
    pub fn blocks(m: QuantMatrix) -> Weight {
        Weight::Blocks(Arc::from(vec![m]))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Blocks(parts) => parts.iter().map(|p| p.bytes().len()).sum(),
        }
    }

    /// Whether both are the same storage (a tied embedding and LM head).
    pub fn same_as(&self, other: &Weight) -> bool {
        match (self, other) {
            (Weight::Dense(a), Weight::Dense(b)) => a.id() == b.id(),
            (Weight::Blocks(a), Weight::Blocks(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The weight as a dense tensor.
    pub fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.clone(),
            Weight::Blocks(parts) => {
                let rows: Vec<Tensor> = parts
                    .iter()
                    .map(|p| Tensor::from_vec(p.dequantize(), (p.rows(), p.cols()), &Device::Cpu))
                    .collect::<candle_core::Result<_>>()?;
                Tensor::cat(&rows, 0)?.to_device(device)?.to_dtype(dtype)?
            }
        })
    }

    /// One projection from `parts` stacked by rows: blocks stay blocks; if any part is dense,
    /// all are made dense.
    pub fn stack(parts: Vec<Weight>, dtype: DType, device: &Device) -> Result<Weight> {
        if parts.iter().all(|p| matches!(p, Weight::Blocks(_))) {
            let all: Vec<QuantMatrix> = parts
                .iter()
                .flat_map(|p| match p {
                    Weight::Blocks(b) => b.to_vec(),
                    Weight::Dense(_) => unreachable!("checked above"),
                })
                .collect();
            return Ok(Weight::Blocks(Arc::from(all)));
        }
        let dense: Vec<Tensor> = parts.iter().map(|p| p.to_dense(dtype, device)).collect::<Result<_>>()?;
        Ok(Weight::Dense(Tensor::cat(&dense, 0)?))
    }

    /// Rows `ids` as a [ids.len(), cols] tensor: the embedding lookup.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.index_select(&Tensor::from_slice(ids, ids.len(), device)?, 0)?),
            Weight::Blocks(parts) => {
                let cols = parts.first().map_or(0, QuantMatrix::cols);
                let mut out = vec![0.0f32; ids.len() * cols];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
                    let mut r = id as usize;
                    for p in parts.iter() {
                        if r < p.rows() {
                            p.dequantize_row(r, row);
                            break;
                        }
                        r -= p.rows();
                    }
                }
                Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
            }
        }
    }
}

/// What a rank's weights were loaded as, for its READY line: matrices per format, and the
/// bytes used in place in the memory-mapped file.
#[derive(Clone, Debug, Default)]
pub struct FormatCounts {
    matrices: BTreeMap<String, usize>,
    mapped_bytes: usize,
}

impl FormatCounts {
    pub fn add(&mut self, w: &Weight) {
        match w {
            Weight::Dense(t) => *self.matrices.entry(format!("{:?}", t.dtype()).to_lowercase()).or_default() += 1,
            Weight::Blocks(parts) => {
                for p in parts.iter() {
                    *self.matrices.entry(p.ty().to_string()).or_default() += 1;
                    if p.is_mapped() {
                        self.mapped_bytes += p.bytes().len();
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for FormatCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.matrices.iter().map(|(k, n)| format!("{n} {k}")).collect();
        f.write_str(&parts.join(", "))?;
        if self.mapped_bytes > 0 {
            write!(f, "; {:.1} MiB in place in the file", self.mapped_bytes as f64 / 1048576.0)?;
        }
        Ok(())
    }
}
