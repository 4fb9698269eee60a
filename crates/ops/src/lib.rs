//! CPU f32 kernels for the hot paths of a Llama-family forward pass. Each kernel has a naive
//! reference in [`reference`] that tests compare against, and `benches/kernels.rs` measures it
//! (llm.c's habit: a kernel is done when it has a reference and a number).
//!
//! Parallelism uses rayon's pool, so `--threads` sizes every kernel at once, and for the short
//! loops of a decode step a spinning [`team::Team`] when the caller entered one.

mod attention;
mod attn_kernels;
mod elementwise;
mod matmul;
mod out_ptr;
pub mod quant;
pub mod reference;
mod simd;
pub mod team;

pub use attention::{paged_attention, write_kv, KvLayout, SeqSpan};
pub use elementwise::{add_bias, add_inplace, rms_norm, rope_rotate_half, silu_mul};
pub use matmul::matmul_nt;
pub use quant::{matmul_nt_quant, matmul_nt_quant_f64, QuantMatrix, QuantType};
