//! Every GPU kernel against its CPU reference (src/reference.rs) on random inputs, in f32
//! (tolerances ~1e-5 relative, attention 1e-4) and bf16/f16 (~1e-2): several shapes, head_dim
//! 32 to 256, GQA 4:1 and an uneven 3:1 shard, block size 16, decode and prefill rows mixed and
//! shuffled, long contexts with split-K. Without a CUDA driver or device each test prints
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
use shardline_kernels::testing::{self, assert_close, AttentionCase, Rng, SeqSpec};
use shardline_kernels::{
    convert, plan_splits, widen, workspace_len, AttentionInputs, AttentionShape, KernelDType, KernelError, Kernels,
    QkvShape, RopeInputs, TopkOutputs, KEY_TILE,
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

/// (rtol, atol) for row-wise kernels: f32 differs from the reference only by summation order
/// and libm's last bits; bf16/f16 by an occasional flipped rounding.
fn tol<T: KernelDType>() -> (f32, f32) {
    if T::SUFFIX == "f32" {
        (1e-5, 1e-6)
    } else {
        (1e-2, 1e-2)
    }
}

/// Attention sums hundreds of products in a different order than the reference.
fn attention_tol<T: KernelDType>() -> (f32, f32) {
    if T::SUFFIX == "f32" {
        (1e-4, 1e-5)
    } else {
        (1e-2, 1e-2)
    }
}

impl Gpu {
    fn up<T: DeviceRepr>(&self, v: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(v).expect("upload")
    }

    fn down<T: DeviceRepr>(&self, s: &CudaSlice<T>) -> Vec<T> {
        self.stream.clone_dtoh(s).expect("download")
    }
}

fn check_rms_norm<T: Elem>(g: &Gpu) {
    let mut rng = Rng(11);
    let (rtol, atol) = tol::<T>();
    for (rows, cols) in [(1, 64), (5, 576), (7, 130), (3, 4096), (2, 8192)] {
        let what = format!("{} {rows}x{cols}", T::SUFFIX);
        let x: Vec<T> = convert(&rng.vec(rows * cols, 3.0));
        let w: Vec<T> = convert(&rng.vec(cols, 1.0));
        let delta: Vec<T> = convert(&rng.vec(rows * cols, 1.0));
        let (dx, dw, ddelta) = (g.up(&x), g.up(&w), g.up(&delta));
        let mut out = g.stream.alloc_zeros::<T>(rows * cols).unwrap();
        g.kernels.rms_norm(&g.stream, &dx.as_view(), &dw.as_view(), 1e-5, &mut out.as_view_mut()).unwrap();
        let want = reference::rms_norm(&x, &w, 1e-5);
        assert_close(&widen(&g.down(&out)), &widen(&want), rtol, atol, &format!("rms_norm {what}"));

        let mut residual = g.up(&x);
        let k = &g.kernels;
        k.add_rms_norm(
            &g.stream,
            &mut residual.as_view_mut(),
            &ddelta.as_view(),
            &dw.as_view(),
            1e-5,
            &mut out.as_view_mut(),
        )
        .unwrap();
        let mut want_residual = x.clone();
        let want = reference::add_rms_norm(&mut want_residual, &delta, &w, 1e-5);
        assert_eq!(g.down(&residual), want_residual, "add_rms_norm {what}: residual (one rounded add, exact)");
        assert_close(&widen(&g.down(&out)), &widen(&want), rtol, atol, &format!("add_rms_norm {what}"));
    }
}

#[test]
fn rms_norm_matches_reference() {
    let Some(g) = gpu() else { return };
    check_rms_norm::<f32>(&g);
    check_rms_norm::<bf16>(&g);
    check_rms_norm::<f16>(&g);
}

fn check_silu_mul<T: Elem>(g: &Gpu) {
    let mut rng = Rng(12);
    let (rtol, atol) = tol::<T>();
    for (rows, inter) in [(1, 64), (3, 1536), (5, 97), (64, 14336)] {
        let gu: Vec<T> = convert(&rng.vec(rows * 2 * inter, 12.0));
        let mut out = g.stream.alloc_zeros::<T>(rows * inter).unwrap();
        g.kernels.silu_mul(&g.stream, &g.up(&gu).as_view(), inter, &mut out.as_view_mut()).unwrap();
        let what = format!("silu_mul {} {rows}x{inter}", T::SUFFIX);
        assert_close(&widen(&g.down(&out)), &widen(&reference::silu_mul(&gu, inter)), rtol, atol, &what);
    }
}

#[test]
fn silu_mul_matches_reference() {
    let Some(g) = gpu() else { return };
    check_silu_mul::<f32>(&g);
    check_silu_mul::<bf16>(&g);
    check_silu_mul::<f16>(&g);
}

fn check_rope_kv_write<T: Elem>(g: &Gpu) {
    let mut rng = Rng(13);
    for (qh, kvh, hd) in [(32, 8, 128), (4, 2, 64), (7, 3, 16)] {
        let shape = QkvShape { num_q_heads: qh, num_kv_heads: kvh, head_dim: hd };
        let (rows, max_pos, num_slots) = (9, 300, 40);
        let qkv: Vec<T> = convert(&rng.vec(rows * shape.qkv_width(), 2.0));
        let cos_sin = rng.vec(max_pos * hd, 1.0);
        let mut positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
        let mut slots: Vec<u32> = (0..num_slots as u32).collect();
        rng.shuffle(&mut slots);
        slots.truncate(rows);
        slots[2] = u32::MAX; // padding: q rotated, nothing stored
        positions[5] = max_pos as u32; // past the table: the row is skipped entirely
        let k_cache: Vec<T> = convert(&rng.vec(num_slots * shape.kv_width(), 1.0));
        let v_cache: Vec<T> = convert(&rng.vec(num_slots * shape.kv_width(), 1.0));

        let (dqkv, dcs, dpos, dslots) = (g.up(&qkv), g.up(&cos_sin), g.up(&positions), g.up(&slots));
        let (mut dk, mut dv) = (g.up(&k_cache), g.up(&v_cache));
        let mut q_out = g.stream.alloc_zeros::<T>(rows * shape.q_width()).unwrap();
        let inputs = RopeInputs {
            qkv: dqkv.as_view(),
            cos_sin: dcs.as_view(),
            positions: dpos.as_view(),
            slots: dslots.as_view(),
        };
        g.kernels
            .rope_kv_write(
                &g.stream,
                &shape,
                &inputs,
                &mut q_out.as_view_mut(),
                &mut dk.as_view_mut(),
                &mut dv.as_view_mut(),
            )
            .unwrap();

        // The reference on the same rows, the skipped row made harmless (position 0, no slot);
        // the GPU leaves that row of q_out as it found it (zeros).
        let (mut ref_pos, mut ref_slots) = (positions.clone(), slots.clone());
        (ref_pos[5], ref_slots[5]) = (0, u32::MAX);
        let (mut want_k, mut want_v) = (k_cache.clone(), v_cache.clone());
        let ref_inputs = reference::RopeInputs { qkv: &qkv, cos_sin: &cos_sin, positions: &ref_pos, slots: &ref_slots };
        let mut want_q = reference::rope_kv_write(&shape, &ref_inputs, &mut want_k, &mut want_v);
        want_q[5 * shape.q_width()..6 * shape.q_width()].fill(T::default());

        // The same IEEE operations in the same order (no FMA contraction): equal bits.
        let what = format!("rope {} q={qh} kv={kvh} hd={hd}", T::SUFFIX);
        assert_eq!(g.down(&q_out), want_q, "{what}: q");
        assert_eq!(g.down(&dk), want_k, "{what}: k cache");
        assert_eq!(g.down(&dv), want_v, "{what}: v cache");
    }
}

#[test]
fn rope_kv_write_matches_reference_bit_for_bit() {
    let Some(g) = gpu() else { return };
    check_rope_kv_write::<f32>(&g);
    check_rope_kv_write::<bf16>(&g);
    check_rope_kv_write::<f16>(&g);
}

/// Runs the case on the GPU with `shape` (its splits), returning the output and, with splits,
/// the workspace's partials.
fn gpu_attention<T: Elem>(g: &Gpu, c: &AttentionCase, shape: &AttentionShape) -> (Vec<T>, Vec<f32>) {
    let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) = (convert(&c.q), convert(&c.k_cache), convert(&c.v_cache));
    let (dq, dk, dv) = (g.up(&q), g.up(&k), g.up(&v));
    let (dt, drs, dp, dmap) = (g.up(&c.block_tables), g.up(&c.row_seq), g.up(&c.positions), g.up(&c.kv_head_of_q));
    let inputs = AttentionInputs {
        q: dq.as_view(),
        k_cache: dk.as_view(),
        v_cache: dv.as_view(),
        block_tables: dt.as_view(),
        row_seq: drs.as_view(),
        positions: dp.as_view(),
        kv_head_of_q: dmap.as_view(),
    };
    let mut out = g.stream.alloc_zeros::<T>(q.len()).unwrap();
    let n = workspace_len(c.rows(), shape.num_q_heads, shape.head_dim, shape.num_splits);
    let mut ws = g.stream.alloc_zeros::<f32>(n.max(1)).unwrap();
    let mut ws_view = ws.as_view_mut();
    let workspace = (shape.num_splits > 1).then_some(&mut ws_view);
    g.kernels.paged_attention(&g.stream, shape, &inputs, workspace, &mut out.as_view_mut()).unwrap();
    let partials = if n > 0 { g.down(&ws) } else { Vec::new() };
    (g.down(&out), partials)
}

/// GPU vs reference for one case and split plan; with splits, the partials too.
fn check_attention_case<T: Elem>(g: &Gpu, c: &AttentionCase, splits: (usize, usize), what: &str) {
    let shape = AttentionShape { num_splits: splits.0, keys_per_split: splits.1, ..c.shape };
    let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) = (convert(&c.q), convert(&c.k_cache), convert(&c.v_cache));
    let inputs = reference::AttentionInputs {
        q: &q,
        k_cache: &k,
        v_cache: &v,
        block_tables: &c.block_tables,
        row_seq: &c.row_seq,
        positions: &c.positions,
        kv_head_of_q: &c.kv_head_of_q,
    };
    let (out, partials) = gpu_attention::<T>(g, c, &shape);
    let what = format!("{what} {} {} × {}", T::SUFFIX, splits.0, splits.1);
    let (rtol, atol) = attention_tol::<T>();
    assert_close(&widen(&out), &widen(&reference::paged_attention(&shape, &inputs)), rtol, atol, &what);
    if shape.num_splits > 1 {
        // m and l and the accumulator, split by split; empty splits exactly (−inf, 0, 0…).
        let want = reference::attention_partials(&shape, &inputs);
        assert_close(&partials[..want.len()], &want, 1e-4, 1e-4, &format!("{what}: partials"));
    }
}

/// A decode, a whole prefill, a prefill chunk after a cached prefix, and a long decode.
const MIXED: [SeqSpec; 4] = [
    SeqSpec { context_len: 37, q_len: 1 },
    SeqSpec { context_len: 20, q_len: 20 },
    SeqSpec { context_len: 300, q_len: 40 },
    SeqSpec { context_len: 700, q_len: 1 },
];

fn check_attention<T: Elem>(g: &Gpu) {
    let mut rng = Rng(14);
    let gqa: Vec<u32> = (0..8).map(|h| h / 4).collect();
    let uneven = [0, 0, 0, 1, 1, 1, 2];
    for (map, kvh, hd) in [(&gqa[..], 2, 64), (&uneven[..], 3, 128), (&[0, 1][..], 2, 32), (&[1, 0, 0][..], 2, 256)] {
        for q_amp in [1.0, 8.0] {
            let mut c = AttentionCase::new(&mut rng, map, kvh, hd, 16, &MIXED, q_amp);
            c.shuffle_rows(&mut rng);
            let what = format!("mixed batch, map {map:?}, hd {hd}, q ±{q_amp}");
            check_attention_case::<T>(g, &c, (1, KEY_TILE), &what);
            // Splits shorter than most rows, so short rows end in empty splits.
            check_attention_case::<T>(g, &c, (4, KEY_TILE), &what);
        }
    }
    // Long contexts, one decode row each (plus a short one): the planner splits them.
    let long = [
        SeqSpec { context_len: 9000, q_len: 1 },
        SeqSpec { context_len: 4100, q_len: 1 },
        SeqSpec { context_len: 150, q_len: 1 },
    ];
    for (map, kvh, hd) in [(&gqa[..], 2, 128), (&uneven[..], 3, 64)] {
        let c = AttentionCase::new(&mut rng, map, kvh, hd, 16, &long, 4.0);
        let plan = plan_splits(c.rows(), c.shape.num_q_heads, c.max_context(), g.kernels.num_sms());
        assert!(plan.0 > 1, "a long-context decode on {} SMs should split: {plan:?}", g.kernels.num_sms());
        let what = format!("long contexts, map {map:?}, hd {hd}");
        check_attention_case::<T>(g, &c, plan, &what);
        check_attention_case::<T>(g, &c, (1, KEY_TILE), &what);
        check_attention_case::<T>(g, &c, (3, KEY_TILE), &format!("{what}, last split takes the rest"));
    }
}

#[test]
fn paged_attention_matches_reference() {
    let Some(g) = gpu() else { return };
    check_attention::<f32>(&g);
    check_attention::<bf16>(&g);
    check_attention::<f16>(&g);
}

#[test]
fn attention_merge_weighs_empty_splits_zero() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(15);
    let hd = 32;
    let empty: Vec<f32> = [vec![f32::NEG_INFINITY, 0.0], vec![0.0; hd]].concat();
    let split = |rng: &mut Rng| [vec![rng.f32() * 4.0, 1.0 + rng.f32().abs()], rng.vec(hd, 3.0)].concat();
    // Three (row, head) items of 3 splits: some empty, one all empty (zeros, never NaN).
    let partials: Vec<f32> = [
        split(&mut rng),
        empty.clone(),
        split(&mut rng),
        empty.clone(),
        empty.clone(),
        empty.clone(),
        empty.clone(),
        split(&mut rng),
        split(&mut rng),
    ]
    .concat();
    let mut out = g.stream.alloc_zeros::<f32>(3 * hd).unwrap();
    g.kernels.attention_merge(&g.stream, &g.up(&partials).as_view(), hd, 3, &mut out.as_view_mut()).unwrap();
    let got = g.down(&out);
    assert_close(&got, &reference::attention_merge::<f32>(&partials, hd, 3), 1e-6, 1e-6, "merge");
    assert!(got[hd..2 * hd].iter().all(|&x| x == 0.0), "an item without keys merges to zeros");
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

fn check_topk(g: &Gpu, rows: usize, vocab: usize, k: usize, rng: &mut Rng) {
    let mut logits = testing::logits(rng, rows, vocab);
    // The last row: nothing but NaN and −inf (stats −inf, picks by id).
    for (i, l) in logits[(rows - 1) * vocab..].iter_mut().enumerate() {
        *l = if i % 3 == 0 { f32::NAN } else { f32::NEG_INFINITY };
    }
    let inv_t: Vec<f32> = (0..rows).map(|r| [1.0, 0.7, 2.0, 0.0][r % 4]).collect();
    let (dl, dt) = (g.up(&logits), g.up(&inv_t));
    let (mut values, mut ids, mut stats) = (
        g.stream.alloc_zeros::<f32>(rows * k).unwrap(),
        g.stream.alloc_zeros::<u32>(rows * k).unwrap(),
        g.stream.alloc_zeros::<f32>(rows * 3).unwrap(),
    );
    let mut out = TopkOutputs { values: values.as_view_mut(), ids: ids.as_view_mut(), stats: stats.as_view_mut() };
    g.kernels.logits_topk(&g.stream, &dl.as_view(), &dt.as_view(), k, &mut out).unwrap();
    let TopK { values: want_values, ids: want_ids, stats: want_stats } = reference::logits_topk(&logits, &inv_t, k);
    let what = format!("topk {rows}x{vocab} k={k}");
    assert_eq!(g.down(&ids), want_ids, "{what}: ids");
    assert_eq!(g.down(&values), want_values, "{what}: values (chosen logits, exact)");
    assert_close(&g.down(&stats), &want_stats, 1e-5, 1e-5, &format!("{what}: stats"));
}

#[test]
fn logits_topk_matches_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(17);
    check_topk(&g, 5, 1000, 64, &mut rng);
    check_topk(&g, 3, 151_936, 50, &mut rng);
    check_topk(&g, 4, 50, 50, &mut rng);
    check_topk(&g, 2, 7, 3, &mut rng);
    check_topk(&g, 2, 5000, 1, &mut rng);
}

#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
fn hbm_copy_bandwidth() {
    let Some(g) = gpu() else { return };
    let gbs = g.kernels.measure_copy_bandwidth(&g.stream, 1 << 30).unwrap();
    println!("HBM copy bandwidth: {gbs:.0} GB/s");
    assert!(gbs > 10.0, "a GPU copies faster than {gbs} GB/s");
}
