//! One rank's model, KV cache and request table, and the pieces of a step every layout is made
//! of: apply the plan, embed (first stage), run this stage's layers, compute logits for the
//! sampled rows (last stage) and sample them. [`crate::LocalExecutor`] chains them in one
//! process; [`crate::WorkerShard`] puts pipeline hand-offs and tensor-parallel collectives
//! between them.

use candle_core::{DType, Tensor};
use rayon::prelude::{
    IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, ParallelIterator, ParallelSlice,
};
use shardline_exec::{PromptLogprobs, RequestId, Sampled, StepMasks, StepOutput, StepPlan};
use shardline_model::{BatchInput, Collective, KvCache, Llama};

use crate::error::Result;
use crate::requests::{PromptRows, RequestTable};

pub struct ModelRunner {
    model: Llama,
    cache: KvCache,
    requests: RequestTable,
    /// Where a step's layers run: on a pool thread the kernels' parallel loops share the work
    /// with the pool's other threads directly. Called from outside, every loop would wake the
    /// pool and put the caller to sleep until it is done: a decode step runs ~120 loops of
    /// tens of microseconds, and the wake-ups cost as much as the work.
    pool: rayon::ThreadPool,
    /// Spinning threads for a step's short loops (see `shardline_ops::team`).
    team: shardline_ops::team::Team,
}

/// A step ready to run: the flattened batch, the requests whose rows are sampled, in the
/// order of `batch.logit_rows`, and the rows that score prompt tokens.
pub struct Batch {
    pub input: BatchInput,
    pub sampled: Vec<RequestId>,
    pub scored: Vec<PromptRows>,
}

/// Prompt rows whose logits are computed at once: 256 rows of a 152k vocabulary are 150 MiB
/// of f32, so a long prompt chunk is scored in slices.
const SCORED_ROWS_PER_SLICE: usize = 256;

impl ModelRunner {
    /// `model` with a KV cache of `num_blocks` × `block_size` tokens.
    pub fn new(model: Llama, num_blocks: usize, block_size: usize) -> Result<Self> {
        let cache = model.new_cache(num_blocks, block_size)?;
        // As many threads as the global pool (--threads); the runner's own, so that ranks
        // sharing a process (tests run them as threads) never wait on each other's pool
        // threads while one blocks in a collective.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("kernels-{i}"))
            .build()
            .map_err(|e| crate::error::WorkerError::Protocol(format!("starting the kernel threads: {e}")))?;
        let team = shardline_ops::team::Team::new(rayon::current_num_threads())
            .map_err(|e| crate::error::WorkerError::Protocol(format!("starting the kernel team: {e}")))?;
        Ok(ModelRunner { model, cache, requests: RequestTable::default(), pool, team })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Forgets every request (the group re-formed: rank 0 sends each again, to be recomputed
    /// into blocks it writes before anything reads them).
    pub fn forget_all(&mut self) {
        self.requests = RequestTable::default();
    }

    /// Applies the plan to the request table; `None` when it schedules nothing.
    pub fn prepare(&mut self, plan: &StepPlan) -> Result<Option<Batch>> {
        let step = self.requests.apply(plan)?;
        if step.inputs.is_empty() {
            return Ok(None);
        }
        let input = BatchInput::new(step.inputs, self.cache.block_size(), self.cache.num_blocks())?;
        Ok(Some(Batch { input, sampled: step.sampled, scored: step.scored }))
    }

    /// Token embeddings of the batch (first stage).
    pub fn embed(&self, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        Ok(self.model.embed(&batch.input.tokens, comm)?)
    }

    /// This stage's layers over `x`, writing the batch's K/V.
    pub fn forward_layers(&mut self, x: Tensor, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        let (model, cache) = (&self.model, &mut self.cache);
        Ok(self.pool.install(|| self.team.enter(|| model.forward_layers(x, &batch.input, cache, comm)))?)
    }

    /// Logits of the sampled rows (last stage), gathered over the tensor-parallel group.
    pub fn logits(&self, x: &Tensor, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        Ok(self.pool.install(|| self.team.enter(|| self.model.logits(x, &batch.input.logit_rows, comm)))?)
    }

    /// Scores the prompt tokens of the batch's `scored` rows (last stage). Every tensor-parallel
    /// rank takes part in gathering the logits; only the sampling rank (`scores`) turns them
    /// into logprobs, the others return nothing.
    pub fn score_prompts(
        &self,
        x: &Tensor,
        batch: &Batch,
        comm: &dyn Collective,
        scores: bool,
    ) -> Result<Vec<PromptLogprobs>> {
        let mut out = Vec::with_capacity(batch.scored.len());
        for p in &batch.scored {
            let mut entries = Vec::with_capacity(p.targets.len());
            for (slice, targets) in p.targets.chunks(SCORED_ROWS_PER_SLICE).enumerate() {
                let first = p.first_row + slice * SCORED_ROWS_PER_SLICE;
                let rows: Vec<usize> = (first..first + targets.len()).collect();
                let logits = self.pool.install(|| self.team.enter(|| self.model.logits(x, &rows, comm)))?;
                if !scores {
                    continue;
                }
                let values = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let vocab = values.len() / targets.len();
                let scored: Vec<_> = self.pool.install(|| {
                    values
                        .par_chunks(vocab)
                        .zip(targets.par_iter())
                        .map(|(row, &t)| shardline_sampling::score_token(row, t, p.top))
                        .collect()
                });
                entries.extend(scored);
            }
            if scores {
                out.push(PromptLogprobs { id: p.id, start: p.start, entries });
            }
        }
        Ok(out)
    }

    /// Sets the structured-output masks of the batch's masked requests (they come after the
    /// plan, while the forward runs); before [`ModelRunner::sample`].
    pub fn set_masks(&mut self, batch: &Batch, masks: StepMasks) -> Result<()> {
        Ok(self.requests.set_masks(&batch.sampled, masks)?)
    }

    /// One token per sampled row, the rows in parallel: each request's draw depends on its seed
    /// and position only, so the order of work does not matter.
    pub fn sample(&mut self, logits: &Tensor, batch: &Batch) -> Result<StepOutput> {
        if batch.sampled.is_empty() {
            return Ok(StepOutput::default());
        }
        #[cfg(feature = "cuda")]
        if !logits.device().is_cpu() {
            return self.sample_on_device(logits, batch);
        }
        let values = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let vocab = values.len() / batch.sampled.len();
        let states = self.requests.states_mut(&batch.sampled);
        let sampled = states
            .into_par_iter()
            .zip(values.par_chunks(vocab))
            .zip(batch.sampled.par_iter())
            .map(|((r, row), &id)| {
                let token = r.sampler.sample_masked(row, &r.tokens, r.tokens.len(), r.allowed_tokens.as_deref());
                Sampled { id, token }
            })
            .collect();
        Ok(StepOutput { sampled, ..Default::default() })
    }

    /// On a GPU the logits stay there: a kernel picks each row's best candidates and only those
    /// come back; a row whose candidates cannot decide its token (a repetition penalty, plain
    /// temperature sampling) is fetched whole and sampled as on the CPU.
    #[cfg(feature = "cuda")]
    fn sample_on_device(&mut self, logits: &Tensor, batch: &Batch) -> Result<StepOutput> {
        use shardline_sampling::{Candidates, SamplerSettings};

        let vocab = logits.dim(1)?;
        let states = self.requests.states_mut(&batch.sampled);
        let settings: Vec<SamplerSettings> = states.iter().map(|r| r.sampler.settings().clone()).collect();
        // A structured output's mask needs the whole row.
        let needed: Vec<Option<usize>> = settings
            .iter()
            .zip(&states)
            .map(|(s, r)| s.candidates_needed().filter(|_| r.allowed_tokens.is_none()))
            .collect();
        let k = needed.iter().flatten().copied().max();
        let inv_t: Vec<f32> = settings.iter().map(|s| if s.is_greedy() { 1.0 } else { 1.0 / s.temperature }).collect();
        let cands = match k {
            Some(k) => self.model.device_topk(logits, &inv_t, k)?,
            None => None,
        };
        let mut sampled = Vec::with_capacity(states.len());
        for (row, (r, &id)) in states.into_iter().zip(&batch.sampled).enumerate() {
            let position = r.tokens.len();
            let from_candidates = cands.as_ref().filter(|_| needed[row].is_some()).and_then(|c| {
                let span = row * c.k..(row + 1) * c.k;
                let (lse, lse_t) = (c.stats[3 * row + 1] as f64, c.stats[3 * row + 2] as f64);
                let candidates =
                    Candidates { values: &c.values[span.clone()], ids: &c.ids[span], vocab_size: vocab, lse, lse_t };
                r.sampler.sample_candidates(&candidates, position)
            });
            let token = match from_candidates {
                Some(token) => token,
                None => {
                    let row_logits = logits.get(row)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                    r.sampler.sample_masked(&row_logits, &r.tokens, position, r.allowed_tokens.as_deref())
                }
            };
            sampled.push(Sampled { id, token });
        }
        Ok(StepOutput { sampled, ..Default::default() })
    }
}
