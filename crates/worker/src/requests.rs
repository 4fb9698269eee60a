//! What a rank knows of each request between steps (vLLM's `CachedRequestState`), kept current
//! from the step plans: a request arrives once with its tokens, table and sampling settings,
//! then each step appends the tokens and blocks it names. Every rank of a group applies the
//! same plans in the same order, so all agree without asking rank 0 again. A structured
//! output's mask is not in the plan: it comes once the logits are ready (see
//! `shardline_exec::StepMasks`) and is set just before sampling.

use std::collections::HashMap;

use shardline_exec::{ExecutorError, MasksError, RequestId, StepMasks, StepPlan};
use shardline_model::SeqInput;
use shardline_sampling::Sampler;

pub struct RequestState {
    /// The prompt, then every generated token the plans have named.
    pub tokens: Vec<u32>,
    /// Leading tokens whose K/V are in the cache (after the step being run).
    pub num_computed: usize,
    pub block_ids: Vec<u32>,
    pub sampler: Sampler,
    /// Constrained by a structured output this step: its sample waits for a mask.
    pub masked: bool,
    /// This step's structured-output mask, once it came (see [`RequestTable::set_masks`]).
    pub allowed_tokens: Option<Vec<u32>>,
}

/// The step being run, flattened for the model: one input per scheduled request, which
/// requests get a token sampled (those whose computed tokens reach their end), in batch order,
/// and the rows that score prompt tokens.
#[derive(Debug)]
pub struct PreparedStep {
    pub inputs: Vec<SeqInput>,
    pub sampled: Vec<RequestId>,
    pub scored: Vec<PromptRows>,
}

/// Consecutive rows of a step whose logits score a request's next prompt tokens (it asked for
/// prompt logprobs): row `first_row + i` predicts `targets[i]`, the prompt token at position
/// `start + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRows {
    pub id: RequestId,
    pub first_row: usize,
    pub start: usize,
    pub targets: Vec<u32>,
    /// Top logprobs to return with each.
    pub top: usize,
}

#[derive(Default)]
pub struct RequestTable {
    requests: HashMap<RequestId, RequestState>,
}

fn bad(msg: String) -> ExecutorError {
    ExecutorError::Plan(msg)
}

impl RequestTable {
    /// Applies `plan` (forget, add, update) and returns its batch.
    pub fn apply(&mut self, plan: &StepPlan) -> Result<PreparedStep, ExecutorError> {
        for id in &plan.forget {
            self.requests.remove(id).ok_or_else(|| bad(format!("forget names unknown request {id}")))?;
        }
        for r in &plan.new_requests {
            let state = RequestState {
                tokens: r.token_ids.clone(),
                num_computed: r.num_computed_tokens,
                block_ids: r.block_ids.clone(),
                sampler: Sampler::new(&r.sampling),
                masked: false,
                allowed_tokens: None,
            };
            if self.requests.insert(r.id, state).is_some() {
                return Err(bad(format!("request {} introduced while known", r.id)));
            }
        }
        let mut step =
            PreparedStep { inputs: Vec::with_capacity(plan.scheduled.len()), sampled: Vec::new(), scored: Vec::new() };
        let mut rows = 0;
        for s in &plan.scheduled {
            let r = self.requests.get_mut(&s.id).ok_or_else(|| bad(format!("step names unknown request {}", s.id)))?;
            r.tokens.extend(&s.new_token_ids);
            r.block_ids.extend(&s.new_block_ids);
            r.masked = s.masked;
            r.allowed_tokens = None;
            let end = r.num_computed + s.num_tokens;
            if s.num_tokens == 0 || end > r.tokens.len() {
                return Err(bad(format!(
                    "request {} computes tokens {}..{end} of {}",
                    s.id,
                    r.num_computed,
                    r.tokens.len()
                )));
            }
            let wants_logits = end == r.tokens.len();
            let settings = r.sampler.settings();
            if let Some(top) = settings.prompt_logprobs {
                // The row at position p scores the prompt token at p + 1.
                let scored_end = end.min(settings.prompt_len.saturating_sub(1));
                if scored_end > r.num_computed {
                    step.scored.push(PromptRows {
                        id: s.id,
                        first_row: rows,
                        start: r.num_computed + 1,
                        targets: r.tokens[r.num_computed + 1..scored_end + 1].to_vec(),
                        top,
                    });
                }
            }
            rows += s.num_tokens;
            step.inputs.push(SeqInput {
                tokens: r.tokens[r.num_computed..end].to_vec(),
                cached_len: r.num_computed,
                block_table: r.block_ids.clone(),
                wants_logits,
            });
            if wants_logits {
                step.sampled.push(s.id);
            }
            r.num_computed = end;
        }
        Ok(step)
    }

    /// Gives each request of `sampled` that this step masks its mask from `masks`; a masked
    /// request without one is an error (sampling it freely would break its constraint).
    pub fn set_masks(&mut self, sampled: &[RequestId], mut masks: StepMasks) -> Result<(), ExecutorError> {
        for id in sampled {
            let r = self.requests.get_mut(id).ok_or_else(|| bad(format!("sampled request {id} is unknown")))?;
            if r.masked {
                r.allowed_tokens = Some(masks.allowed.remove(id).ok_or(MasksError::Missing(*id))?);
            }
        }
        Ok(())
    }

    /// The states of `ids`, in that order (for sampling several rows at once).
    pub fn states_mut(&mut self, ids: &[RequestId]) -> Vec<&mut RequestState> {
        let position: HashMap<RequestId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut found: Vec<(usize, &mut RequestState)> =
            self.requests.iter_mut().filter_map(|(id, r)| position.get(id).map(|&i| (i, r))).collect();
        found.sort_unstable_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use shardline_exec::{NewRequest, ScheduledRequest};
    use shardline_sampling::SamplingParams;

    use super::*;

    fn new(id: RequestId, tokens: Vec<u32>, computed: usize, blocks: Vec<u32>) -> NewRequest {
        NewRequest {
            id,
            token_ids: tokens,
            num_computed_tokens: computed,
            block_ids: blocks,
            sampling: SamplingParams::greedy().sampler_settings(0),
        }
    }

    fn sched(id: RequestId, n: usize, tokens: &[u32], blocks: &[u32]) -> ScheduledRequest {
        ScheduledRequest {
            id,
            num_tokens: n,
            new_token_ids: tokens.to_vec(),
            new_block_ids: blocks.to_vec(),
            masked: false,
        }
    }

    #[test]
    fn plans_build_the_batch_from_diffs() {
        let mut t = RequestTable::default();
        // A prefix hit: 4 of 6 tokens computed; then a chunked prompt of 5 (3 now, 2 later).
        let plan = StepPlan {
            new_requests: vec![new(1, vec![1, 2, 3, 4, 5, 6], 4, vec![7, 8]), new(2, vec![9; 5], 0, vec![3])],
            scheduled: vec![sched(1, 2, &[], &[]), sched(2, 3, &[], &[])],
            ..Default::default()
        };
        let step = t.apply(&plan).unwrap();
        assert_eq!(step.inputs[0].tokens, [5, 6]);
        assert_eq!(step.inputs[0].cached_len, 4);
        assert!(step.inputs[0].wants_logits && !step.inputs[1].wants_logits);
        assert_eq!(step.sampled, [1]);
        // Next step: request 1 decodes the token sampled for it, with a new block.
        let plan =
            StepPlan { scheduled: vec![sched(1, 1, &[42], &[11]), sched(2, 2, &[], &[4])], ..Default::default() };
        let step = t.apply(&plan).unwrap();
        assert_eq!(step.inputs[0].tokens, [42]);
        assert_eq!(step.inputs[0].block_table, [7, 8, 11]);
        assert_eq!(step.inputs[1].cached_len, 3);
        assert_eq!(step.sampled, [1, 2]);
        let states = t.states_mut(&[2, 1]);
        assert_eq!(states[0].tokens.len(), 5);
        assert_eq!(states[1].tokens.len(), 7);
        // Forgotten requests are gone; naming one again is a plan error.
        let plan = StepPlan { forget: vec![1], scheduled: vec![sched(1, 1, &[], &[])], ..Default::default() };
        assert!(t.apply(&plan).unwrap_err().to_string().contains("unknown request 1"));
    }

    #[test]
    fn prompt_logprob_rows_cover_the_prompt_once_across_chunks() {
        let mut t = RequestTable::default();
        let mut scoring = new(2, vec![10, 11, 12, 13, 14], 0, vec![0]);
        scoring.sampling = SamplingParams { prompt_logprobs: Some(2), ..SamplingParams::greedy() }.sampler_settings(0);
        scoring.sampling.prompt_len = 5;
        // Request 1 (3 rows) comes first, so request 2's rows start at 3.
        let plan = StepPlan {
            new_requests: vec![new(1, vec![1, 2, 3], 0, vec![1]), scoring],
            scheduled: vec![sched(1, 3, &[], &[]), sched(2, 3, &[], &[])],
            ..Default::default()
        };
        let step = t.apply(&plan).unwrap();
        let rows = PromptRows { id: 2, first_row: 3, start: 1, targets: vec![11, 12, 13], top: 2 };
        assert_eq!(step.scored, [rows]);
        // The last chunk: position 3 scores token 14; position 4 (the prompt's last) samples.
        let plan = StepPlan { scheduled: vec![sched(2, 2, &[], &[])], ..Default::default() };
        let step = t.apply(&plan).unwrap();
        assert_eq!(step.scored, [PromptRows { id: 2, first_row: 0, start: 4, targets: vec![14], top: 2 }]);
        assert_eq!(step.sampled, [2]);
        // Decoding scores nothing.
        let plan = StepPlan { scheduled: vec![sched(2, 1, &[7], &[])], ..Default::default() };
        assert!(t.apply(&plan).unwrap().scored.is_empty());
    }

    #[test]
    fn contradictory_plans_are_refused() {
        let mut t = RequestTable::default();
        let plan = StepPlan { new_requests: vec![new(1, vec![1, 2], 0, vec![0])], ..Default::default() };
        t.apply(&plan).unwrap();
        assert!(t.apply(&plan).unwrap_err().to_string().contains("introduced while known"));
        let over = StepPlan { scheduled: vec![sched(1, 3, &[], &[])], ..Default::default() };
        assert!(t.apply(&over).unwrap_err().to_string().contains("computes tokens 0..3 of 2"));
        assert!(t.apply(&StepPlan { forget: vec![5], ..Default::default() }).is_err());
    }

    #[test]
    fn masks_reach_masked_requests_only_and_last_one_step() {
        let mut t = RequestTable::default();
        let plan = StepPlan {
            new_requests: vec![new(1, vec![1, 2], 0, vec![0]), new(2, vec![3], 0, vec![1])],
            scheduled: vec![ScheduledRequest { masked: true, ..sched(1, 2, &[], &[]) }, sched(2, 1, &[], &[])],
            ..Default::default()
        };
        let step = t.apply(&plan).unwrap();
        let missing = t.set_masks(&step.sampled, StepMasks::default()).unwrap_err();
        assert!(missing.to_string().contains("no mask for request 1"), "{missing}");
        let masks = StepMasks { allowed: [(1, vec![0b100])].into() };
        t.set_masks(&step.sampled, masks).unwrap();
        let states = t.states_mut(&[1, 2]);
        assert_eq!(states[0].allowed_tokens.as_deref(), Some(&[0b100u32][..]));
        assert_eq!(states[1].allowed_tokens, None);
        // The next step's plan decides anew: unmasked, the old mask is gone.
        let step = t.apply(&StepPlan { scheduled: vec![sched(1, 1, &[2], &[])], ..Default::default() }).unwrap();
        t.set_masks(&step.sampled, StepMasks::default()).unwrap();
        assert_eq!(t.states_mut(&[1])[0].allowed_tokens, None);
    }
}
