//! Rank 0's executor over a started group: sends each step plan to every rank (requests in full
//! once, then diffs) and collects the sampled tokens from the sampling rank. `submit` does not
//! wait for the step, so several steps can be in flight and every pipeline stage works at once;
//! a masked step's `submit` waits (bounded) only for the structured-output masks the engine
//! computes while the ranks already run the step, and sends them to the sampling rank alone.
//!
//! Recovery (with a [`RankReplacer`]): when a step fails, the launcher is asked to replace the
//! rank that died (rank 0 kills it first if it is only silent: stopped or hung). Rank 0 then drops
//! the broken mesh, which every survivor notices and answers by rejoining; it forms the group
//! again at the same address (the replacement joins and loads its shard; survivors keep theirs)
//! and reports `ExecutorError::Reset`, on which the engine recomputes every request from its
//! tokens. If no rank died, or the launcher gave up (restart limit), the failure stands.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use shardline_comm::{Comm, CommError, Tag};
use shardline_exec::{Executor, ExecutorError, PendingMasks, Reset, StepOutput, StepPlan};
use shardline_proto::worker::v1::{control_message::Kind, ControlMessage, Shutdown, StepResult};

use crate::error::{Result, WorkerError};
use crate::group::{workers_ready, GroupReady, LocalCommand, LocalShard, Reform};
use crate::heartbeat;
use crate::layout::GroupLayout;
use crate::process_id;
use crate::wire::{masks_to_proto, output_from_proto, step_to_proto};

/// How often rank 0 checks its own shard while waiting for the sampling rank's result.
const RESULT_POLL: Duration = Duration::from_millis(50);

pub struct GroupExecutor {
    comm: Arc<Comm>,
    layout: GroupLayout,
    local: Option<LocalShard>,
    next_step: u64,
    in_flight: VecDeque<u64>,
    vocab: usize,
    block_size: usize,
    num_blocks: usize,
    max_model_len: usize,
    heartbeat_timeout: Duration,
    reform: Reform,
    replacer: Option<Box<dyn RankReplacer>>,
    /// By rank, the pid of each rank this process can kill (see `process_id`).
    pids: Vec<Option<u32>>,
    /// Raised while `recover` runs.
    recovering: Arc<AtomicBool>,
}

/// The launcher's part in replacing a failed rank, as rank 0's executor sees it.
pub trait RankReplacer: Send {
    /// After the group failed (a silent rank already killed): waits (bounded) until the
    /// launcher has started a successor for every rank that exited, and returns them (empty when
    /// other launchers do it). An error when none exited (the failure was not a death) or the
    /// recovery budget is spent.
    fn replace_failed(&mut self) -> std::result::Result<Vec<usize>, String>;
}

impl GroupExecutor {
    pub fn new(group: GroupReady) -> Self {
        GroupExecutor {
            layout: group.config.layout.clone(),
            vocab: group.model_config.vocab_size,
            block_size: group.config.block_size,
            num_blocks: group.config.num_blocks,
            max_model_len: group.model_config.max_position_embeddings,
            heartbeat_timeout: group.config.heartbeat_timeout,
            reform: group.reform,
            replacer: None,
            pids: process_id::signalable(&group.ready),
            recovering: Arc::new(AtomicBool::new(false)),
            comm: group.comm,
            local: Some(group.local),
            next_step: 0,
            in_flight: VecDeque::new(),
        }
    }

    pub fn layout(&self) -> &GroupLayout {
        &self.layout
    }

    /// Recovers from a failed rank through `replacer` (the group must have been started with
    /// `GroupConfig::recover`, so that survivors rejoin).
    pub fn with_replacer(mut self, replacer: Box<dyn RankReplacer>) -> Self {
        self.replacer = Some(replacer);
        self
    }

    /// Replaces the failed rank and forms the group again.
    fn recover(&mut self, cause: &WorkerError) -> Result<Reset> {
        let start = Instant::now();
        // A silent rank (stopped, hung) still runs: killed, its launcher starts it again.
        if let WorkerError::Silent { rank, .. } = cause {
            let Some(pid) = self.pids.get(*rank).copied().flatten() else {
                return Err(WorkerError::Protocol(format!(
                    "rank {rank} stopped answering on another host, where rank 0 cannot kill it to have it replaced"
                )));
            };
            eprintln!("recovery: killing rank {rank} (pid {pid}), which stopped answering");
            process_id::kill(pid).map_err(|e| WorkerError::Protocol(format!("killing rank {rank}: {e}")))?;
        }
        let replacer = self.replacer.as_mut().expect("recover is called with a replacer");
        let replaced = replacer.replace_failed().map_err(WorkerError::Protocol)?;
        let who = match replaced.as_slice() {
            [] => "the failed rank's own launcher restarts it".to_string(),
            ranks => format!("rank(s) {ranks:?} restarted"),
        };
        eprintln!("recovery: {cause}; {who}; forming the group again");
        // Every survivor sees rank 0's links close, leaves its broken mesh and rejoins.
        self.comm.abort();
        self.in_flight.clear();
        let comm = self.reform.rendezvous(self.heartbeat_timeout)?;
        let local = self.local()?;
        let (ack_tx, ack_rx) = mpsc::channel();
        local
            .steps
            .send(LocalCommand::Rejoin(Arc::clone(&comm), ack_tx))
            .map_err(|_| WorkerError::Protocol("rank 0's shard thread has stopped".into()))?;
        // Rank 0's shard joins alongside the others (GPU communicators need every rank).
        let rank0 = ack_rx
            .recv_timeout(self.reform.load_timeout)
            .map_err(|_| WorkerError::Protocol("rank 0's shard did not rejoin".into()))??;
        let ready = [vec![rank0], workers_ready(&comm, self.reform.load_timeout)?].concat();
        // Results of the steps that failed, sent before the shard rejoined.
        while local.results.try_recv().is_ok() {}
        self.comm = comm;
        self.pids = process_id::signalable(&ready);
        // Counted from the ranks themselves: another node's launcher restarts its ranks unseen.
        let new: Vec<u32> = ready.iter().filter(|r| !r.rejoined).map(|r| r.rank).collect();
        let seconds = start.elapsed().as_secs_f64();
        let what = format!("{cause}; {who}; the group formed again in {seconds:.1} s with new rank(s) {new:?}");
        Ok(Reset { what, ranks_replaced: new.len(), seconds })
    }

    fn local(&self) -> Result<&LocalShard> {
        self.local.as_ref().ok_or_else(|| WorkerError::Protocol("the group is shut down".into()))
    }

    /// Sends a step to the group without waiting for its result; then, for a masked plan, its
    /// masks to the sampling rank once they come.
    fn send_step(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<u64> {
        if plan.has_masks() != masks.is_some() {
            let why =
                if masks.is_some() { "masks for a plan without masked requests" } else { "no masks for a masked plan" };
            return Err(ExecutorError::Plan(why.into()).into());
        }
        let step_id = self.next_step;
        self.next_step += 1;
        let bytes = ControlMessage { kind: Some(Kind::Step(step_to_proto(step_id, &plan))) }.encode_to_vec();
        for r in 1..self.layout.world_size() {
            self.send_control(r, bytes.clone())?;
        }
        self.local()?
            .steps
            .send(LocalCommand::Step(step_id, plan))
            .map_err(|_| WorkerError::Protocol("rank 0's shard thread has stopped".into()))?;
        self.in_flight.push_back(step_id);
        let Some(masks) = masks else { return Ok(step_id) };
        // Every rank runs the step meanwhile; the sampling rank reads the masks before it samples
        // (and before the next step, sent after this returns).
        let masks = masks.wait().map_err(ExecutorError::from)?;
        match self.layout.result_rank() {
            0 => self
                .local()?
                .steps
                .send(LocalCommand::Masks(step_id, masks))
                .map_err(|_| WorkerError::Protocol("rank 0's shard thread has stopped".into()))?,
            rank => {
                let kind = Kind::StepMasks(masks_to_proto(step_id, &masks));
                self.send_control(rank, ControlMessage { kind: Some(kind) }.encode_to_vec())?;
            }
        }
        Ok(step_id)
    }

    /// Sends a control message to worker `rank`.
    fn send_control(&self, rank: usize, bytes: Vec<u8>) -> Result<()> {
        match self.comm.send(rank, Tag::Control, bytes) {
            // A rank already gone fails this step's wait, which recovers the group.
            Err(_) if self.replacer.is_some() => Ok(()),
            sent => Ok(sent?),
        }
    }

    /// Waits for the oldest in-flight step's sampled tokens.
    fn receive(&mut self) -> Result<StepOutput> {
        let step_id = self.in_flight.pop_front().ok_or_else(|| WorkerError::Protocol("no step in flight".into()))?;
        let result_rank = self.layout.result_rank();
        let local = self.local()?;
        let workers = 1..self.layout.world_size();
        if result_rank == 0 {
            // Rank 0's thread answers every step: with the tokens, as the only stage. Its own
            // work has no deadline (a long prefill is not a fault); a silent worker is.
            loop {
                match local.results.recv_timeout(RESULT_POLL) {
                    Ok(out) => {
                        return out?
                            .ok_or_else(|| WorkerError::Protocol(format!("rank 0 sampled nothing in step {step_id}")))
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        heartbeat::check(&self.comm, workers.clone(), self.heartbeat_timeout)?
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(WorkerError::Protocol("rank 0's shard thread has stopped".into()))
                    }
                }
            }
        }
        // Wait in slices, surfacing a failure of rank 0's own shard at once: when a peer of
        // rank 0 dies, rank 0's shard fails first while the sampling rank waits for hidden
        // states that never come, and only the comm timeout would end the wait. Each slice
        // also checks that every worker still beats.
        let timeout = self.comm.timeout();
        let deadline = Instant::now() + timeout;
        let bytes = loop {
            while let Ok(r) = local.results.try_recv() {
                r?;
            }
            let slice = deadline.saturating_duration_since(Instant::now()).min(RESULT_POLL);
            match self.comm.recv_within(result_rank, Tag::Result, Some(slice), "return the step's tokens") {
                Ok(bytes) => break bytes,
                Err(CommError::Timeout { rank, what, .. }) if Instant::now() >= deadline => {
                    return Err(CommError::Timeout { rank, what, timeout }.into())
                }
                Err(CommError::Timeout { .. }) => {
                    heartbeat::check(&self.comm, workers.clone(), self.heartbeat_timeout)?
                }
                Err(e) => return Err(e.into()),
            }
        };
        let result = StepResult::decode(bytes.as_slice())?;
        while let Ok(r) = local.results.try_recv() {
            r?;
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
        Ok(output_from_proto(result))
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
        let Some(local) = self.local.take() else { return };
        let bytes = ControlMessage { kind: Some(Kind::Shutdown(Shutdown {})) }.encode_to_vec();
        for r in 1..self.layout.world_size() {
            let _ = self.comm.send(r, Tag::Control, bytes.clone());
        }
        let _ = local.steps.send(LocalCommand::Shutdown);
        drop(local.steps);
        let _ = local.thread.join();
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

    /// One microbatch per pipeline stage.
    fn max_in_flight(&self) -> usize {
        self.layout.pp
    }

    fn recovering(&self) -> Option<Arc<AtomicBool>> {
        self.replacer.is_some().then(|| Arc::clone(&self.recovering))
    }

    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> std::result::Result<(), ExecutorError> {
        self.send_step(plan, masks)?;
        Ok(())
    }

    fn wait(&mut self) -> std::result::Result<StepOutput, ExecutorError> {
        let cause = match self.receive() {
            Ok(out) => return Ok(out),
            Err(WorkerError::Plan(e)) => return Err(e),
            Err(e) if self.replacer.is_none() => return Err(e.into()),
            Err(e) => e,
        };
        self.recovering.store(true, Ordering::SeqCst);
        let recovered = self.recover(&cause);
        self.recovering.store(false, Ordering::SeqCst);
        match recovered {
            Ok(reset) => Err(ExecutorError::Reset(reset)),
            Err(e) => Err(WorkerError::Protocol(format!("{cause}; recovery failed: {e}")).into()),
        }
    }
}
