//! The paged KV cache of one pipeline stage: per layer a K and a V pool of fixed-size blocks
//! (PagedAttention, Kwon et al. 2023). Which blocks a sequence owns is the engine's business;
//! the model only reads and writes the slots a batch names.

use candle_core::{DType, Device, Tensor};
use shardline_ops::KvLayout;

use crate::error::{ModelError, Result};

/// One layer's pools: host vectors for the CPU f32 kernels, device buffers for the GPU
/// kernels, candle tensors otherwise (CPU f16/bf16, or CUDA with the kernels turned off).
pub(crate) enum LayerKv {
    Host {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    #[cfg(feature = "cuda")]
    Gpu(crate::gpu::GpuKv),
    Device {
        k: Tensor,
        v: Tensor,
    },
}

/// Which of [`LayerKv`]'s forms a model's forward path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvKind {
    Host,
    #[cfg(feature = "cuda")]
    Gpu,
    Candle,
}

pub struct KvCache {
    pub(crate) layout: KvLayout,
    num_blocks: usize,
    pub(crate) layers: Vec<LayerKv>,
    bytes: usize,
}

impl KvCache {
    /// Allocates `num_blocks` blocks of `block_size` tokens for `num_layers` layers holding
    /// `num_kv_heads` heads of `head_dim`, in the form the forward path `kind` reads.
    pub(crate) fn new(
        num_layers: usize,
        layout: KvLayout,
        num_blocks: usize,
        kind: KvKind,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if num_blocks == 0 || layout.block_size == 0 {
            return Err(ModelError::Batch("the KV cache needs at least one block of at least one token".into()));
        }
        let row = layout.num_kv_heads * layout.head_dim;
        let elems = num_blocks * layout.block_size * row;
        let mut layers = Vec::with_capacity(num_layers);
        for _ in 0..num_layers {
            layers.push(match kind {
                KvKind::Host => LayerKv::Host { k: vec![0.0; elems], v: vec![0.0; elems] },
                #[cfg(feature = "cuda")]
                KvKind::Gpu => {
                    let dev = crate::gpu::cuda_device(device)
                        .ok_or_else(|| ModelError::Gpu("the GPU KV cache needs a CUDA device".into()))?;
                    LayerKv::Gpu(crate::gpu::GpuKv::zeros(&dev.cuda_stream(), dtype, elems)?)
                }
                KvKind::Candle => {
                    let k = Tensor::zeros((num_blocks * layout.block_size, row), dtype, device)?;
                    let v = Tensor::zeros((num_blocks * layout.block_size, row), dtype, device)?;
                    LayerKv::Device { k, v }
                }
            });
        }
        let elem_bytes = if kind == KvKind::Host { 4 } else { dtype.size_in_bytes() };
        Ok(KvCache { layout, num_blocks, layers, bytes: 2 * num_layers * elems * elem_bytes })
    }

    /// The layers' GPU pools (all of them are, on the GPU path).
    #[cfg(feature = "cuda")]
    pub(crate) fn gpu_layers(&mut self) -> Result<Vec<&mut crate::gpu::GpuKv>> {
        self.layers
            .iter_mut()
            .map(|l| match l {
                LayerKv::Gpu(kv) => Ok(kv),
                _ => Err(ModelError::Gpu("the KV cache is not on the GPU path".into())),
            })
            .collect()
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.layout.block_size
    }

    /// Memory held by the pools.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
