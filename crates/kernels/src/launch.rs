//! The grid and block each kernel is launched with, one function per kernel: the GPU launchers
//! (src/gpu, feature `cuda`) and the emulator tests (tests/emu.rs) both call these, so the
//! emulator runs the kernels with exactly the geometry a GPU gets.

use crate::split::KEY_TILE;

/// A 1-D block of `threads` on a 2-D grid of `grid` (x, y) blocks, no dynamic shared memory
/// (every kernel sizes its shared memory statically).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32),
    pub threads: u32,
}

/// Threads of an elementwise grid-stride kernel's block.
const STRIDE_THREADS: u32 = 256;
/// `silu_mul` blocks per SM: enough to saturate memory, few enough to stay resident at once.
const SILU_BLOCKS_PER_SM: usize = 16;
/// `copy_f32x4` blocks per SM: 8 × 256 threads fill an H100 SM (2048 threads).
const COPY_BLOCKS_PER_SM: usize = 8;

/// `rms_norm` and `add_rms_norm`: a block per row, about 8 columns per thread (enough loads in
/// flight per thread), whole warps, at most a full block. 4096 columns get 512 threads;
/// SmolLM2's 576 get 96.
pub fn rms_norm(rows: u32, cols: u32) -> Launch {
    Launch { grid: (rows, 1), threads: cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024) }
}

/// `silu_mul` over `n` outputs: grid-stride, at most 16 blocks per SM.
pub fn silu_mul(n: u64, num_sms: usize) -> Launch {
    let blocks = n.div_ceil(STRIDE_THREADS as u64).min((num_sms * SILU_BLOCKS_PER_SM) as u64) as u32;
    Launch { grid: (blocks, 1), threads: STRIDE_THREADS }
}

/// `rope_kv_write`: a block of 256 per token row. A Llama-8B row (32 q + 8 kv heads of 128) is
/// 2560 rotation pairs plus 1024 v elements, 14 per thread.
pub fn rope_kv_write(rows: u32) -> Launch {
    Launch { grid: (rows, 1), threads: 256 }
}

/// `paged_attention`: a block per (row, q head, split), one warp per 32 keys of a [`KEY_TILE`].
pub fn paged_attention(rows: u32, num_q_heads: u32, num_splits: u32) -> Launch {
    Launch { grid: (rows * num_q_heads, num_splits), threads: KEY_TILE as u32 }
}

/// `attention_merge`: a block per (row, head) item, a thread per head dimension.
pub fn attention_merge(items: u32, head_dim: u32) -> Launch {
    Launch { grid: (items, 1), threads: head_dim }
}

/// `logits_topk`: one block per row, as wide as a block gets (the row is scanned k + 2 times).
pub fn logits_topk(rows: u32) -> Launch {
    Launch { grid: (rows, 1), threads: 1024 }
}

/// `copy_f32x4` over `n4` float4s: grid-stride, 8 resident blocks per SM.
pub fn copy_f32x4(n4: usize, num_sms: usize) -> Launch {
    let blocks = n4.div_ceil(STRIDE_THREADS as usize).min(num_sms * COPY_BLOCKS_PER_SM) as u32;
    Launch { grid: (blocks, 1), threads: STRIDE_THREADS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_threads_are_whole_warps_up_to_a_block() {
        let threads = |cols| rms_norm(1, cols).threads;
        assert_eq!(threads(1), 32);
        assert_eq!(threads(576), 96);
        assert_eq!(threads(4096), 512);
        assert_eq!(threads(100_000), 1024);
    }

    #[test]
    fn grid_stride_kernels_cap_their_blocks_per_sm() {
        assert_eq!(silu_mul(1000, 132), Launch { grid: (4, 1), threads: 256 });
        assert_eq!(silu_mul(1 << 30, 132).grid.0, 132 * 16);
        assert_eq!(copy_f32x4(1 << 26, 132).grid.0, 132 * 8);
        assert_eq!(paged_attention(3, 8, 4), Launch { grid: (24, 4), threads: 128 });
    }
}
