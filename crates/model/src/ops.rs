//! Layer building blocks with two implementations each: `shardline-ops` kernels when tensors are
//! contiguous f32 on the CPU (the hot path we tune), candle ops otherwise (CUDA, f16, bf16).
//! Both follow transformers' Llama code, so they agree to rounding.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor, D};
use shardline_ops::{self as k, QuantMatrix};

use crate::batch::BatchInput;
use crate::error::Result;
use crate::kv::{KvCache, LayerKv};
use crate::weight::Weight;

/// Runs `f` on the tensor's data if it is a contiguous f32 CPU tensor.
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => layout.contiguous_offsets().map(|(a, b)| f(&v[a..b])),
        _ => None,
    }
}

fn host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    with_host_f32(t, <[f32]>::to_vec).expect("checked host f32")
}

fn from_vec(v: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

/// x [T, k] · wᵀ (w [n, k], a torch Linear weight) + b.
pub fn linear(x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Result<Tensor> {
    let w = match w {
        Weight::Dense(t) => t,
        Weight::Blocks(parts) => return linear_blocks(x, parts, b),
    };
    let (m, kdim) = x.dims2()?;
    let n = w.dim(0)?;
    if host_f32(x) && host_f32(w) {
        let mut out = vec![0.0f32; m * n];
        with_host_f32(x, |xs| with_host_f32(w, |ws| k::matmul_nt(xs, m, kdim, ws, n, &mut out)));
        if let Some(b) = b {
            with_host_f32(b, |bs| k::add_bias(&mut out, bs));
        }
        return from_vec(out, m, n);
    }
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// x · wᵀ as one tensor-parallel rank's share of a row-parallel layer, to be summed over the
/// group: f64 partial sums for block weights (their sum then rounds to the single process's
/// f32 result exactly), `linear` otherwise.
pub fn linear_partial(x: &Tensor, w: &Weight) -> Result<Tensor> {
    let Weight::Blocks(parts) = w else { return linear(x, w, None) };
    let (out, m, n) = blocks_matmul(x, parts, k::matmul_nt_quant_f64)?;
    Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
}

/// The block-format matmul (weights in GGUF blocks, f32 activations on the host).
fn linear_blocks(x: &Tensor, parts: &[QuantMatrix], b: Option<&Tensor>) -> Result<Tensor> {
    let (mut out, m, n) = blocks_matmul(x, parts, k::matmul_nt_quant)?;
    if let Some(b) = b {
        let b = b.to_dtype(DType::F32)?;
        with_host_f32(&b, |bs| k::add_bias(&mut out, bs));
    }
    from_vec(out, m, n)
}

/// x [m, k] · wᵀ over the stacked block `parts` through `matmul` (f32 outputs, or exact f64
/// ones), with x as f32 on the host; returns the row-major output and its shape.
fn blocks_matmul<T: Clone + Default>(
    x: &Tensor,
    parts: &[QuantMatrix],
    matmul: fn(&[f32], usize, usize, &[QuantMatrix], &mut [T]),
) -> Result<(Vec<T>, usize, usize)> {
    let (m, kdim) = x.dims2()?;
    let n: usize = parts.iter().map(QuantMatrix::rows).sum();
    let x = x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![T::default(); m * n];
    with_host_f32(&x, |xs| matmul(xs, m, kdim, parts, &mut out));
    Ok((out, m, n))
}

/// LlamaRMSNorm: x · rsqrt(mean(x²) + eps) in f32, cast back, times the weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let (m, n) = x.dims2()?;
    if host_f32(x) && host_f32(w) {
        let mut out = vec![0.0f32; m * n];
        with_host_f32(x, |xs| with_host_f32(w, |ws| k::rms_norm(xs, ws, eps as f32, &mut out)));
        return from_vec(out, m, n);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

/// silu(gate) · up, where each row of `gate_up` is [gate | up].
pub fn silu_mul(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    let m = gate_up.dim(0)?;
    if host_f32(gate_up) {
        let mut out = vec![0.0f32; m * inter];
        with_host_f32(gate_up, |g| k::silu_mul(g, inter, &mut out));
        return from_vec(out, m, inter);
    }
    let gate = gate_up.narrow(1, 0, inter)?;
    let up = gate_up.narrow(1, inter, inter)?;
    Ok((gate.silu()? * up)?)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if host_f32(a) && host_f32(b) {
        let mut out = to_vec(a);
        with_host_f32(b, |bs| k::add_inplace(&mut out, bs));
        let (m, n) = a.dims2()?;
        return from_vec(out, m, n);
    }
    Ok((a + b)?)
}

/// Shapes of the fused q|k|v projection output.
#[derive(Clone, Copy, Debug)]
pub struct QkvDims {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Splits the fused projection [T, (q+2kv)·hd] into q, k, v and rotates q and k (HF rotate_half
/// convention) with the per-row `cos`/`sin` tables [T, hd/2].
pub fn split_qkv_rope(qkv: &Tensor, d: &QkvDims, cos: &[f32], sin: &[f32]) -> Result<(Tensor, Tensor, Tensor)> {
    let t = qkv.dim(0)?;
    let (qd, kvd) = (d.q_heads * d.head_dim, d.kv_heads * d.head_dim);
    if host_f32(qkv) {
        let all = to_vec(qkv);
        let width = qd + 2 * kvd;
        let (mut q, mut kk, mut v) =
            (Vec::with_capacity(t * qd), Vec::with_capacity(t * kvd), Vec::with_capacity(t * kvd));
        for row in all.chunks_exact(width) {
            q.extend_from_slice(&row[..qd]);
            kk.extend_from_slice(&row[qd..qd + kvd]);
            v.extend_from_slice(&row[qd + kvd..]);
        }
        k::rope_rotate_half(&mut q, d.q_heads, d.head_dim, cos, sin);
        k::rope_rotate_half(&mut kk, d.kv_heads, d.head_dim, cos, sin);
        return Ok((from_vec(q, t, qd)?, from_vec(kk, t, kvd)?, from_vec(v, t, kvd)?));
    }
    let half = d.head_dim / 2;
    let cos = Tensor::from_slice(cos, (t, 1, half), qkv.device())?.to_dtype(qkv.dtype())?;
    let sin = Tensor::from_slice(sin, (t, 1, half), qkv.device())?.to_dtype(qkv.dtype())?;
    let rope = |x: Tensor, heads: usize| -> Result<Tensor> {
        let x = x.reshape((t, heads, d.head_dim))?;
        let x1 = x.narrow(2, 0, half)?;
        let x2 = x.narrow(2, half, half)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Ok(Tensor::cat(&[a, b], 2)?.reshape((t, heads * d.head_dim))?)
    };
    let q = rope(qkv.narrow(1, 0, qd)?, d.q_heads)?;
    let kk = rope(qkv.narrow(1, qd, kvd)?, d.kv_heads)?;
    let v = qkv.narrow(1, qd + kvd, kvd)?.contiguous()?;
    Ok((q, kk, v))
}

/// Writes this step's k/v rows into `layer`'s slots, then attends every query row causally over
/// its sequence's cached context. Returns [T, q_heads·hd].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    kk: &Tensor,
    v: &Tensor,
    cache: &mut KvCache,
    layer: usize,
    batch: &BatchInput,
    d: &QkvDims,
    kv_head_of_q: &[usize],
) -> Result<Tensor> {
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let layout = cache.layout;
    let t = q.dim(0)?;
    match &mut cache.layers[layer] {
        LayerKv::Host { k: kc, v: vc } => {
            with_host_f32(kk, |ks| with_host_f32(v, |vs| k::write_kv(ks, vs, &batch.slots, &layout, kc, vc)));
            let spans: Vec<k::SeqSpan> = batch
                .seqs
                .iter()
                .zip(&batch.row_starts)
                .map(|(s, &start)| k::SeqSpan {
                    q_start: start,
                    q_len: s.tokens.len(),
                    context_len: s.cached_len + s.tokens.len(),
                    block_table: &s.block_table,
                })
                .collect();
            let mut out = vec![0.0f32; t * d.q_heads * d.head_dim];
            let q_host = to_vec(q);
            k::paged_attention(&q_host, d.q_heads, kv_head_of_q, &spans, &layout, kc, vc, scale, &mut out);
            from_vec(out, t, d.q_heads * d.head_dim)
        }
        #[cfg(feature = "cuda")]
        LayerKv::Gpu(_) => Err(crate::error::ModelError::Gpu("a GPU-kernel KV cache on the candle path".into())),
        LayerKv::Device { k: kc, v: vc } => {
            let slots = Tensor::from_slice(&batch.slots, t, q.device())?;
            let width = d.kv_heads * d.head_dim;
            let idx = slots.unsqueeze(1)?.broadcast_as((t, width))?.contiguous()?;
            kc.scatter_set(&idx, &kk.contiguous()?, 0)?;
            vc.scatter_set(&idx, &v.contiguous()?, 0)?;
            device_attention(q, kc, vc, batch, d, kv_head_of_q, scale, layout.block_size)
        }
    }
}

/// Gather-based attention with candle ops, one sequence at a time.
#[allow(clippy::too_many_arguments)]
fn device_attention(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    batch: &BatchInput,
    d: &QkvDims,
    kv_head_of_q: &[usize],
    scale: f32,
    block_size: usize,
) -> Result<Tensor> {
    let dev = q.device();
    let dtype = q.dtype();
    let head_map: Vec<u32> = kv_head_of_q.iter().map(|&h| h as u32).collect();
    let head_map = Tensor::from_vec(head_map, d.q_heads, dev)?;
    let mut outs = Vec::with_capacity(batch.seqs.len());
    for (s, &start) in batch.seqs.iter().zip(&batch.row_starts) {
        let (q_len, ctx) = (s.tokens.len(), s.cached_len + s.tokens.len());
        let slots: Vec<u32> =
            (0..ctx).map(|p| s.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32).collect();
        let slots = Tensor::from_vec(slots, ctx, dev)?;
        let gather = |c: &Tensor| -> Result<Tensor> {
            let x = c.index_select(&slots, 0)?.reshape((ctx, d.kv_heads, d.head_dim))?;
            Ok(x.index_select(&head_map, 1)?.transpose(0, 1)?.contiguous()?) // [h, ctx, hd]
        };
        let (keys, values) = (gather(kc)?, gather(vc)?);
        let qs = q.narrow(0, start, q_len)?.reshape((q_len, d.q_heads, d.head_dim))?.transpose(0, 1)?.contiguous()?;
        let scores = (qs.matmul(&keys.t()?)?.to_dtype(DType::F32)? * scale as f64)?; // [h, q_len, ctx]
        let mask: Vec<f32> = (0..q_len)
            .flat_map(|i| (0..ctx).map(move |j| if j > ctx - q_len + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, q_len, ctx), dev)?;
        let scores = scores.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)?;
        let o = probs.matmul(&values)?; // [h, q_len, hd]
        outs.push(o.transpose(0, 1)?.reshape((q_len, d.q_heads * d.head_dim))?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}
