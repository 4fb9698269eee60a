//! Rank 0's executor over a started group: turns engine steps into `Step` messages (new
//! sequences once, then ids only), sends them to every rank and collects the logits from the
//! result rank. `submit` does not wait, so several steps can be in flight and every pipeline
//! stage works at once; `execute` is submit + wait for one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use prost::Message;
use shardline_comm::{Comm, Tag};
use shardline_engine::{Executor, StepPlan};
use shardline_proto::worker::v1::{
    control_message::Kind, ControlMessage, NewSequence, ScheduledSequence, Shutdown, Step, StepResult,
};

use crate::error::{Result, WorkerError};
use crate::group::{GroupReady, LocalShard};
use crate::layout::GroupLayout;
use crate::shard::{f32s, layout_of};

pub struct GroupExecutor {
    comm: Arc<Comm>,
    layout: GroupLayout,
    local: Option<LocalShard>,
    known: HashSet<u64>,
    next_step: u64,
    in_flight: VecDeque<u64>,
    vocab: usize,
    block_size: usize,
    num_blocks: usize,
    max_model_len: usize,
}

impl GroupExecutor {
    /// The executor and the tokenizer rank 0 loaded with its shard.
    pub fn new(group: GroupReady) -> (Self, shardline_tokenizer::Tokenizer) {
        let exec = GroupExecutor {
            layout: layout_of(&group.spec),
            vocab: group.model_config.vocab_size,
            block_size: group.spec.block_size as usize,
            num_blocks: group.spec.num_blocks as usize,
            max_model_len: group.model_config.max_position_embeddings,
            comm: group.comm,
            local: Some(group.local),
            known: HashSet::new(),
            next_step: 0,
            in_flight: VecDeque::new(),
        };
        (exec, group.tokenizer)
    }

    pub fn layout(&self) -> &GroupLayout {
        &self.layout
    }

    fn broadcast(&self, msg: ControlMessage) -> Result<()> {
        let bytes = msg.encode_to_vec();
        for r in 1..self.layout.world_size() {
            self.comm.send(r, Tag::Control, bytes.clone())?;
        }
        let local = self.local.as_ref().ok_or_else(|| WorkerError::Protocol("the group is shut down".into()))?;
        local.steps.send(msg).map_err(|_| WorkerError::Protocol("rank 0's shard thread has stopped".into()))
    }

    /// Sends a step to the group without waiting for its result.
    pub fn submit(&mut self, plan: StepPlan) -> Result<u64> {
        let step_id = self.next_step;
        self.next_step += 1;
        let mut step = Step { step_id, ..Default::default() };
        for s in plan.seqs {
            if self.known.insert(s.seq_id) {
                step.new_sequences.push(NewSequence { seq_id: s.seq_id, block_table: s.input.block_table });
            }
            step.scheduled.push(ScheduledSequence {
                seq_id: s.seq_id,
                tokens: s.input.tokens,
                cached_len: s.input.cached_len as u32,
                wants_logits: s.input.wants_logits,
            });
        }
        for id in plan.finished {
            if self.known.remove(&id) {
                step.finished_seq_ids.push(id);
            }
        }
        self.broadcast(ControlMessage { kind: Some(Kind::Step(step)) })?;
        self.in_flight.push_back(step_id);
        Ok(step_id)
    }

    /// Waits for the oldest in-flight step; returns its id and logits rows.
    pub fn wait(&mut self) -> Result<(u64, Vec<Vec<f32>>)> {
        let step_id = self.in_flight.pop_front().ok_or_else(|| WorkerError::Protocol("no step in flight".into()))?;
        let result_rank = self.layout.result_rank();
        let local = self.local.as_ref().ok_or_else(|| WorkerError::Protocol("the group is shut down".into()))?;
        let result = if result_rank == 0 {
            // Rank 0's thread answers every step (with None when it holds no logits).
            loop {
                let r = local
                    .results
                    .recv()
                    .map_err(|_| WorkerError::Protocol("rank 0's shard thread has stopped".into()))??;
                if let Some(r) = r {
                    break r;
                }
            }
        } else {
            // Surface a failure of rank 0's own shard rather than waiting for the timeout.
            while let Ok(r) = local.results.try_recv() {
                r?;
            }
            StepResult::decode(self.comm.recv(result_rank, Tag::Result)?.as_slice())?
        };
        if result_rank != 0 {
            while let Ok(r) = local.results.try_recv() {
                r?;
            }
        }
        if !result.error.is_empty() {
            return Err(WorkerError::Remote { rank: result_rank, message: result.error });
        }
        if result.step_id != step_id {
            return Err(WorkerError::Protocol(format!(
                "expected the result of step {step_id}, got {}",
                result.step_id
            )));
        }
        let values = f32s(&result.logits);
        let cols = result.vocab as usize;
        if values.len() != result.rows as usize * cols {
            return Err(WorkerError::Protocol("logits size does not match rows × vocab".into()));
        }
        let rows = if cols == 0 { Vec::new() } else { values.chunks(cols).map(<[f32]>::to_vec).collect() };
        Ok((step_id, rows))
    }

    /// One line for logs: what rank 0 received per step, by kind of traffic.
    fn traffic_line(&self) -> String {
        let steps = self.next_step.max(1) as f64;
        let per_step: Vec<String> = Tag::ALL
            .iter()
            .map(|&tag| format!("{}={:.0}B", tag.name(), self.comm.bytes_received(tag) as f64 / steps))
            .collect();
        format!("STATS rank=0 steps={} received_per_step: {}", self.next_step, per_step.join(" "))
    }

    /// Tells every rank to exit and waits for rank 0's shard thread.
    pub fn shutdown(&mut self) {
        if self.local.is_none() {
            return;
        }
        let _ = self.broadcast(ControlMessage { kind: Some(Kind::Shutdown(Shutdown {})) });
        if let Some(local) = self.local.take() {
            drop(local.steps);
            let _ = local.thread.join();
        }
        eprintln!("{}", self.traffic_line());
        self.comm.close();
    }
}

impl Drop for GroupExecutor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Executor for GroupExecutor {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    fn execute(&mut self, plan: StepPlan) -> shardline_engine::Result<Vec<Vec<f32>>> {
        GroupExecutor::submit(self, plan)?;
        Ok(GroupExecutor::wait(self)?.1)
    }

    /// One microbatch per pipeline stage.
    fn max_in_flight(&self) -> usize {
        self.layout.pp
    }

    fn submit(&mut self, plan: StepPlan) -> shardline_engine::Result<()> {
        GroupExecutor::submit(self, plan)?;
        Ok(())
    }

    fn wait(&mut self) -> shardline_engine::Result<Vec<Vec<f32>>> {
        Ok(GroupExecutor::wait(self)?.1)
    }
}
