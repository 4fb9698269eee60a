//! Synthetic workloads: prompts of an exact token length, sent as token ids.
//!
//! Sending ids instead of text makes the input length exact on any server and tokenizer-free
//! here (text of N tokens re-tokenizes to a different N). Ids are drawn uniformly from
//! `[vocab/10, vocab/2)`: away from the low ids where tokenizers keep special tokens (BOS, EOS,
//! chat markers) and from the top where added tokens live. Every draw comes from one seeded
//! RNG, so a seed gives the same request sequence on every run and every server.

use std::ops::{Range, RangeInclusive};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What requests to make.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// Prompt tokens (the centre of the range when `random_range` > 0).
    pub input_len: usize,
    /// Tokens to generate (`max_tokens`, with EOS ignored).
    pub output_len: usize,
    /// Lengths are uniform in `[len·(1−R), len·(1+R)]`; 0 makes them fixed. In [0, 1).
    pub random_range: f64,
    /// Token ids to draw prompts from (see [`token_range`]).
    pub token_ids: Range<u32>,
}

/// One request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
}

/// The ids prompts are drawn from for a vocabulary of `vocab` tokens: `[vocab/10, vocab/2)`.
pub fn token_range(vocab: u32) -> Range<u32> {
    vocab / 10..vocab / 2
}

/// Lengths `[len·(1−r), len·(1+r)]` as whole tokens, never below 1.
pub fn length_range(len: usize, r: f64) -> RangeInclusive<usize> {
    // The epsilon keeps e.g. 10 · 0.9 = 9.000000000000002 from rounding up to 10.
    let lo = ((len as f64 * (1.0 - r)) - 1e-9).ceil().max(1.0) as usize;
    let hi = ((len as f64 * (1.0 + r)) + 1e-9).floor() as usize;
    lo..=hi.max(lo)
}

/// An endless, seeded request sequence.
pub struct Workload {
    spec: WorkloadSpec,
    rng: StdRng,
}

impl Workload {
    pub fn new(spec: WorkloadSpec, seed: u64) -> Result<Workload, String> {
        if spec.input_len == 0 || spec.output_len == 0 {
            return Err("input and output lengths must be at least 1".into());
        }
        if !(0.0..1.0).contains(&spec.random_range) {
            return Err(format!("random range {} is not in [0, 1)", spec.random_range));
        }
        if spec.token_ids.is_empty() {
            let ids = &spec.token_ids;
            return Err(format!("no token ids to draw prompts from ({ids:?}); is the vocabulary size right?"));
        }
        Ok(Workload { spec, rng: StdRng::seed_from_u64(seed) })
    }

    /// The next request of the sequence.
    pub fn next_request(&mut self) -> RequestSpec {
        let input = self.rng.random_range(length_range(self.spec.input_len, self.spec.random_range));
        let max_tokens = self.rng.random_range(length_range(self.spec.output_len, self.spec.random_range));
        let ids = self.spec.token_ids.clone();
        let prompt = (0..input).map(|_| self.rng.random_range(ids.clone())).collect();
        RequestSpec { prompt, max_tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(input_len: usize, output_len: usize, random_range: f64) -> WorkloadSpec {
        WorkloadSpec { input_len, output_len, random_range, token_ids: token_range(49152) }
    }

    #[test]
    fn fixed_lengths_are_exact_and_ids_avoid_special_tokens() {
        let mut w = Workload::new(spec(16, 8, 0.0), 1).unwrap();
        for _ in 0..50 {
            let r = w.next_request();
            assert_eq!((r.prompt.len(), r.max_tokens), (16, 8));
            assert!(r.prompt.iter().all(|id| (4915..24576).contains(id)), "{:?}", r.prompt);
        }
    }

    #[test]
    fn random_lengths_stay_in_range_and_cover_it() {
        assert_eq!(length_range(10, 0.1), 9..=11);
        assert_eq!(length_range(100, 0.5), 50..=150);
        assert_eq!(length_range(1, 0.9), 1..=1);
        assert_eq!(length_range(7, 0.0), 7..=7);
        let mut w = Workload::new(spec(100, 20, 0.5), 7).unwrap();
        let lens: Vec<usize> = (0..2000).map(|_| w.next_request().prompt.len()).collect();
        assert!(lens.iter().all(|l| (50..=150).contains(l)));
        assert_eq!((*lens.iter().min().unwrap(), *lens.iter().max().unwrap()), (50, 150));
    }

    #[test]
    fn a_seed_fixes_the_sequence() {
        let draw = |seed| {
            let mut w = Workload::new(spec(32, 4, 0.3), seed).unwrap();
            (0..5).map(|_| w.next_request()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(Workload::new(spec(0, 4, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 0, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 4, 1.0), 0).is_err());
        assert!(Workload::new(WorkloadSpec { token_ids: token_range(1), ..spec(4, 4, 0.0) }, 0).is_err());
    }
}
