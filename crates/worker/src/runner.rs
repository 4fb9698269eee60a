//! One rank's model, KV cache and request table, and the pieces of a step every layout is made
//! of: apply the plan, embed (first stage), run this stage's layers, compute logits for the
//! sampled rows (last stage) and sample them. [`crate::LocalExecutor`] chains them in one
//! process; [`crate::WorkerShard`] puts pipeline hand-offs and tensor-parallel collectives
//! between them.

use candle_core::{DType, Tensor};
use rayon::prelude::{
    IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, ParallelIterator, ParallelSlice,
};
use shardline_exec::{RequestId, Sampled, StepOutput, StepPlan};
use shardline_model::{BatchInput, Collective, KvCache, Llama};

use crate::error::Result;
use crate::requests::RequestTable;

pub struct ModelRunner {
    model: Llama,
    cache: KvCache,
    requests: RequestTable,
}

/// A step ready to run: the flattened batch and the requests whose rows are sampled, in the
/// order of `batch.logit_rows`.
pub struct Batch {
    pub input: BatchInput,
    pub sampled: Vec<RequestId>,
}

impl ModelRunner {
    /// `model` with a KV cache of `num_blocks` × `block_size` tokens.
    pub fn new(model: Llama, num_blocks: usize, block_size: usize) -> Result<Self> {
        let cache = model.new_cache(num_blocks, block_size)?;
        Ok(ModelRunner { model, cache, requests: RequestTable::default() })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Applies the plan to the request table; `None` when it schedules nothing.
    pub fn prepare(&mut self, plan: &StepPlan) -> Result<Option<Batch>> {
        let step = self.requests.apply(plan)?;
        if step.inputs.is_empty() {
            return Ok(None);
        }
        let input = BatchInput::new(step.inputs, self.cache.block_size(), self.cache.num_blocks())?;
        Ok(Some(Batch { input, sampled: step.sampled }))
    }

    /// Token embeddings of the batch (first stage).
    pub fn embed(&self, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        Ok(self.model.embed(&batch.input.tokens, comm)?)
    }

    /// This stage's layers over `x`, writing the batch's K/V.
    pub fn forward_layers(&mut self, x: Tensor, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        Ok(self.model.forward_layers(x, &batch.input, &mut self.cache, comm)?)
    }

    /// Logits of the sampled rows (last stage), gathered over the tensor-parallel group.
    pub fn logits(&self, x: &Tensor, batch: &Batch, comm: &dyn Collective) -> Result<Tensor> {
        Ok(self.model.logits(x, &batch.input.logit_rows, comm)?)
    }

    /// One token per sampled row, the rows in parallel: each request's draw depends on its seed
    /// and position only, so the order of work does not matter.
    pub fn sample(&mut self, logits: &Tensor, batch: &Batch) -> Result<StepOutput> {
        if batch.sampled.is_empty() {
            return Ok(StepOutput::default());
        }
        let values = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let vocab = values.len() / batch.sampled.len();
        let states = self.requests.states_mut(&batch.sampled);
        let sampled = states
            .into_par_iter()
            .zip(values.par_chunks(vocab))
            .zip(batch.sampled.par_iter())
            .map(|((r, row), &id)| Sampled { id, token: r.sampler.sample(row, &r.tokens, r.tokens.len()) })
            .collect();
        Ok(StepOutput { sampled })
    }
}
