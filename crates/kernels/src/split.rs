//! Split-K planning for paged attention (FlashDecoding, Dao et al. 2023): when a step has too
//! few (row, head) pairs to fill the GPU, each pair's keys are cut into splits that run as
//! separate blocks, and `attention_merge` combines their partial softmaxes.
//!
//! The partial of one (row, head, split) is `2 + head_dim` f32s: the running max m of the
//! scores, the sum l of exp(score − m), and the unnormalised accumulator Σ exp(score − m)·v.
//! An empty split is (−inf, 0, 0…) and merges as nothing.

/// Keys an attention block covers per step: 4 warps × 32 keys (one key per lane).
/// `keys_per_split` is a multiple of it so splits never share a step.
pub const KEY_TILE: usize = 128;
/// Most splits per launch: enough to spread one long sequence over every SM, few enough that
/// the merge loops over them in shared memory (kernels/paged_attention.cu has the same bound).
pub const MAX_SPLITS: usize = 128;
/// f32s before the accumulator in each partial: m and l.
pub const PARTIAL_HEADER: usize = 2;
/// Splits shorter than this cost more in merge traffic and block start-up than they gain.
const MIN_KEYS_PER_SPLIT: usize = 512;
/// Attention blocks (128 threads, ~5 KB of shared memory) per SM that keep it busy enough to
/// hide memory latency.
const BLOCKS_PER_SM: usize = 4;

/// `(num_splits, keys_per_split)` for a launch of `rows` query rows × `q_heads` heads whose
/// longest context is `max_context` keys, on a GPU with `num_sms` SMs. One split unless the
/// (row, head) pairs leave SMs idle and contexts are long; then just enough splits, each a
/// multiple of [`KEY_TILE`] long, to give every SM `BLOCKS_PER_SM` (4) blocks.
/// Always `num_splits · keys_per_split ≥ max_context`.
pub fn plan_splits(rows: usize, q_heads: usize, max_context: usize, num_sms: usize) -> (usize, usize) {
    let context = max_context.max(1);
    let whole = (1, context.next_multiple_of(KEY_TILE));
    let (items, target) = (rows * q_heads, num_sms * BLOCKS_PER_SM);
    if items == 0 || items >= target || context <= MIN_KEYS_PER_SPLIT {
        return whole;
    }
    let want = target.div_ceil(items).min(context.div_ceil(MIN_KEYS_PER_SPLIT)).min(MAX_SPLITS);
    let keys_per_split = context.div_ceil(want).next_multiple_of(KEY_TILE);
    (context.div_ceil(keys_per_split), keys_per_split)
}

/// f32s of split-K workspace a launch needs: none with one split (the kernel writes the output
/// directly), else one partial per (row, head, split).
pub fn workspace_len(rows: usize, q_heads: usize, head_dim: usize, num_splits: usize) -> usize {
    if num_splits > 1 {
        rows * q_heads * num_splits * (PARTIAL_HEADER + head_dim)
    } else {
        0
    }
}

/// Keys `[start, end)` that split `split` of a row with `visible` keys covers. The last split
/// also takes any keys past `num_splits · keys_per_split`, so no key is ever dropped whatever
/// the caller planned (with one split, `keys_per_split` does not matter).
pub fn split_range(split: usize, num_splits: usize, keys_per_split: usize, visible: usize) -> (usize, usize) {
    let start = (split * keys_per_split).min(visible);
    let end = if split + 1 == num_splits { visible } else { ((split + 1) * keys_per_split).min(visible) };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_context_in_whole_tiles() {
        for sms in [1, 16, 132] {
            for rows in [1, 2, 7, 64, 512] {
                for heads in [1, 8, 32] {
                    for ctx in [0, 1, 127, 128, 129, 511, 512, 513, 4000, 32768, 131072, 1 << 20] {
                        let (n, kps) = plan_splits(rows, heads, ctx, sms);
                        assert!((1..=MAX_SPLITS).contains(&n), "{rows}x{heads} ctx {ctx}: {n} splits");
                        assert!(kps >= KEY_TILE && kps.is_multiple_of(KEY_TILE));
                        assert!(n * kps >= ctx, "{rows}x{heads} ctx {ctx}: {n} × {kps} misses keys");
                        assert!((n - 1) * kps < ctx.max(1), "{rows}x{heads} ctx {ctx}: an always-empty split");
                        if n > 1 {
                            assert!(rows * heads < sms * BLOCKS_PER_SM && ctx > MIN_KEYS_PER_SPLIT);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn splits_only_when_the_gpu_would_idle_on_long_contexts() {
        // One decode row × 8 heads at 32k context on 132 SMs: 8 items, 528 wanted blocks.
        let (n, kps) = plan_splits(1, 8, 32768, 132);
        assert_eq!((n, kps), (64, 512));
        assert_eq!(plan_splits(256, 32, 32768, 132).0, 1, "a full batch needs no splits");
        assert_eq!(plan_splits(1, 8, 300, 132).0, 1, "a short context needs no splits");
    }

    #[test]
    fn split_ranges_partition_the_keys() {
        for visible in [1, 5, 128, 300, 1000] {
            for (n, kps) in [(1, 128), (3, 128), (8, 128), (2, 256)] {
                let mut next = 0;
                for s in 0..n {
                    let (a, b) = split_range(s, n, kps, visible);
                    assert!(a <= b);
                    if a < b {
                        assert_eq!(a, next, "splits are contiguous");
                        next = b;
                    }
                }
                assert_eq!(next, visible, "{visible} keys, {n} × {kps}");
            }
        }
        assert_eq!(workspace_len(3, 4, 64, 1), 0);
        assert_eq!(workspace_len(3, 4, 64, 2), 3 * 4 * 2 * 66);
    }
}
