//! Workloads: synthetic prompts of an exact token length, sent as token ids, the same behind
//! a few shared prefixes (to measure prefix caching), or a dataset's text prompts
//! ([`crate::dataset`]) replayed in a seeded order.
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

/// Shared prefixes ahead of random prompts, like vLLM's `prefix_repetition` dataset: a server
/// that caches prefixes computes each prefix's KV once, so comparing its TTFT and throughput
/// with the plain random workload's shows what the cache saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixSpec {
    /// Tokens in each prefix (the prompt's unique random suffix is [`WorkloadSpec::input_len`]).
    pub prefix_len: usize,
    /// Distinct prefixes; every request starts with one of them.
    pub num_prefixes: usize,
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
    /// A random prompt of the spec's lengths after one of `prefixes`, which take turns in a
    /// seeded shuffle, reshuffled each round.
    Prefixed {
        spec: WorkloadSpec,
        prefixes: Vec<Vec<u32>>,
        order: Vec<usize>,
        next: usize,
    },
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

/// Why `spec` cannot make prompts, if it cannot.
fn check(spec: &WorkloadSpec) -> Result<(), String> {
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
    Ok(())
}

/// `len` ids drawn uniformly from `ids`.
fn random_ids(ids: &Range<u32>, len: usize, rng: &mut StdRng) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(ids.clone())).collect()
}

/// A random prompt of `spec`'s lengths after `prefix`: the ids and `max_tokens`.
fn random_request(spec: &WorkloadSpec, prefix: &[u32], rng: &mut StdRng) -> RequestSpec {
    let input = rng.random_range(length_range(spec.input_len, spec.random_range));
    let max_tokens = rng.random_range(length_range(spec.output_len, spec.random_range));
    let mut prompt = prefix.to_vec();
    prompt.extend(random_ids(&spec.token_ids, input, rng));
    RequestSpec { prompt: Prompt::TokenIds(prompt), max_tokens }
}

/// The index of the next of `n` items when each round takes every item once, in a new seeded
/// shuffle (`order` and `next` keep the round's place).
fn next_in_rounds(n: usize, order: &mut Vec<usize>, next: &mut usize, rng: &mut StdRng) -> usize {
    if *next == order.len() {
        *order = (0..n).collect();
        order.shuffle(rng);
        *next = 0;
    }
    *next += 1;
    order[*next - 1]
}

impl Workload {
    pub fn new(spec: WorkloadSpec, seed: u64) -> Result<Workload, String> {
        check(&spec)?;
        Ok(Workload { source: Source::Random(spec), rng: StdRng::seed_from_u64(seed) })
    }

    /// `spec`'s random prompts (its lengths are the suffix's), each after one of
    /// `prefix.num_prefixes` prefixes of `prefix.prefix_len` random ids drawn once from the
    /// seed. Every round of `num_prefixes` requests uses each prefix once, in a new seeded
    /// shuffle. vLLM shuffles one list holding each prefix `requests/num_prefixes` times;
    /// rounds give the same balance without knowing the request count (a `--duration` run's
    /// is unknown), with a prefix's uses never more than `2·num_prefixes − 1` requests apart.
    pub fn prefix_repetition(spec: WorkloadSpec, prefix: PrefixSpec, seed: u64) -> Result<Workload, String> {
        check(&spec)?;
        if prefix.prefix_len == 0 || prefix.num_prefixes == 0 {
            return Err("the prefix length and the number of prefixes must be at least 1".into());
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let prefixes =
            (0..prefix.num_prefixes).map(|_| random_ids(&spec.token_ids, prefix.prefix_len, &mut rng)).collect();
        let source = Source::Prefixed { spec, prefixes, order: Vec::new(), next: 0 };
        Ok(Workload { source, rng })
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
            Source::Random(spec) => random_request(spec, &[], &mut self.rng),
            Source::Prefixed { spec, prefixes, order, next } => {
                let i = next_in_rounds(prefixes.len(), order, next, &mut self.rng);
                random_request(spec, &prefixes[i], &mut self.rng)
            }
            Source::Replay { dataset, order, next } => {
                dataset.requests[next_in_rounds(dataset.requests.len(), order, next, &mut self.rng)].clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

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

    fn prefixed(seed: u64, prefix_len: usize, num_prefixes: usize) -> Workload {
        let prefix = PrefixSpec { prefix_len, num_prefixes };
        Workload::prefix_repetition(spec(8, 4, 0.0), prefix, seed).unwrap()
    }

    fn ids(r: RequestSpec) -> Vec<u32> {
        let Prompt::TokenIds(ids) = r.prompt else { panic!("prefixed prompts are token ids") };
        ids
    }

    #[test]
    fn prefixed_prompts_are_a_shared_prefix_then_a_unique_suffix() {
        let mut w = prefixed(5, 32, 4);
        let prompts: Vec<Vec<u32>> = (0..40).map(|_| ids(w.next_request())).collect();
        assert!(prompts.iter().all(|p| p.len() == 32 + 8), "prefix + suffix tokens");
        assert!(prompts.iter().flatten().all(|id| (4915..24576).contains(id)));
        // Each round of 4 uses every prefix once, so 40 requests use each 10 times.
        let mut groups: BTreeMap<&[u32], Vec<&[u32]>> = BTreeMap::new();
        for p in &prompts {
            groups.entry(&p[..32]).or_default().push(&p[32..]);
        }
        assert_eq!(groups.len(), 4);
        assert!(groups.values().all(|suffixes| suffixes.len() == 10));
        for round in prompts.chunks(4) {
            let firsts: BTreeSet<&[u32]> = round.iter().map(|p| &p[..32]).collect();
            assert_eq!(firsts.len(), 4, "every prefix once per round");
        }
        // Prefixes share nothing with each other (random ids), so a cache can only reuse a
        // request's own group's prefix; suffixes are all different.
        let prefixes: Vec<&[u32]> = groups.keys().copied().collect();
        for (i, a) in prefixes.iter().enumerate() {
            assert!(prefixes[i + 1..].iter().all(|b| a[0] != b[0]), "{prefixes:?}");
        }
        let suffixes: BTreeSet<&[u32]> = prompts.iter().map(|p| &p[32..]).collect();
        assert_eq!(suffixes.len(), 40);
    }

    #[test]
    fn prefixed_lengths_count_the_prefix_and_vary_only_the_suffix() {
        let prefix = PrefixSpec { prefix_len: 100, num_prefixes: 2 };
        let mut w = Workload::prefix_repetition(spec(20, 10, 0.5), prefix, 3).unwrap();
        let reqs: Vec<RequestSpec> = (0..500).map(|_| w.next_request()).collect();
        let lens: BTreeSet<usize> = reqs.iter().map(|r| r.prompt.input_tokens()).collect();
        assert_eq!((lens.first(), lens.last()), (Some(&110), Some(&130)));
        assert!(reqs.iter().all(|r| (5..=15).contains(&r.max_tokens)));
    }

    #[test]
    fn a_seed_fixes_the_prefixes_and_the_sequence() {
        let draw = |seed| {
            let mut w = prefixed(seed, 16, 3);
            (0..9).map(|_| w.next_request()).collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        let (a, b) = (draw(11), draw(12));
        let prefixes =
            |reqs: Vec<RequestSpec>| reqs.into_iter().map(|r| ids(r)[..16].to_vec()).collect::<BTreeSet<_>>();
        assert!(prefixes(a).is_disjoint(&prefixes(b)), "another seed, other prefixes");
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(Workload::new(spec(0, 4, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 0, 0.0), 0).is_err());
        assert!(Workload::new(spec(4, 4, 1.0), 0).is_err());
        assert!(Workload::new(WorkloadSpec { token_ids: token_range(1), ..spec(4, 4, 0.0) }, 0).is_err());
        let refused = |prefix_len, num_prefixes, spec| {
            Workload::prefix_repetition(spec, PrefixSpec { prefix_len, num_prefixes }, 0).is_err()
        };
        assert!(refused(0, 4, spec(4, 4, 0.0)));
        assert!(refused(16, 0, spec(4, 4, 0.0)));
        assert!(refused(16, 4, spec(0, 4, 0.0)), "a unique suffix needs at least one token");
        assert!(!refused(16, 4, spec(4, 4, 0.0)));
    }
}
