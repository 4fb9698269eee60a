//! Undoing llama.cpp's q/k row permutation.
//!
//! llama.cpp's converter stores attn_q/attn_k rows for its interleaved ("GPT-J style") rope:
//! `w.reshape(n_head, 2, head_dim/2, ..).swapaxes(1, 2)`. Inside each head, GGUF row
//! `i*2 + j` (i < head_dim/2, j < 2) is HF row `j*(head_dim/2) + i`. We run the HF (half-split)
//! rope, so rows are put back in HF order at load time.

use candle_core::{Device, Tensor};

/// For `n_rows` rows made of heads of `head_dim` rows, the GGUF row each HF row comes from
/// (suitable for `index_select` along dim 0).
pub(crate) fn unpermute_index(n_rows: usize, head_dim: usize) -> Vec<u32> {
    let half = head_dim / 2;
    (0..n_rows)
        .map(|hf_row| {
            let head = hf_row / head_dim;
            let within = hf_row % head_dim;
            let (j, i) = (within / half, within % half);
            (head * head_dim + i * 2 + j) as u32
        })
        .collect()
}

/// Reorders dim 0 of `t` (1-D bias or 2-D weight, whole heads only) from GGUF to HF order.
pub(crate) fn unpermute_rows(t: &Tensor, head_dim: usize) -> candle_core::Result<Tensor> {
    let n_rows = t.dim(0)?;
    let idx = unpermute_index(n_rows, head_dim);
    let idx = Tensor::from_vec(idx, n_rows, &Device::Cpu)?;
    t.index_select(&idx, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the converter's forward permutation literally (reshape/swap/reshape on indices)
    /// and checks our inverse undoes it.
    #[test]
    fn inverse_of_llama_cpp_permutation() {
        let (n_head, head_dim) = (3usize, 8usize);
        let n = n_head * head_dim;
        // forward: gguf[h][i][j] = hf[h][j][i] with hf viewed as (n_head, 2, head_dim/2).
        let half = head_dim / 2;
        let mut gguf_from_hf = vec![0usize; n];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..half {
                    let hf = h * head_dim + j * half + i;
                    let g = h * head_dim + i * 2 + j;
                    gguf_from_hf[g] = hf;
                }
            }
        }
        let idx = unpermute_index(n, head_dim);
        for (hf_row, &g) in idx.iter().enumerate() {
            assert_eq!(gguf_from_hf[g as usize], hf_row);
        }
        // Permutation of 0..n.
        let mut sorted = idx.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
    }

    #[test]
    fn unpermute_rows_moves_whole_rows() {
        let t = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((4, 2)).unwrap();
        // head_dim 4: GGUF rows [a0 b0 a1 b1] -> HF [a0 a1 b0 b1], i.e. rows 0,2,1,3.
        let u = unpermute_rows(&t, 4).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(u, vec![vec![0., 1.], vec![4., 5.], vec![2., 3.], vec![6., 7.]]);
    }
}
