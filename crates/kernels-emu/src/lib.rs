//! The real kernels/*.cu, compiled by g++ for a CPU emulator of the CUDA subset they use
//! (kernels/emu: every CUDA thread a fiber, barriers and warp shuffles emulated), and raw
//! bindings to one entry point per kernel. shardline-kernels' tests/emu.rs drives them with the
//! launch geometry of `shardline_kernels::launch` and checks them against the CPU references,
//! so CI exercises the kernels' logic without a GPU. Test support only: nothing else depends on
//! this crate.
//!
//! Each entry point takes the kernel's own arguments (element pointers untyped, their type
//! named by `dtype` = `KernelDType::INDEX`: 0 f32, 1 bf16, 2 f16) after a [`Geometry`], and
//! returns a [`Status`]: what went wrong, if anything (a deadlocked barrier, a block the
//! emulator cannot run). They are as unsafe as the kernels: every pointer must hold what the
//! kernel reads or writes.

use std::ffi::{c_char, c_void, CStr};

/// A launch's grid (x, y) and 1-D block, as `shardline_kernels::launch::Launch` gives it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub grid_x: u32,
    pub grid_y: u32,
    pub threads: u32,
}

// The kernels' own argument lists (kernels/*.cu), hence their length.
#[allow(clippy::too_many_arguments)]
extern "C" {
    pub fn sl_emu_rms_norm(
        dtype: u32,
        g: Geometry,
        x: *const c_void,
        w: *const c_void,
        out: *mut c_void,
        cols: u32,
        eps: f32,
    ) -> Status;
    pub fn sl_emu_add_rms_norm(
        dtype: u32,
        g: Geometry,
        residual: *mut c_void,
        delta: *const c_void,
        w: *const c_void,
        out: *mut c_void,
        cols: u32,
        eps: f32,
    ) -> Status;
    pub fn sl_emu_silu_mul(
        dtype: u32,
        g: Geometry,
        gate_up: *const c_void,
        out: *mut c_void,
        n: u64,
        inter: u32,
    ) -> Status;
    pub fn sl_emu_rope_kv_write(
        dtype: u32,
        g: Geometry,
        qkv: *const c_void,
        cos_sin: *const f32,
        positions: *const u32,
        slots: *const u32,
        q_out: *mut c_void,
        k_cache: *mut c_void,
        v_cache: *mut c_void,
        qh: u32,
        kvh: u32,
        hd: u32,
        max_pos: u32,
        num_slots: u64,
    ) -> Status;
    pub fn sl_emu_paged_attention(
        dtype: u32,
        g: Geometry,
        q: *const c_void,
        k_cache: *const c_void,
        v_cache: *const c_void,
        block_tables: *const u32,
        row_seq: *const u32,
        positions: *const u32,
        kv_head_of_q: *const u32,
        out: *mut c_void,
        partials: *mut f32,
        num_q_heads: u32,
        num_kv_heads: u32,
        head_dim: u32,
        block_size: u32,
        max_blocks: u32,
        num_seqs: u32,
        num_slots: u64,
        scale: f32,
        num_splits: u32,
        keys_per_split: u32,
    ) -> Status;
    pub fn sl_emu_attention_merge(
        dtype: u32,
        g: Geometry,
        partials: *const f32,
        out: *mut c_void,
        head_dim: u32,
        num_splits: u32,
    ) -> Status;
    pub fn sl_emu_logits_topk(
        g: Geometry,
        logits: *const f32,
        inv_temperature: *const f32,
        top_values: *mut f32,
        top_ids: *mut u32,
        stats: *mut f32,
        vocab: u32,
        k: u32,
    ) -> Status;
    /// `src` and `dst` hold `n` float4s (16-byte aligned).
    pub fn sl_emu_copy_f32x4(g: Geometry, src: *const f32, dst: *mut f32, n: u64) -> Status;

    // The emulator's own checks (kernels/emu/kernels.cc `self_test`).
    pub fn sl_emu_self_test_deadlock() -> Status;
    /// `stale` holds 2 counters.
    pub fn sl_emu_self_test_unsynced(tag: u32, stale: *mut u32) -> Status;

    // The emulator's storage conversions (kernels/emu/include), for tests against `half`.
    pub fn sl_emu_f32_to_bf16(v: f32) -> u16;
    pub fn sl_emu_bf16_to_f32(b: u16) -> f32;
    pub fn sl_emu_f32_to_f16(v: f32) -> u16;
    pub fn sl_emu_f16_to_f32(b: u16) -> f32;
}

/// What an entry point returns: null, or the emulator's message (NUL-terminated, valid until
/// the thread's next launch). Only the entry points make one.
#[repr(transparent)]
#[must_use = "a failed launch panics only when checked"]
pub struct Status(*const c_char);

impl Status {
    /// Panics with the emulator's message, if the launch failed.
    pub fn check(self) {
        if !self.0.is_null() {
            // SAFETY: a non-null Status comes from an entry point: a message that lives until
            // this thread's next launch, which cannot happen before this returns.
            let message = unsafe { CStr::from_ptr(self.0) }.to_string_lossy();
            panic!("emulated kernel failed: {message}");
        }
    }
}
