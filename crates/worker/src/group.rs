//! Starting a group: rank 0 (`start_group`, the engine's side) and every other rank
//! (`run_worker`). Rank 0 runs its own shard on a thread fed through a channel, so its engine
//! loop never blocks on its own collectives. Whichever rank samples reads a masked step's
//! structured-output masks from the same stream as its steps (the control stream, or on rank 0
//! that channel), right after the step: rank 0 sends them before the next step.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use shardline_comm::{rendezvous, Comm, CommError, GroupSecret, RendezvousConfig, Tag};
use shardline_exec::{StepMasks, StepOutput, StepPlan, MASKS_TIMEOUT};
use shardline_model::ModelConfig;
use shardline_proto::worker::v1::{control_message::Kind, ControlMessage, GroupSpec, Ready, StepResult};

use crate::env::RankEnv;
use crate::error::{Result, WorkerError};
use crate::heartbeat;
use crate::shard::WorkerShard;
use crate::wire::{masks_from_proto, output_to_proto, step_from_proto, GroupConfig};

/// What rank 0 learned while the group formed.
pub struct GroupReady {
    pub comm: Arc<Comm>,
    pub config: GroupConfig,
    pub model_config: ModelConfig,
    /// Every rank's Ready, by rank.
    pub ready: Vec<Ready>,
    pub(crate) local: LocalShard,
    pub(crate) reform: Reform,
}

/// What rank 0 needs to form the group: at start, and again after a rank was replaced.
pub(crate) struct Reform {
    pub env: RankEnv,
    pub timeout: Duration,
    pub load_timeout: Duration,
    /// The group description every rank receives.
    pub blob: Vec<u8>,
}

impl Reform {
    /// Rank 0's side of forming the group (again, after a lost rank: survivors rejoin and
    /// replacements join): the rendezvous, then heartbeats on the new mesh.
    pub fn rendezvous(&self, heartbeat_timeout: Duration) -> Result<Arc<Comm>> {
        let comm = Arc::new(rendezvous(&rendezvous_config(&self.env, self.timeout, self.blob.clone())?)?);
        heartbeat::start(&comm, (1..self.env.world_size).collect(), heartbeat_timeout)?;
        Ok(comm)
    }
}

/// What rank 0's shard thread is asked to do.
pub(crate) enum LocalCommand {
    Step(u64, StepPlan),
    /// The masks of the step just sent, when rank 0 is the sampling rank.
    Masks(u64, StepMasks),
    /// Move to the re-formed group's mesh; answers with the shard's READY.
    Rejoin(Arc<Comm>, Sender<Result<Ready>>),
    Shutdown,
}

/// Rank 0's own shard, running on its thread. It answers every step, with the sampled tokens
/// when it is the sampling rank (a group of one stage).
pub(crate) struct LocalShard {
    pub steps: Sender<LocalCommand>,
    pub results: Receiver<Result<Option<StepOutput>>>,
    pub thread: JoinHandle<()>,
}

fn rendezvous_config(env: &RankEnv, timeout: Duration, blob: Vec<u8>) -> Result<RendezvousConfig> {
    let secret = match (&env.secret, env.world_size) {
        (Some(secret), _) => secret.clone(),
        // A group of one opens no connection: nothing to prove.
        (None, 1) => GroupSecret::generate(),
        (None, _) => {
            return Err(WorkerError::Env(
                "rank has no group secret: set SHARDLINE_GROUP_SECRET (at least 16 characters, e.g. \
                 `openssl rand -hex 32`) or SHARDLINE_GROUP_SECRET_FILE to the same value on every rank \
                 (`shardline launch` does it for the ranks it starts)"
                    .into(),
            ))
        }
    };
    Ok(RendezvousConfig {
        master_addr: env.master_addr.clone(),
        master_port: env.master_port,
        rank: env.rank,
        world_size: env.world_size,
        timeout,
        group_blob: blob,
        secret,
    })
}

/// Rank 0: forms the group, loads its own shard and waits until every rank is READY.
pub fn start_group(
    config: GroupConfig,
    env: &RankEnv,
    timeout: Duration,
    load_timeout: Duration,
) -> Result<GroupReady> {
    let layout = &config.layout;
    if layout.world_size() != env.world_size || env.rank != 0 {
        return Err(WorkerError::Layout(format!(
            "tp {} × pp {} needs a world of {} ranks, this is rank {} of {}",
            layout.tp,
            layout.pp,
            layout.world_size(),
            env.rank,
            env.world_size
        )));
    }
    // The first rendezvous and every re-forming after a lost rank take the same path.
    let reform = Reform { env: env.clone(), timeout, load_timeout, blob: config.to_proto().encode_to_vec() };
    let comm = reform.rendezvous(config.heartbeat_timeout)?;
    let (step_tx, step_rx) = mpsc::channel::<LocalCommand>();
    let (res_tx, res_rx) = mpsc::channel();
    let (boot_tx, boot_rx) = mpsc::channel::<Result<(Ready, ModelConfig)>>();
    let thread = {
        let (comm, config, env) = (Arc::clone(&comm), config.clone(), env.clone());
        std::thread::Builder::new()
            .name("rank0-shard".into())
            .spawn(move || {
                let mut shard = match WorkerShard::load(&env, &config, comm) {
                    Ok(shard) => {
                        let _ = boot_tx.send(Ok((shard.ready(), shard.model_config().clone())));
                        shard
                    }
                    Err(e) => {
                        let _ = boot_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(cmd) = step_rx.recv() {
                    match cmd {
                        LocalCommand::Step(step_id, plan) => {
                            let r = shard.step(step_id, &plan, &mut |id| local_masks(&step_rx, id));
                            // Without recovery a failed step ends the group; with it, the
                            // executor re-forms the group and sends Rejoin.
                            let fatal = r.is_err() && !config.recover;
                            if res_tx.send(r).is_err() || fatal {
                                return;
                            }
                        }
                        // The masks of a step that failed before it read them.
                        LocalCommand::Masks(..) => {}
                        LocalCommand::Rejoin(comm, ack) => {
                            let _ = ack.send(shard.rejoin(comm).map(|()| shard.ready()));
                        }
                        LocalCommand::Shutdown => break,
                    }
                }
                eprintln!("{}", shard.stats_line());
            })
            .map_err(|e| WorkerError::Protocol(format!("spawning rank 0's shard thread: {e}")))?
    };
    let (ready0, model_config) =
        boot_rx.recv().map_err(|_| WorkerError::Protocol("rank 0's shard thread ended while loading".into()))??;
    let ready = [vec![ready0], workers_ready(&comm, load_timeout)?].concat();
    let local = LocalShard { steps: step_tx, results: res_rx, thread };
    Ok(GroupReady { comm, config, model_config, ready, local, reform })
}

/// Rank 0's shard thread: the masks of step `step_id`, the next command, within
/// [`MASKS_TIMEOUT`].
fn local_masks(commands: &Receiver<LocalCommand>, step_id: u64) -> Result<StepMasks> {
    match commands.recv_timeout(MASKS_TIMEOUT) {
        Ok(LocalCommand::Masks(id, masks)) if id == step_id => Ok(masks),
        Ok(LocalCommand::Masks(id, _)) => Err(WorkerError::Protocol(format!(
            "rank 0's shard received the structured-output masks of step {id} during step {step_id}"
        ))),
        Ok(_) => Err(WorkerError::Protocol(format!(
            "rank 0's shard expected the structured-output masks of step {step_id}, got another command"
        ))),
        Err(RecvTimeoutError::Timeout) => Err(WorkerError::Protocol(format!(
            "the structured-output masks of step {step_id} did not come within {:.0} s",
            MASKS_TIMEOUT.as_secs_f64()
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Protocol("rank 0's executor has stopped".into())),
    }
}

/// A worker that samples: the masks of step `step_id`, the next control message, within
/// [`MASKS_TIMEOUT`] (rank 0 computes them while the step runs), checking meanwhile that rank
/// 0 still beats.
fn remote_masks(comm: &Comm, step_id: u64, heartbeat_timeout: Duration) -> Result<StepMasks> {
    let deadline = Instant::now() + MASKS_TIMEOUT;
    let bytes = loop {
        let slice = deadline.saturating_duration_since(Instant::now()).min(heartbeat_timeout / 2);
        match comm.recv_within(0, Tag::Control, Some(slice), "send the step's structured-output masks") {
            Err(CommError::Timeout { .. }) if Instant::now() >= deadline => {
                return Err(WorkerError::Protocol(format!(
                    "rank 0 did not send the structured-output masks of step {step_id} within {:.0} s",
                    MASKS_TIMEOUT.as_secs_f64()
                )))
            }
            Err(CommError::Timeout { .. }) => heartbeat::check(comm, [0], heartbeat_timeout)?,
            other => break other?,
        }
    };
    match ControlMessage::decode(bytes.as_slice())?.kind {
        Some(Kind::StepMasks(masks)) => masks_from_proto(step_id, masks),
        _ => Err(WorkerError::Protocol(format!(
            "expected the structured-output masks of step {step_id}, got another control message"
        ))),
    }
}

/// Every worker's READY (ranks 1..), each within `load_timeout`; a rank that failed to load
/// says why.
pub(crate) fn workers_ready(comm: &Comm, load_timeout: Duration) -> Result<Vec<Ready>> {
    (1..comm.world_size())
        .map(|r| {
            let bytes = comm.recv_within(r, Tag::Control, Some(load_timeout), "report READY")?;
            let msg = Ready::decode(bytes.as_slice())?;
            if !msg.error.is_empty() {
                return Err(WorkerError::Remote { rank: r, message: msg.error });
            }
            Ok(msg)
        })
        .collect()
}

/// The next message from rank 0, waiting as long as rank 0 stays connected and keeps beating.
fn next_control(comm: &Comm, heartbeat_timeout: Duration) -> Result<Vec<u8>> {
    let slice = heartbeat_timeout / 2;
    loop {
        match comm.recv_within(0, Tag::Control, Some(slice), "send work") {
            Err(CommError::Timeout { .. }) => heartbeat::check(comm, [0], heartbeat_timeout)?,
            other => return Ok(other?),
        }
    }
}

/// Any rank but 0: joins the group, loads its shard, answers READY, then runs steps until rank
/// 0 says stop. When something fails and the group recovers (`GroupConfig::recover`), it leaves
/// the broken mesh and rejoins the group rank 0 forms again, keeping its weights; otherwise it
/// returns the error (the process should exit non-zero).
pub fn run_worker(env: &RankEnv, timeout: Duration) -> Result<()> {
    let join = || -> Result<Arc<Comm>> {
        let cfg = rendezvous_config(env, timeout, Vec::new())?;
        Ok(Arc::new(rendezvous(&cfg).map_err(|e| WorkerError::GroupGone(Box::new(e)))?))
    };
    let mut comm = join()?;
    let config = GroupConfig::from_proto(&GroupSpec::decode(comm.group_blob())?)?;
    heartbeat::start(&comm, vec![0], config.heartbeat_timeout)?;
    let mut shard = match WorkerShard::load(env, &config, Arc::clone(&comm)) {
        Ok(shard) => shard,
        Err(e) => {
            let msg = Ready { rank: env.rank as u32, error: e.to_string(), ..Default::default() };
            comm.send(0, Tag::Control, msg.encode_to_vec())?;
            return Err(e);
        }
    };
    loop {
        let ready = shard.ready();
        eprintln!(
            "READY rank={} weights={:.1}MiB ({}) kv_cache={:.1}MiB peak_rss={:.1}MiB",
            env.rank,
            ready.weight_bytes as f64 / 1048576.0,
            ready.weight_formats,
            ready.kv_cache_bytes as f64 / 1048576.0,
            ready.peak_rss_bytes as f64 / 1048576.0
        );
        comm.send(0, Tag::Control, ready.encode_to_vec())?;
        match serve_steps(&comm, &mut shard, config.heartbeat_timeout) {
            Ok(()) => return Ok(()),
            Err(e) if config.recover => {
                eprintln!("rank {}: {e}; rejoining the group", env.rank);
                // Closing every link tells the peers still waiting on this rank at once.
                comm.abort();
                comm = join()?;
                heartbeat::start(&comm, vec![0], config.heartbeat_timeout)?;
                shard.rejoin(Arc::clone(&comm))?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the steps rank 0 sends until it says stop (`Ok`) or something fails.
fn serve_steps(comm: &Comm, shard: &mut WorkerShard, heartbeat_timeout: Duration) -> Result<()> {
    loop {
        let bytes = next_control(comm, heartbeat_timeout)?;
        match ControlMessage::decode(bytes.as_slice())?.kind {
            Some(Kind::Step(step)) => {
                let step_id = step.step_id;
                let mut masks = |id| remote_masks(comm, id, heartbeat_timeout);
                match step_from_proto(step).and_then(|plan| shard.step(step_id, &plan, &mut masks)) {
                    Ok(Some(out)) => comm.send(0, Tag::Result, output_to_proto(step_id, &out).encode_to_vec())?,
                    Ok(None) => {}
                    Err(e) => {
                        let result = StepResult { step_id, error: e.to_string(), ..Default::default() };
                        let _ = comm.send(0, Tag::Result, result.encode_to_vec());
                        return Err(e);
                    }
                }
            }
            Some(Kind::Shutdown(_)) => {
                eprintln!("{}", shard.stats_line());
                comm.close();
                return Ok(());
            }
            Some(Kind::StepMasks(m)) => {
                return Err(WorkerError::Protocol(format!(
                    "received the structured-output masks of step {} outside that step",
                    m.step_id
                )))
            }
            None => return Err(WorkerError::Protocol("empty control message".into())),
        }
    }
}
