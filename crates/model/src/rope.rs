//! Rotary position embedding tables (RoFormer, Su et al. 2021), with Llama 3.1 and linear scaling.
//!
//! Frequencies follow transformers' `_compute_default_rope_parameters` / `_compute_llama3_parameters`
//! in f32, so cos/sin match the reference implementation to the last bit or two.

use crate::config::{ModelConfig, RopeScaling};

/// Per-dimension inverse frequencies (length head_dim / 2).
#[derive(Clone, Debug)]
pub struct RopeTable {
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.head_dim;
        let mut inv_freq: Vec<f32> =
            (0..dim / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / dim as f32)).collect();
        match cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        RopeTable { inv_freq }
    }

    /// cos and sin tables [positions.len(), head_dim/2] for the given absolute positions.
    pub fn cos_sin(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }
}

#[cfg(any(test, feature = "cuda"))]
impl RopeTable {
    /// [max_positions, head_dim]: for each position, its cos values then its sin values, the same
    /// f32s [`RopeTable::cos_sin`] gives, for kernels that look positions up on the device.
    pub fn cos_sin_table(&self, max_positions: usize) -> Vec<f32> {
        let positions: Vec<u32> = (0..max_positions as u32).collect();
        let (cos, sin) = self.cos_sin(&positions);
        let half = self.inv_freq.len();
        cos.chunks(half.max(1)).zip(sin.chunks(half.max(1))).flat_map(|(c, s)| c.iter().chain(s).copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let v = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 1, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 10, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let cfg = ModelConfig::from_json(&v).unwrap();
        let scaled = RopeTable::new(&cfg);
        let plain = RopeTable::new(&ModelConfig { rope_scaling: RopeScaling::None, ..cfg });
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - plain.inv_freq[last] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn position_zero_is_identity() {
        let v = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10});
        let t = RopeTable::new(&ModelConfig::from_json(&v).unwrap());
        let (c, s) = t.cos_sin(&[0]);
        assert!(c.iter().all(|&x| x == 1.0) && s.iter().all(|&x| x == 0.0));
        // The device table holds the same values, cos then sin per position.
        let table = t.cos_sin_table(4);
        let (c3, s3) = t.cos_sin(&[3]);
        assert_eq!(table.len(), 4 * 16);
        assert_eq!(table[3 * 16..3 * 16 + 8], c3[..]);
        assert_eq!(table[3 * 16 + 8..4 * 16], s3[..]);
    }
}
