//! Workloads: synthetic prompts of an exact token length, sent as token ids, or a dataset's
//! text prompts ([`crate::dataset`]) replayed in a seeded order.
//!
//! Sending ids instead of text makes the input length exact on any server and tokenizer-free
//! here (text of N tokens re-tokenizes to a different N). Ids are drawn uniformly from
//! `[vocab/10, vocab/2)`: away from the low ids where tokenizers keep special tokens (BOS, EOS,
//! chat markers) and from the top where added tokens live. Every draw comes from one seeded
//! RNG, so a seed gives the same request sequence on every run and every server.

use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::dataset::Dataset;

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

/// What a request's prompt is sent as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Token ids (exact length on any server).
    TokenIds(Vec<u32>),
    /// Text, with its length in tokens as the benchmark's tokenizer counts it.
    Text { text: String, tokens: usize },
}

impl Prompt {
    /// Prompt tokens, for the input-token counts and throughputs.
    pub fn input_tokens(&self) -> usize {
        match self {
            Prompt::TokenIds(ids) => ids.len(),
            Prompt::Text { tokens, .. } => *tokens,
        }
    }
}

/// One request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub prompt: Prompt,
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

/// Where a workload's requests come from.
enum Source {
    Random(WorkloadSpec),
    /// A dataset's requests in a seeded shuffle, reshuffled each time round.
    Replay {
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        next: usize,
    },
}

/// An endless, seeded request sequence.
pub struct Workload {
    source: Source,
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
        Ok(Workload { source: Source::Random(spec), rng: StdRng::seed_from_u64(seed) })
    }

    /// `dataset`'s requests, each once in a seeded order before any repeats (vLLM samples a
    /// dataset the same way).
    pub fn replay(dataset: Arc<Dataset>, seed: u64) -> Result<Workload, String> {
        if dataset.requests.is_empty() {
            return Err(format!("dataset {} has no requests", dataset.name));
        }
        let source = Source::Replay { dataset, order: Vec::new(), next: 0 };
        Ok(Workload { source, rng: StdRng::seed_from_u64(seed) })
    }

    /// The next request of the sequence.
    pub fn next_request(&mut self) -> RequestSpec {
        match &mut self.source {
            Source::Random(spec) => {
                let input = self.rng.random_range(length_range(spec.input_len, spec.random_range));
                let max_tokens = self.rng.random_range(length_range(spec.output_len, spec.random_range));
                let ids = spec.token_ids.clone();
                let prompt = (0..input).map(|_| self.rng.random_range(ids.clone())).collect();
                RequestSpec { prompt: Prompt::TokenIds(prompt), max_tokens }
            }
            Source::Replay { dataset, order, next } => {
                if *next == order.len() {
                    *order = (0..dataset.requests.len()).collect();
                    order.shuffle(&mut self.rng);
                    *next = 0;
                }
                *next += 1;
                dataset.requests[order[*next - 1]].clone()
            }
        }
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
            let Prompt::TokenIds(ids) = &r.prompt else { panic!("random prompts are token ids") };
            assert_eq!((ids.len(), r.max_tokens), (16, 8));
            assert!(ids.iter().all(|id| (4915..24576).contains(id)), "{ids:?}");
        }
    }

    #[test]
    fn random_lengths_stay_in_range_and_cover_it() {
        assert_eq!(length_range(10, 0.1), 9..=11);
        assert_eq!(length_range(100, 0.5), 50..=150);
        assert_eq!(length_range(1, 0.9), 1..=1);
        assert_eq!(length_range(7, 0.0), 7..=7);
        let mut w = Workload::new(spec(100, 20, 0.5), 7).unwrap();
        let lens: Vec<usize> = (0..2000).map(|_| w.next_request().prompt.input_tokens()).collect();
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
    fn a_dataset_replays_every_request_once_per_round_in_a_seeded_order() {
        let text = |i: usize| Prompt::Text { text: format!("prompt {i}"), tokens: i + 1 };
        let requests = (0..5).map(|i| RequestSpec { prompt: text(i), max_tokens: 10 + i }).collect();
        let dataset = Arc::new(Dataset { name: "test".into(), requests });
        let draw = |seed| {
            let mut w = Workload::replay(Arc::clone(&dataset), seed).unwrap();
            (0..10).map(|_| w.next_request().max_tokens).collect::<Vec<_>>()
        };
        let (a, b) = (draw(1), draw(1));
        assert_eq!(a, b);
        assert_ne!(a, draw(2));
        for round in a.chunks(5) {
            let mut sorted = round.to_vec();
            sorted.sort();
            assert_eq!(sorted, [10, 11, 12, 13, 14], "each request once per round: {a:?}");
        }
        let empty = Arc::new(Dataset { name: "empty".into(), requests: vec![] });
        assert!(Workload::replay(empty, 0).is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(Workload::new(spec(0, 4, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 0, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 4, 1.0), 0).is_err());
        assert!(Workload::new(WorkloadSpec { token_ids: token_range(1), ..spec(4, 4, 0.0) }, 0).is_err());
    }
}
