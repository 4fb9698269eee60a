//! Shardline's own CUDA kernels (`kernels/*.cu` at the repository root) and, beside each, the
//! CPU reference it is tested against (llm.c's habit: a kernel is done when it matches a
//! reference a reader can check by eye).
//!
//! - [`mod@reference`]: the semantics, as plain Rust loops; always built, tested in CI against
//!   `shardline_ops` and `shardline_sampling`.
//! - `Kernels` (feature `cuda`): the kernels compiled by build.rs into one fatbin embedded in
//!   this crate, loaded once per context and launched on a caller's stream. Without the
//!   feature nothing here touches CUDA.
//! - [`mod@launch`]: the grid and block of every kernel, shared by the GPU launchers and the
//!   emulator tests (tests/emu.rs), which run the real kernels/*.cu on the CPU through
//!   `shardline-kernels-emu`.
//!
//! Every kernel computes in f32 and stores f32, bf16 or f16 ([`KernelDType`]), rounding where
//! HF transformers rounds.

mod dtype;
mod error;
#[cfg(feature = "cuda")]
mod gpu;
pub mod launch;
pub mod reference;
mod shape;
mod split;
pub mod testing;

pub use dtype::{convert, round, widen, KernelDType, SUFFIXES};
pub use error::KernelError;
#[cfg(feature = "cuda")]
pub use gpu::{AttentionInputs, Kernels, RopeInputs, TopkOutputs};
pub use shape::{AttentionShape, QkvShape, MAX_HEAD_DIM, MAX_TOPK};
pub use split::{plan_splits, split_range, workspace_len, KEY_TILE, MAX_SPLITS, PARTIAL_HEADER};
