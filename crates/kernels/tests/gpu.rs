//! Every GPU kernel against its CPU reference (src/reference.rs) on the random cases of
//! src/testing.rs, which tests/emu.rs runs through the CPU emulator too, in f32 (tolerances
//! ~1e-5 relative, attention 1e-4) and bf16/f16 (~1e-2): several shapes, head_dim 32 to 256,
//! GQA 4:1 and an uneven 3:1 shard, block size 16, decode and prefill rows mixed and shuffled,
//! long contexts with split-K. Without a CUDA driver or device each test prints
//! `skipped: no CUDA device (…)` and passes vacuously: `cargo test --features cuda` runs
//! anywhere, and checks something only on a GPU.
//!
//! `cargo test -p shardline-kernels --features cuda -- --ignored --nocapture` also prints the
//! HBM copy bandwidth.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use shardline_kernels::reference::{self, TopK};
use shardline_kernels::testing::{self, AttentionCase, Rng, MIXED};
use shardline_kernels::{
    workspace_len, AttentionInputs, AttentionShape, KernelDType, KernelError, Kernels, RopeInputs, TopkOutputs,
    PARTIAL_HEADER,
};

struct Gpu {
    stream: Arc<CudaStream>,
    kernels: Kernels,
}

/// Device 0 with the kernels loaded, or `None` after saying why there is none. A machine with
/// a GPU that then fails to create a context or load the fatbin fails the test instead.
fn gpu() -> Option<Gpu> {
    match CudaContext::device_count() {
        Err(e) => {
            println!("skipped: no CUDA device (the CUDA driver did not initialise: {e})");
            return None;
        }
        Ok(0) => {
            println!("skipped: no CUDA device (the driver sees 0 GPUs)");
            return None;
        }
        Ok(_) => {}
    }
    let ctx = CudaContext::new(0).expect("the driver sees a GPU: creating its context must work");
    let kernels = Kernels::load(&ctx).expect("loading the embedded fatbin");
    let stream = ctx.new_stream().expect("a stream");
    Some(Gpu { stream, kernels })
}

/// Element types a test runs in: the kernel's type and what cudarc can copy.
trait Elem: KernelDType + DeviceRepr + ValidAsZeroBits {}
impl<T: KernelDType + DeviceRepr + ValidAsZeroBits> Elem for T {}

impl Gpu {
    fn up<T: DeviceRepr>(&self, v: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(v).expect("upload")
    }

    fn down<T: DeviceRepr>(&self, s: &CudaSlice<T>) -> Vec<T> {
        self.stream.clone_dtoh(s).expect("download")
    }
}

fn check_rms_norm<T: Elem>(g: &Gpu) {
    testing::check_rms_norm::<T>(
        |x, w, eps| {
            let mut out = g.stream.alloc_zeros::<T>(x.len()).unwrap();
            g.kernels.rms_norm(&g.stream, &g.up(x).as_view(), &g.up(w).as_view(), eps, &mut out.as_view_mut()).unwrap();
            g.down(&out)
        },
        |residual, delta, w, eps| {
            let (mut dresidual, ddelta, dw) = (g.up(residual), g.up(delta), g.up(w));
            let mut out = g.stream.alloc_zeros::<T>(residual.len()).unwrap();
            g.kernels
                .add_rms_norm(
                    &g.stream,
                    &mut dresidual.as_view_mut(),
                    &ddelta.as_view(),
                    &dw.as_view(),
                    eps,
                    &mut out.as_view_mut(),
                )
                .unwrap();
            residual.copy_from_slice(&g.down(&dresidual));
            g.down(&out)
        },
    );
}

#[test]
fn rms_norm_matches_reference() {
    let Some(g) = gpu() else { return };
    check_rms_norm::<f32>(&g);
    check_rms_norm::<bf16>(&g);
    check_rms_norm::<f16>(&g);
}

fn check_silu_mul<T: Elem>(g: &Gpu) {
    testing::check_silu_mul::<T>(|gate_up, inter| {
        let mut out = g.stream.alloc_zeros::<T>(gate_up.len() / 2).unwrap();
        g.kernels.silu_mul(&g.stream, &g.up(gate_up).as_view(), inter, &mut out.as_view_mut()).unwrap();
        g.down(&out)
    });
}

#[test]
fn silu_mul_matches_reference() {
    let Some(g) = gpu() else { return };
    check_silu_mul::<f32>(&g);
    check_silu_mul::<bf16>(&g);
    check_silu_mul::<f16>(&g);
}

fn check_rope_kv_write<T: Elem>(g: &Gpu) {
    testing::check_rope_kv_write::<T>(|shape, inputs, k_cache, v_cache| {
        let (dqkv, dcs) = (g.up(inputs.qkv), g.up(inputs.cos_sin));
        let (dpos, dslots) = (g.up(inputs.positions), g.up(inputs.slots));
        let (mut dk, mut dv) = (g.up(k_cache), g.up(v_cache));
        let mut q_out = g.stream.alloc_zeros::<T>(inputs.positions.len() * shape.q_width()).unwrap();
        let inputs = RopeInputs {
            qkv: dqkv.as_view(),
            cos_sin: dcs.as_view(),
            positions: dpos.as_view(),
            slots: dslots.as_view(),
        };
        g.kernels
            .rope_kv_write(
                &g.stream,
                shape,
                &inputs,
                &mut q_out.as_view_mut(),
                &mut dk.as_view_mut(),
                &mut dv.as_view_mut(),
            )
            .unwrap();
        k_cache.copy_from_slice(&g.down(&dk));
        v_cache.copy_from_slice(&g.down(&dv));
        g.down(&q_out)
    });
}

#[test]
fn rope_kv_write_matches_reference_bit_for_bit() {
    let Some(g) = gpu() else { return };
    check_rope_kv_write::<f32>(&g);
    check_rope_kv_write::<bf16>(&g);
    check_rope_kv_write::<f16>(&g);
}

/// Runs paged attention on the GPU with `shape` (its splits), returning the output and, with
/// splits, the workspace's partials.
fn gpu_attention<T: Elem>(
    g: &Gpu,
    shape: &AttentionShape,
    inputs: &reference::AttentionInputs<T>,
) -> (Vec<T>, Vec<f32>) {
    let (dq, dk, dv) = (g.up(inputs.q), g.up(inputs.k_cache), g.up(inputs.v_cache));
    let (dt, drs) = (g.up(inputs.block_tables), g.up(inputs.row_seq));
    let (dp, dmap) = (g.up(inputs.positions), g.up(inputs.kv_head_of_q));
    let device_inputs = AttentionInputs {
        q: dq.as_view(),
        k_cache: dk.as_view(),
        v_cache: dv.as_view(),
        block_tables: dt.as_view(),
        row_seq: drs.as_view(),
        positions: dp.as_view(),
        kv_head_of_q: dmap.as_view(),
    };
    let mut out = g.stream.alloc_zeros::<T>(inputs.q.len()).unwrap();
    let n = workspace_len(inputs.row_seq.len(), shape.num_q_heads, shape.head_dim, shape.num_splits);
    let mut ws = g.stream.alloc_zeros::<f32>(n.max(1)).unwrap();
    let mut ws_view = ws.as_view_mut();
    let workspace = (shape.num_splits > 1).then_some(&mut ws_view);
    g.kernels.paged_attention(&g.stream, shape, &device_inputs, workspace, &mut out.as_view_mut()).unwrap();
    let partials = if n > 0 { g.down(&ws) } else { Vec::new() };
    (g.down(&out), partials)
}

#[test]
fn paged_attention_matches_reference() {
    let Some(g) = gpu() else { return };
    let num_sms = g.kernels.num_sms();
    testing::check_paged_attention::<f32>(num_sms, |shape, inputs| gpu_attention(&g, shape, inputs));
    testing::check_paged_attention::<bf16>(num_sms, |shape, inputs| gpu_attention(&g, shape, inputs));
    testing::check_paged_attention::<f16>(num_sms, |shape, inputs| gpu_attention(&g, shape, inputs));
}

#[test]
fn attention_merge_weighs_empty_splits_zero() {
    let Some(g) = gpu() else { return };
    testing::check_attention_merge(|partials, head_dim, num_splits| {
        let mut out = g
            .stream
            .alloc_zeros::<f32>(partials.len() / (num_splits * (PARTIAL_HEADER + head_dim)) * head_dim)
            .unwrap();
        g.kernels
            .attention_merge(&g.stream, &g.up(partials).as_view(), head_dim, num_splits, &mut out.as_view_mut())
            .unwrap();
        g.down(&out)
    });
}

#[test]
fn attention_rejects_bad_shapes_without_launching() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(16);
    let c = AttentionCase::new(&mut rng, &[0, 0], 1, 64, 16, &MIXED, 1.0);
    let (dq, dk, dv) = (g.up(&c.q), g.up(&c.k_cache), g.up(&c.v_cache));
    let (dt, drs, dp, dmap) = (g.up(&c.block_tables), g.up(&c.row_seq), g.up(&c.positions), g.up(&c.kv_head_of_q));
    let inputs = |k_cache| AttentionInputs {
        q: dq.as_view(),
        k_cache,
        v_cache: dv.slice(..c.k_cache.len() - 64),
        block_tables: dt.as_view(),
        row_seq: drs.as_view(),
        positions: dp.as_view(),
        kv_head_of_q: dmap.as_view(),
    };
    let mut out = g.stream.alloc_zeros::<f32>(c.q.len()).unwrap();
    // A cache viewed one element in is misaligned for the kernel's 16-byte loads.
    let err = g.kernels.paged_attention(
        &g.stream,
        &c.shape,
        &inputs(dk.slice(1..c.k_cache.len() - 63)),
        None,
        &mut out.as_view_mut(),
    );
    assert!(matches!(&err, Err(KernelError::Shape { detail, .. }) if detail.contains("aligned")), "{err:?}");
    let err = g.kernels.paged_attention(&g.stream, &c.shape, &inputs(dk.as_view()), None, &mut out.as_view_mut());
    assert!(matches!(&err, Err(KernelError::Shape { detail, .. }) if detail.contains("v_cache")), "{err:?}");
    let split = AttentionShape { num_splits: 2, ..c.shape };
    let err = g.kernels.paged_attention(
        &g.stream,
        &split,
        &inputs(dk.slice(..c.k_cache.len() - 64)),
        None,
        &mut out.as_view_mut(),
    );
    assert!(matches!(&err, Err(KernelError::Shape { detail, .. }) if detail.contains("workspace")), "{err:?}");
}

#[test]
fn logits_topk_matches_reference() {
    let Some(g) = gpu() else { return };
    testing::check_logits_topk(|logits, inv_temperature, k| {
        let rows = inv_temperature.len();
        let (dl, dt) = (g.up(logits), g.up(inv_temperature));
        let (mut values, mut ids, mut stats) = (
            g.stream.alloc_zeros::<f32>(rows * k).unwrap(),
            g.stream.alloc_zeros::<u32>(rows * k).unwrap(),
            g.stream.alloc_zeros::<f32>(rows * 3).unwrap(),
        );
        let mut out = TopkOutputs { values: values.as_view_mut(), ids: ids.as_view_mut(), stats: stats.as_view_mut() };
        g.kernels.logits_topk(&g.stream, &dl.as_view(), &dt.as_view(), k, &mut out).unwrap();
        TopK { values: g.down(&values), ids: g.down(&ids), stats: g.down(&stats) }
    });
}

#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
fn hbm_copy_bandwidth() {
    let Some(g) = gpu() else { return };
    let gbs = g.kernels.measure_copy_bandwidth(&g.stream, 1 << 30).unwrap();
    println!("HBM copy bandwidth: {gbs:.0} GB/s");
    assert!(gbs > 10.0, "a GPU copies faster than {gbs} GB/s");
}
