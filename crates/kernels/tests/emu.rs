//! tests/gpu.rs without a GPU: the real kernels/*.cu, compiled by g++ for the CPU emulator in
//! kernels/emu (shardline-kernels-emu: a fiber per CUDA thread, barriers and warp shuffles
//! emulated), launched with the GPU launchers' own geometry ([`shardline_kernels::launch`]) and
//! compared with their CPU references on the cases and tolerances tests/gpu.rs runs (the
//! `check_*` of [`shardline_kernels::testing`]), so CI checks the kernels' logic (indexing,
//! reductions, split-K, masking, rounding points) on every push.
//! The emulator cannot check what only a GPU shows (see kernels/README.md); gpu.rs still can.
//!
//! The wrappers below stand in for the `Kernels` methods: the same arguments in the same order,
//! slices instead of device views, the host's length checks as asserts.

use std::ffi::c_void;

use half::{bf16, f16};
use shardline_kernels::launch::{self, Launch};
use shardline_kernels::reference::{AttentionInputs, RopeInputs, TopK};
use shardline_kernels::testing::{self, Rng};
use shardline_kernels::{workspace_len, AttentionShape, KernelDType, QkvShape, KEY_TILE, PARTIAL_HEADER};
use shardline_kernels_emu as emu;

/// SMs of the emulated GPU, which sizes the grid-stride kernels' grids: few, so that their loops
/// do stride.
const NUM_SMS: usize = 4;
/// SMs the split-K planner plans for: an H100's (a long decode should split as it would there).
const PLAN_SMS: usize = 132;

fn geometry(l: Launch) -> emu::Geometry {
    emu::Geometry { grid_x: l.grid.0, grid_y: l.grid.1, threads: l.threads }
}

fn dtype<T: KernelDType>() -> u32 {
    T::INDEX as u32
}

fn ptr<T>(v: &[T]) -> *const c_void {
    v.as_ptr().cast()
}

fn ptr_mut<T>(v: &mut [T]) -> *mut c_void {
    v.as_mut_ptr().cast()
}

fn rms_norm<T: KernelDType>(x: &[T], w: &[T], eps: f32, out: &mut [T]) {
    let (rows, cols) = (x.len() / w.len(), w.len());
    assert!(x.len() == rows * cols && out.len() == x.len());
    let l = launch::rms_norm(rows as u32, cols as u32);
    // SAFETY: x and out hold rows × cols elements, w cols; block r touches row r.
    unsafe { emu::sl_emu_rms_norm(dtype::<T>(), geometry(l), ptr(x), ptr(w), ptr_mut(out), cols as u32, eps) }.check();
}

fn add_rms_norm<T: KernelDType>(residual: &mut [T], delta: &[T], w: &[T], eps: f32, out: &mut [T]) {
    let (rows, cols) = (residual.len() / w.len(), w.len());
    assert!(residual.len() == rows * cols && delta.len() == residual.len() && out.len() == residual.len());
    let l = launch::rms_norm(rows as u32, cols as u32);
    // SAFETY: residual, delta and out hold rows × cols elements, w cols; block r touches row r.
    unsafe {
        emu::sl_emu_add_rms_norm(
            dtype::<T>(),
            geometry(l),
            ptr_mut(residual),
            ptr(delta),
            ptr(w),
            ptr_mut(out),
            cols as u32,
            eps,
        )
    }
    .check();
}

fn silu_mul<T: KernelDType>(gate_up: &[T], inter: usize, out: &mut [T]) {
    assert!(out.len().is_multiple_of(inter) && gate_up.len() == 2 * out.len());
    let n = out.len() as u64;
    let l = launch::silu_mul(n, NUM_SMS);
    // SAFETY: gate_up holds 2 · n elements and out n; the grid-stride loop stops at n.
    unsafe { emu::sl_emu_silu_mul(dtype::<T>(), geometry(l), ptr(gate_up), ptr_mut(out), n, inter as u32) }.check();
}

fn rope_kv_write<T: KernelDType>(
    shape: &QkvShape,
    inputs: &RopeInputs<T>,
    q_out: &mut [T],
    k_cache: &mut [T],
    v_cache: &mut [T],
) {
    let rows = inputs.positions.len();
    let (max_pos, num_slots) = (inputs.cos_sin.len() / shape.head_dim, k_cache.len() / shape.kv_width());
    assert!(inputs.slots.len() == rows && inputs.qkv.len() == rows * shape.qkv_width());
    assert!(q_out.len() == rows * shape.q_width() && v_cache.len() == k_cache.len());
    let (qh, kvh, hd) = (shape.num_q_heads as u32, shape.num_kv_heads as u32, shape.head_dim as u32);
    let l = launch::rope_kv_write(rows as u32);
    // SAFETY: lengths checked above; the kernel checks each position against max_pos and each
    // slot against num_slots before using it.
    unsafe {
        emu::sl_emu_rope_kv_write(
            dtype::<T>(),
            geometry(l),
            ptr(inputs.qkv),
            inputs.cos_sin.as_ptr(),
            inputs.positions.as_ptr(),
            inputs.slots.as_ptr(),
            ptr_mut(q_out),
            ptr_mut(k_cache),
            ptr_mut(v_cache),
            qh,
            kvh,
            hd,
            max_pos as u32,
            num_slots as u64,
        )
    }
    .check();
}

/// As `Kernels::paged_attention`: with more than one split and a workspace, the partials go to
/// the workspace and a second launch merges them.
fn paged_attention<T: KernelDType>(
    shape: &AttentionShape,
    inputs: &AttentionInputs<T>,
    workspace: Option<&mut [f32]>,
    out: &mut [T],
) {
    let s = shape;
    let rows = inputs.row_seq.len();
    let (num_seqs, num_slots) = (inputs.block_tables.len() / s.max_blocks, inputs.k_cache.len() / s.kv_width());
    assert!(inputs.positions.len() == rows && inputs.q.len() == rows * s.num_q_heads * s.head_dim);
    assert!(out.len() == inputs.q.len() && inputs.kv_head_of_q.len() == s.num_q_heads);
    assert!(inputs.block_tables.len() == num_seqs * s.max_blocks && inputs.v_cache.len() == inputs.k_cache.len());
    assert!(s.head_dim.is_multiple_of(32) && s.head_dim <= 256 && s.keys_per_split.is_multiple_of(KEY_TILE));
    assert!(inputs.k_cache.as_ptr().cast::<u8>().align_offset(16) == 0, "k_cache must start 16-byte aligned");
    let need = workspace_len(rows, s.num_q_heads, s.head_dim, s.num_splits);
    let partials = match workspace {
        Some(w) => {
            assert!(w.len() >= need);
            w.as_mut_ptr()
        }
        None => {
            assert_eq!(need, 0, "{} splits need a workspace", s.num_splits);
            std::ptr::null_mut()
        }
    };
    let u = |v: usize| v as u32;
    let (qh, splits) = (u(s.num_q_heads), u(s.num_splits));
    let l = launch::paged_attention(u(rows), qh, splits);
    // SAFETY: lengths and alignment checked above; the kernel bounds-checks every sequence, head
    // and block-table entry it reads against num_seqs, num_kv_heads and num_slots.
    unsafe {
        emu::sl_emu_paged_attention(
            dtype::<T>(),
            geometry(l),
            ptr(inputs.q),
            ptr(inputs.k_cache),
            ptr(inputs.v_cache),
            inputs.block_tables.as_ptr(),
            inputs.row_seq.as_ptr(),
            inputs.positions.as_ptr(),
            inputs.kv_head_of_q.as_ptr(),
            ptr_mut(out),
            partials,
            qh,
            u(s.num_kv_heads),
            u(s.head_dim),
            u(s.block_size),
            u(s.max_blocks),
            u(num_seqs),
            num_slots as u64,
            s.scale,
            splits,
            u(s.keys_per_split),
        )
    }
    .check();
    if !partials.is_null() && splits > 1 {
        // SAFETY: the workspace holds `need` f32s, which the launch above wrote.
        let partials = unsafe { std::slice::from_raw_parts(partials, need) };
        attention_merge(partials, s.head_dim, s.num_splits, out);
    }
}

fn attention_merge<T: KernelDType>(partials: &[f32], head_dim: usize, num_splits: usize, out: &mut [T]) {
    let items = out.len() / head_dim;
    assert!(out.len() == items * head_dim && partials.len() == items * num_splits * (PARTIAL_HEADER + head_dim));
    let l = launch::attention_merge(items as u32, head_dim as u32);
    // SAFETY: partials hold items × num_splits × (2 + head_dim) f32s and out items × head_dim.
    unsafe {
        emu::sl_emu_attention_merge(
            dtype::<T>(),
            geometry(l),
            partials.as_ptr(),
            ptr_mut(out),
            head_dim as u32,
            num_splits as u32,
        )
    }
    .check();
}

fn logits_topk(logits: &[f32], inv_temperature: &[f32], k: usize) -> TopK {
    let rows = inv_temperature.len();
    let vocab = logits.len() / rows;
    assert!(logits.len() == rows * vocab && (1..=64).contains(&k) && k <= vocab);
    let mut t = TopK { values: vec![0.0; rows * k], ids: vec![0; rows * k], stats: vec![0.0; rows * 3] };
    let l = launch::logits_topk(rows as u32);
    // SAFETY: logits hold rows × vocab f32s, inv_temperature rows, values and ids rows × k,
    // stats rows × 3; block r touches row r.
    unsafe {
        emu::sl_emu_logits_topk(
            geometry(l),
            logits.as_ptr(),
            inv_temperature.as_ptr(),
            t.values.as_mut_ptr(),
            t.ids.as_mut_ptr(),
            t.stats.as_mut_ptr(),
            vocab as u32,
            k as u32,
        )
    }
    .check();
    t
}

fn check_rms_norm<T: KernelDType>() {
    testing::check_rms_norm::<T>(
        |x, w, eps| {
            let mut out = vec![T::default(); x.len()];
            rms_norm(x, w, eps, &mut out);
            out
        },
        |residual, delta, w, eps| {
            let mut out = vec![T::default(); residual.len()];
            add_rms_norm(residual, delta, w, eps, &mut out);
            out
        },
    );
}

#[test]
fn rms_norm_matches_reference() {
    check_rms_norm::<f32>();
    check_rms_norm::<bf16>();
    check_rms_norm::<f16>();
}

fn check_silu_mul<T: KernelDType>() {
    testing::check_silu_mul::<T>(|gate_up, inter| {
        let mut out = vec![T::default(); gate_up.len() / 2];
        silu_mul(gate_up, inter, &mut out);
        out
    });
}

#[test]
fn silu_mul_matches_reference() {
    check_silu_mul::<f32>();
    check_silu_mul::<bf16>();
    check_silu_mul::<f16>();
}

fn check_rope_kv_write<T: KernelDType>() {
    testing::check_rope_kv_write::<T>(|shape, inputs, k_cache, v_cache| {
        let mut q_out = vec![T::default(); inputs.positions.len() * shape.q_width()];
        rope_kv_write(shape, inputs, &mut q_out, k_cache, v_cache);
        q_out
    });
}

#[test]
fn rope_kv_write_matches_reference_bit_for_bit() {
    check_rope_kv_write::<f32>();
    check_rope_kv_write::<bf16>();
    check_rope_kv_write::<f16>();
}

fn check_attention<T: KernelDType>() {
    testing::check_paged_attention::<T>(PLAN_SMS, |shape, inputs| {
        let (rows, mut out) = (inputs.row_seq.len(), vec![T::default(); inputs.q.len()]);
        // NaN until written: a partial the kernel forgets to write cannot pass.
        let mut ws = vec![f32::NAN; workspace_len(rows, shape.num_q_heads, shape.head_dim, shape.num_splits)];
        paged_attention(shape, inputs, (shape.num_splits > 1).then_some(&mut ws[..]), &mut out);
        (out, ws)
    });
}

// One test per dtype, so the test harness runs them in parallel.
#[test]
fn paged_attention_f32_matches_reference() {
    check_attention::<f32>();
}

#[test]
fn paged_attention_bf16_matches_reference() {
    check_attention::<bf16>();
}

#[test]
fn paged_attention_f16_matches_reference() {
    check_attention::<f16>();
}

#[test]
fn attention_merge_weighs_empty_splits_zero() {
    testing::check_attention_merge(|partials, head_dim, num_splits| {
        // NaN until written: an item the kernel forgets to write cannot pass.
        let mut out = vec![f32::NAN; partials.len() / (num_splits * (PARTIAL_HEADER + head_dim)) * head_dim];
        attention_merge(partials, head_dim, num_splits, &mut out);
        out
    });
}

#[test]
fn logits_topk_matches_reference() {
    testing::check_logits_topk(logits_topk);
}

#[test]
fn copy_f32x4_copies_with_its_grid_stride() {
    let n4 = 20_000; // more float4s than the launch has threads: every thread strides
    let l = launch::copy_f32x4(n4, NUM_SMS);
    assert!((l.grid.0 * l.threads) < n4 as u32);
    let src: Vec<f32> = (0..4 * n4).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; src.len()];
    assert!(src.as_ptr().cast::<u8>().align_offset(16) == 0 && dst.as_ptr().cast::<u8>().align_offset(16) == 0);
    // SAFETY: src and dst hold n4 float4s each, 16-byte aligned (checked above).
    unsafe { emu::sl_emu_copy_f32x4(geometry(l), src.as_ptr(), dst.as_mut_ptr(), n4 as u64) }.check();
    assert_eq!(src, dst);
}

/// The emulator's bf16/f16 conversions (kernels/emu/include) are `half`'s, which the references
/// use: every 16-bit value widens alike, and f32s round alike (ties, subnormals, overflow).
#[test]
fn emulated_conversions_match_half() {
    for b in 0..=u16::MAX {
        // SAFETY: plain conversions, no memory.
        let (from_bf16, from_f16) = unsafe { (emu::sl_emu_bf16_to_f32(b), emu::sl_emu_f16_to_f32(b)) };
        let (want_bf16, want_f16) = (bf16::from_bits(b).to_f32(), f16::from_bits(b).to_f32());
        assert!(from_bf16.to_bits() == want_bf16.to_bits() || from_bf16.is_nan() && want_bf16.is_nan(), "bf16 {b:#x}");
        assert!(from_f16.to_bits() == want_f16.to_bits() || from_f16.is_nan() && want_f16.is_nan(), "f16 {b:#x}");
    }
    let mut rng = Rng(18);
    // Random bit patterns, each also as an exact bf16 tie; every f16 midpoint (ties, the
    // subnormals, the overflow to inf at 65520) and its f32 neighbours, both signs.
    let random = (0..1 << 19).flat_map(|_| {
        let r = (rng.next_u64() >> 32) as u32;
        [f32::from_bits(r), f32::from_bits(r & 0xffff_0000 | 0x8000)]
    });
    let f16_ties = (0..0x7c00).flat_map(|h| {
        let (x, next) = (f16::from_bits(h).to_f32(), f16::from_bits(h + 1).to_f32());
        let mid = (x + next.min(65536.0)) / 2.0; // exact: f32 has 13 more bits
        let around = [mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)];
        around.into_iter().flat_map(|v| [v, -v])
    });
    for v in random.chain(f16_ties) {
        // SAFETY: plain conversions, no memory.
        let (to_bf16, to_f16) = unsafe { (emu::sl_emu_f32_to_bf16(v), emu::sl_emu_f32_to_f16(v)) };
        let bits = v.to_bits();
        assert_eq!(to_bf16, bf16::from_f32(v).to_bits(), "{v:e} ({bits:#x}) to bf16");
        assert_eq!(to_f16, f16::from_f32(v).to_bits(), "{v:e} ({bits:#x}) to f16");
    }
}

#[test]
#[should_panic(expected = "whole warps")]
fn a_block_the_emulator_cannot_run_fails_the_launch() {
    let partials = vec![0.0f32; 2 + 48];
    let mut out = vec![0.0f32; 48];
    // head_dim 48 is no whole number of warps (the GPU launcher refuses it before launching).
    attention_merge(&partials, 48, 1, &mut out);
}

#[test]
#[should_panic(expected = "skip_barrier: deadlock in block (0, 0): 63 threads wait at __syncthreads, 0 at a warp \
                           shuffle, 1 have returned")]
fn the_emulator_reports_a_barrier_a_thread_skips() {
    // SAFETY: the self-test kernel touches no memory.
    unsafe { emu::sl_emu_self_test_deadlock() }.check();
}

#[test]
fn the_emulator_shows_reads_without_a_barrier_stale_on_either_side() {
    let mut stale = [0u32; 2];
    // SAFETY: the self-test kernel only counts into `stale`'s two elements.
    unsafe { emu::sl_emu_self_test_unsynced(1000, stale.as_mut_ptr()) }.check();
    let reads = 8 * 64;
    assert!(stale.iter().all(|&n| n > 0 && n < reads), "stale reads of the next / previous thread: {stale:?}");
}
