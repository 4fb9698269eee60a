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
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    /// Built on the first constrained request (the token trie takes a moment to build), and
    /// shared with front ends, which compile their requests' constraints on their own threads.
    grammars: SharedGrammars,
    guides: HashMap<RequestId, Guide>,
    /// What masks were computed, for `mask_seconds`.
    masks: u64,
    mask_time: std::time::Duration,
}

impl GuidedRequests {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Self {
        GuidedRequests {
            grammars: SharedGrammars::new(Arc::clone(&tokenizer), vocab_size),
            tokenizer,
            vocab_size,
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
                    self.eos_only()
                }
            };
            masks.allowed.insert(id, words);
            self.masks += 1;
        }
        self.mask_time += start.elapsed();
        masks
    }

    /// A mask allowing only the end-of-sequence tokens.
    fn eos_only(&self) -> Vec<u32> {
        let mut words = vec![0u32; self.vocab_size.div_ceil(32)];
        for &t in self.tokenizer.eos_token_ids() {
            words[t as usize / 32] |= 1 << (t % 32);
        }
        words
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
