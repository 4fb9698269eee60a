//! Structured outputs on the engine's side (vLLM's structured-output manager): each
//! constrained request's guide lives here, on rank 0. When a step is planned, every
//! constrained request in it is marked masked; while the step's forward runs, the engine
//! computes each one's mask of the tokens its next sample may take (on its own thread, see
//! `Engine::step`), and the masks follow the plan to whichever rank samples, where the
//! sampler draws only among those tokens. When the token comes back, the guide moves past it.
//! A recomputed request keeps its guide: recomputation rebuilds K/V, never tokens already
//! drawn.

use std::collections::HashMap;
use std::sync::Arc;

use shardline_exec::{RequestId, ScheduledRequest, StepMasks, StepPlan};
use shardline_structured::{Constraint, Guide, SharedGrammars};
use shardline_tokenizer::Tokenizer;

use crate::error::{EngineError, Result};

pub(crate) struct GuidedRequests {
    /// The mask a request falls back to when its guide fails: only the engine's
    /// end-of-sequence ids (the tokenizer's and the model config's), so the request ends.
    eos_only: Vec<u32>,
    /// Built on the first constrained request (the token trie takes a moment to build), and
    /// shared with front ends, which compile their requests' constraints on their own threads.
    grammars: SharedGrammars,
    guides: HashMap<RequestId, Guide>,
    /// What masks were computed, for `mask_seconds`.
    masks: u64,
    mask_time: std::time::Duration,
}

impl GuidedRequests {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, eos_token_ids: &[u32]) -> Self {
        let mut eos_only = vec![0u32; vocab_size.div_ceil(32)];
        for &t in eos_token_ids.iter().filter(|&&t| (t as usize) < vocab_size) {
            eos_only[t as usize / 32] |= 1 << (t % 32);
        }
        GuidedRequests {
            grammars: SharedGrammars::new(tokenizer, vocab_size),
            eos_only,
            guides: HashMap::new(),
            masks: 0,
            mask_time: Default::default(),
        }
    }

    /// Compiles `constraint` (on the engine's thread: front ends that can compile on their own
    /// through [`GuidedRequests::grammars`]); a malformed one is the request's error (a 400).
    pub(crate) fn compile(&self, constraint: &Constraint) -> Result<Guide> {
        self.grammars.guide(constraint).map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    pub(crate) fn grammars(&self) -> &SharedGrammars {
        &self.grammars
    }

    pub(crate) fn insert(&mut self, id: RequestId, guide: Guide) {
        self.guides.insert(id, guide);
    }

    pub(crate) fn remove(&mut self, id: RequestId) {
        self.guides.remove(&id);
    }

    /// Marks each constrained request of `plan` masked; returns their ids (empty when the
    /// plan has none, and no masks follow it).
    pub(crate) fn mark(&self, plan: &mut StepPlan, samples: impl Fn(&ScheduledRequest) -> bool) -> Vec<RequestId> {
        if self.guides.is_empty() {
            return Vec::new();
        }
        let mut masked = Vec::new();
        for s in &mut plan.scheduled {
            // A prompt chunk that stops short of the prompt's end samples nothing: no mask.
            s.masked = self.guides.contains_key(&s.id) && samples(s);
            if s.masked {
                masked.push(s.id);
            }
        }
        masked
    }

    /// The mask of each of `ids` (requests [`GuidedRequests::mark`] returned) for its next
    /// sample. A guide that fails, or that no token of the vocabulary can continue, allows
    /// only end-of-sequence, which ends the request instead of the step.
    pub(crate) fn masks(&mut self, ids: &[RequestId]) -> StepMasks {
        let start = std::time::Instant::now();
        let mut masks = StepMasks::default();
        for &id in ids {
            let words = match self.guides.get_mut(&id).map(|g| g.allowed()) {
                Some(Ok(mask)) if mask.count() > 0 => mask.words().to_vec(),
                outcome => {
                    let why = match outcome {
                        Some(Err(e)) => e.to_string(),
                        Some(Ok(_)) => "no token can continue it".into(),
                        None => "its guide is gone".into(),
                    };
                    tracing::warn!(request = id, "structured output ended early: {why}");
                    self.eos_only.clone()
                }
            };
            masks.allowed.insert(id, words);
            self.masks += 1;
        }
        self.mask_time += start.elapsed();
        masks
    }

    /// Moves request `id`'s guide past `token`; true when its output is complete (or the
    /// guide cannot go on), so the request stops.
    pub(crate) fn advance(&mut self, id: RequestId, token: u32) -> bool {
        let Some(guide) = self.guides.get_mut(&id) else { return false };
        match guide.advance(token) {
            Ok(()) => guide.is_finished(),
            Err(e) => {
                tracing::warn!(request = id, "structured output stopped: {e}");
                true
            }
        }
    }

    /// Masks computed so far and the seconds they took.
    pub(crate) fn mask_stats(&self) -> (u64, f64) {
        (self.masks, self.mask_time.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose guide failed (here: is gone) may only end, by any of the engine's
    /// end-of-sequence ids: the tokenizer's and the model config's. The tiny tokenizer names
    /// none, so without the config's ids its fallback mask would allow nothing at all.
    #[test]
    fn a_failed_guide_allows_only_the_engines_end_of_sequence_ids() {
        let dir = tempfile::tempdir().unwrap();
        let json = shardline_tokenizer::testing::tiny_tokenizer_json(300);
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
        let mut eos = tokenizer.eos_token_ids().to_vec();
        eos.extend([2, 257]);
        let mut guided = GuidedRequests::new(tokenizer, 300, &eos);
        let masks = guided.masks(&[7]);
        let words = &masks.allowed[&7];
        let allowed: Vec<u32> = (0..300).filter(|&t| words[t as usize / 32] >> (t % 32) & 1 == 1).collect();
        eos.sort_unstable();
        eos.dedup();
        assert_eq!(allowed, eos);
    }
}
