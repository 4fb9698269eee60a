//! Starting a group: rank 0 (`start_group`, the engine's side) and every other rank
//! (`run_worker`). Rank 0 runs its own shard on a thread fed through a channel, so its engine
//! loop never blocks on its own collectives.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use shardline_comm::{rendezvous, Comm, RendezvousConfig, Tag};
use shardline_proto::worker::v1::{control_message::Kind, ControlMessage, GroupSpec, Ready, StepResult};
use shardline_tokenizer::Tokenizer;

use crate::env::RankEnv;
use crate::error::{Result, WorkerError};
use crate::shard::{layout_of, WorkerShard};

/// What rank 0 learned while the group formed.
pub struct GroupReady {
    pub comm: Arc<Comm>,
    pub spec: GroupSpec,
    pub tokenizer: Tokenizer,
    pub model_config: shardline_model::ModelConfig,
    /// Every rank's Ready, by rank.
    pub ready: Vec<Ready>,
    pub(crate) local: LocalShard,
}

/// Rank 0's own shard, running on its thread.
pub(crate) struct LocalShard {
    pub steps: Sender<ControlMessage>,
    pub results: Receiver<Result<Option<StepResult>>>,
    pub thread: JoinHandle<()>,
}

fn rendezvous_config(env: &RankEnv, timeout: Duration, blob: Vec<u8>) -> RendezvousConfig {
    RendezvousConfig {
        master_addr: env.master_addr.clone(),
        master_port: env.master_port,
        rank: env.rank,
        world_size: env.world_size,
        timeout,
        group_blob: blob,
    }
}

/// Rank 0: forms the group, loads its own shard and waits until every rank is READY.
pub fn start_group(spec: GroupSpec, env: &RankEnv, timeout: Duration, load_timeout: Duration) -> Result<GroupReady> {
    let layout = layout_of(&spec);
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
    let comm = Arc::new(rendezvous(&rendezvous_config(env, timeout, spec.encode_to_vec()))?);
    let (step_tx, step_rx) = mpsc::channel::<ControlMessage>();
    let (res_tx, res_rx) = mpsc::channel();
    let (boot_tx, boot_rx) = mpsc::channel::<Result<(Ready, Tokenizer, shardline_model::ModelConfig)>>();
    let thread = {
        let (comm, spec) = (Arc::clone(&comm), spec.clone());
        std::thread::Builder::new()
            .name("rank0-shard".into())
            .spawn(move || {
                let mut shard = match WorkerShard::load(0, 0, &spec, comm) {
                    Ok((shard, tok)) => {
                        let cfg = shard.model().config().clone();
                        let _ = boot_tx.send(Ok((shard.ready(), tok, cfg)));
                        shard
                    }
                    Err(e) => {
                        let _ = boot_tx.send(Err(e));
                        return;
                    }
                };
                for msg in step_rx {
                    match msg.kind {
                        Some(Kind::Step(step)) => {
                            let r = shard.step(&step);
                            let failed = r.is_err();
                            if res_tx.send(r).is_err() || failed {
                                return;
                            }
                        }
                        Some(Kind::Shutdown(_)) | None => break,
                    }
                }
                eprintln!("{}", shard.stats_line());
            })
            .map_err(|e| WorkerError::Protocol(format!("spawning rank 0's shard thread: {e}")))?
    };
    let (ready0, tokenizer, model_config) =
        boot_rx.recv().map_err(|_| WorkerError::Protocol("rank 0's shard thread ended while loading".into()))??;
    let mut ready = vec![ready0];
    for r in 1..env.world_size {
        let bytes = comm.recv_within(r, Tag::Control, Some(load_timeout), "report READY")?;
        let msg = Ready::decode(bytes.as_slice())?;
        if !msg.error.is_empty() {
            return Err(WorkerError::Remote { rank: r, message: msg.error });
        }
        ready.push(msg);
    }
    let local = LocalShard { steps: step_tx, results: res_rx, thread };
    Ok(GroupReady { comm, spec, tokenizer, model_config, ready, local })
}

/// Any rank but 0: joins the group, loads its shard, answers READY, then runs steps until rank
/// 0 says stop. Returns an error (the process should exit non-zero) when anything fails.
pub fn run_worker(env: &RankEnv, timeout: Duration) -> Result<()> {
    let comm = Arc::new(rendezvous(&rendezvous_config(env, timeout, Vec::new()))?);
    let spec = GroupSpec::decode(comm.group_blob())?;
    let mut shard = match WorkerShard::load(env.rank, env.local_rank, &spec, Arc::clone(&comm)) {
        Ok((shard, _tokenizer)) => shard,
        Err(e) => {
            let msg = Ready { rank: env.rank as u32, error: e.to_string(), ..Default::default() };
            comm.send(0, Tag::Control, msg.encode_to_vec())?;
            return Err(e);
        }
    };
    let ready = shard.ready();
    eprintln!(
        "READY rank={} weights={:.1}MiB kv_cache={:.1}MiB peak_rss={:.1}MiB",
        env.rank,
        ready.weight_bytes as f64 / 1048576.0,
        ready.kv_cache_bytes as f64 / 1048576.0,
        ready.peak_rss_bytes as f64 / 1048576.0
    );
    comm.send(0, Tag::Control, ready.encode_to_vec())?;
    loop {
        let bytes = comm.recv_until_disconnect(0, Tag::Control)?;
        match ControlMessage::decode(bytes.as_slice())?.kind {
            Some(Kind::Step(step)) => match shard.step(&step) {
                Ok(Some(result)) => comm.send(0, Tag::Result, result.encode_to_vec())?,
                Ok(None) => {}
                Err(e) => {
                    let result = StepResult { step_id: step.step_id, error: e.to_string(), ..Default::default() };
                    let _ = comm.send(0, Tag::Result, result.encode_to_vec());
                    return Err(e);
                }
            },
            Some(Kind::Shutdown(_)) => {
                eprintln!("{}", shard.stats_line());
                comm.close();
                return Ok(());
            }
            None => return Err(WorkerError::Protocol("empty control message".into())),
        }
    }
}
