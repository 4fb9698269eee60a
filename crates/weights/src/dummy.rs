//! Deterministic random weights for benchmarking and tests without a checkpoint.
//!
//! Every row of every tensor comes from its own RNG seeded by (seed, tensor name, row), so all
//! ranks generating the same tensor agree bit-for-bit and a `Rows`/`Cols` slice equals the same
//! slice of the `Full` tensor, without any rank ever materializing more than its share.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::{IndexedParallelIterator, IntoParallelIterator, ParallelIterator, ParallelSliceMut};

use crate::error::{Result, WeightsError};
use crate::source::{Slice, WeightSource};

/// Random weights shaped by whatever the caller asks for, described by a given HF config.
pub struct DummySource {
    config: serde_json::Value,
    seed: u64,
}

/// FNV-1a: a tiny hash that is stable across Rust versions and platforms (unlike `DefaultHasher`),
/// which matters because ranks may run on different hosts.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64 finalizer, used to decorrelate neighbouring (name, row) seeds.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DummySource {
    pub fn new(config: serde_json::Value, seed: u64) -> Self {
        DummySource { config, seed }
    }

    fn tied(&self) -> bool {
        self.config["tie_word_embeddings"].as_bool().unwrap_or(false)
    }

    /// Fills `out` with row `row` of tensor `name`: `center` plus uniform noise in ±`scale`.
    fn fill_row(&self, name: &str, row: usize, center: f32, scale: f32, out: &mut [f32]) {
        let mut rng = StdRng::seed_from_u64(mix(mix(self.seed ^ fnv1a(name)) ^ row as u64));
        for v in out.iter_mut() {
            *v = center + scale * rng.random_range(-1.0f32..1.0);
        }
    }
}

/// (center, half-width) of the values for a tensor: norms near 1, biases small, matrices scaled
/// like a standard init so activations stay finite through many layers.
fn distribution(name: &str, shape: &[usize]) -> (f32, f32) {
    if name.ends_with("norm.weight") {
        (1.0, 0.1)
    } else if name.ends_with(".bias") {
        (0.0, 0.02)
    } else {
        let fan_in = shape[1..].iter().product::<usize>().max(1);
        let fan_in = if shape.len() == 1 { shape[0] } else { fan_in };
        (0.0, 1.0 / (fan_in as f32).sqrt())
    }
}

impl WeightSource for DummySource {
    fn config(&self) -> &serde_json::Value {
        &self.config
    }

    fn contains(&self, name: &str) -> bool {
        !(name == "lm_head.weight" && self.tied())
    }

    fn load(&self, name: &str, full_shape: &[usize], slice: &Slice, dtype: DType, device: &Device) -> Result<Tensor> {
        let file = self.describe();
        if !self.contains(name) {
            return Err(WeightsError::MissingTensor {
                name: name.to_string(),
                file: format!("{file} (tie_word_embeddings is true)"),
            });
        }
        let out_shape = slice.output_shape(full_shape, name, &file)?;
        let (center, scale) = distribution(name, full_shape);
        let data = if full_shape.len() <= 1 {
            // A vector is one "row": generate it whole (it is small) and cut the range.
            let n = full_shape.first().copied().unwrap_or(1);
            let mut v = vec![0f32; n];
            self.fill_row(name, 0, center, scale, &mut v);
            match slice {
                Slice::Rows(r) => v[r.clone()].to_vec(),
                _ => v,
            }
        } else {
            // Rows are seeded independently, so they fill in parallel (an 8B-parameter model is
            // 8G draws) and the result does not depend on the thread count.
            let width = full_shape[1..].iter().product::<usize>();
            let rows = match slice {
                Slice::Rows(r) => r.clone(),
                _ => 0..full_shape[0],
            };
            let cols = match slice {
                Slice::Cols(c) => c.clone(),
                _ => 0..width,
            };
            let mut data = vec![0f32; rows.len() * cols.len()];
            data.par_chunks_mut(cols.len().max(1)).zip(rows.into_par_iter()).for_each_init(
                || vec![0f32; width],
                |row_buf, (out, row)| {
                    self.fill_row(name, row, center, scale, row_buf);
                    out.copy_from_slice(&row_buf[cols.clone()]);
                },
            );
            data
        };
        // Converted before the copy: a GPU receives bf16, half the bytes.
        Tensor::from_vec(data, out_shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(device))
            .map_err(|e| WeightsError::candle(name, &file, e))
    }

    fn describe(&self) -> String {
        format!("dummy (seed {})", self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_and_column_slices_equal_slices_of_the_whole_tensor() {
        let src = DummySource::new(serde_json::json!({}), 7);
        let load = |slice: Slice| -> Vec<Vec<f32>> {
            let t = src.load("model.layers.0.mlp.up_proj.weight", &[6, 10], &slice, DType::F32, &Device::Cpu).unwrap();
            t.to_vec2().unwrap()
        };
        let full = load(Slice::Full);
        assert_eq!(load(Slice::Rows(2..5)), full[2..5].to_vec());
        let cols: Vec<Vec<f32>> = full.iter().map(|r| r[3..8].to_vec()).collect();
        assert_eq!(load(Slice::Cols(3..8)), cols);
        assert!(full.iter().flatten().all(|v| v.abs() <= 1.0 / 10f32.sqrt()));
        assert_ne!(full[0], full[1], "rows are drawn independently");
    }
}
