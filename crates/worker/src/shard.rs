//! One rank's part of every step: embed (first stage) or receive hidden states from the previous
//! stage, run this stage's layers with tensor-parallel collectives, then pass hidden states on
//! or (last stage) compute the sampled rows' logits, which the stage's tp rank 0 samples. A
//! step with masked requests brings the sampling rank one more message, its structured-output
//! masks, read only once the logits are ready: rank 0 computes them while the forward runs.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use shardline_comm::{Comm, Tag};
use shardline_exec::{StepMasks, StepOutput, StepPlan};
use shardline_model::{ModelSpec, ShardPlan};
use shardline_proto::worker::v1::Ready;

use crate::collective::TpCollective;
use crate::device::device_for;
use crate::env::RankEnv;
use crate::error::{Result, WorkerError};
use crate::layout::GroupLayout;
use crate::runner::{Batch, ModelRunner};
use crate::wire::GroupConfig;

/// Where the sampling rank reads a step's structured-output masks from, given the step id:
/// the control stream from rank 0 on a worker, the shard thread's commands on rank 0.
pub(crate) type MaskSource<'a> = &'a mut dyn FnMut(u64) -> Result<StepMasks>;

/// Peak resident set size of this process (VmHWM), 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

pub struct WorkerShard {
    rank: usize,
    layout: GroupLayout,
    runner: ModelRunner,
    comm: Arc<Comm>,
    tp: TpCollective,
    /// A CUDA rank's NCCL communicators (`None` on CPU ranks).
    #[cfg(feature = "cuda")]
    device_comms: Option<crate::nccl::DeviceComms>,
    stats: StepStats,
    /// This shard served an earlier form of the group (see `rejoin`).
    rejoined: bool,
}

/// Where a rank's step time goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub steps: u64,
    /// Wall time inside `step`.
    pub busy_s: f64,
    /// Waiting for and sending pipeline hidden states.
    pub pipeline_s: f64,
}

impl WorkerShard {
    /// Loads `env.rank`'s slice of the model (its TP share of its stage's layers) and KV cache,
    /// on the device its local rank maps to.
    pub fn load(env: &RankEnv, cfg: &GroupConfig, comm: Arc<Comm>) -> Result<WorkerShard> {
        let rank = env.rank;
        let layout = cfg.layout.clone();
        let stage = layout.stage_of(rank);
        let mut spec = ModelSpec::cpu(&cfg.model, cfg.dtype);
        spec.load_format = cfg.load_format;
        spec.options.quantization = cfg.quantization;
        spec.options.device = device_for(cfg.device, env.local_rank, &env.devices)?;
        let model_cfg = spec.read_config()?;
        spec.options.plan = Some(ShardPlan::new(&model_cfg, layout.tp_rank_of(rank), layout.tp)?);
        spec.options.layers = Some(layout.layers_of_stage(stage));
        // Communicators before weights: every rank is here moments after the rendezvous, so
        // the NCCL joins never wait out another rank's loading.
        #[cfg(feature = "cuda")]
        let device_comms = match &spec.options.device {
            Device::Cuda(_) => Some(crate::nccl::DeviceComms::join(&comm, &layout, &spec.options.device)?),
            _ => None,
        };
        let runner = ModelRunner::new(spec.load()?, cfg.num_blocks, cfg.block_size)?;
        #[cfg(feature = "cuda")]
        let tp = tp_collective(&comm, &layout, rank, model_cfg.vocab_size, device_comms.as_ref());
        #[cfg(not(feature = "cuda"))]
        let tp = tp_collective(&comm, &layout, rank);
        Ok(WorkerShard {
            rank,
            layout,
            runner,
            comm,
            tp,
            #[cfg(feature = "cuda")]
            device_comms,
            stats: StepStats::default(),
            rejoined: false,
        })
    }

    /// Takes this shard into the group rank 0 re-formed after a rank was replaced: the new mesh,
    /// new collectives and, on GPUs, new NCCL communicators (the old ones were aborted with the
    /// old mesh). The weights stay; the request table empties, since rank 0 recomputes every
    /// request into blocks it writes before anything reads them.
    pub fn rejoin(&mut self, comm: Arc<Comm>) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.device_comms = None; // aborts the old communicators first
            if let Device::Cuda(_) = self.runner.model().device() {
                let device = self.runner.model().device().clone();
                self.device_comms = Some(crate::nccl::DeviceComms::join(&comm, &self.layout, &device)?);
            }
            let vocab = self.runner.model().config().vocab_size;
            self.tp = tp_collective(&comm, &self.layout, self.rank, vocab, self.device_comms.as_ref());
        }
        #[cfg(not(feature = "cuda"))]
        {
            self.tp = tp_collective(&comm, &self.layout, self.rank);
        }
        self.comm = comm;
        self.runner.forget_all();
        self.rejoined = true;
        Ok(())
    }

    pub fn ready(&self) -> Ready {
        Ready {
            rank: self.rank as u32,
            weight_bytes: self.runner.model().weight_bytes() as u64,
            kv_cache_bytes: self.runner.cache().bytes() as u64,
            peak_rss_bytes: peak_rss_bytes(),
            error: String::new(),
            rejoined: self.rejoined,
            pid: std::process::id(),
            pid_namespace: crate::process_id::pid_namespace(),
            weight_formats: self.runner.model().weight_formats(),
        }
    }

    pub fn model_config(&self) -> &shardline_model::ModelConfig {
        self.runner.model().config()
    }

    /// One line for logs: steps, busy time and the share spent communicating.
    pub fn stats_line(&self) -> String {
        let s = self.stats;
        let comm = self.tp.seconds() + s.pipeline_s;
        format!(
            "STATS rank={} steps={} busy={:.3}s tp_collectives={:.3}s pipeline={:.3}s comm_share={:.1}% peak_rss={:.1}MiB",
            self.rank,
            s.steps,
            s.busy_s,
            self.tp.seconds(),
            s.pipeline_s,
            if s.busy_s > 0.0 { 100.0 * comm / s.busy_s } else { 0.0 },
            peak_rss_bytes() as f64 / 1048576.0
        )
    }

    /// Runs this rank's part of step `step_id`; the sampling rank (last stage, tp rank 0)
    /// returns the sampled tokens, every other rank `None`. When the plan has masked requests,
    /// the sampling rank reads the step's masks from `masks` (given the step id; a bounded
    /// wait) once, after its logits and even when it samples nothing, so that what it reads
    /// next is the next step's; other ranks never call it.
    pub fn step(&mut self, step_id: u64, plan: &StepPlan, masks: MaskSource) -> Result<Option<StepOutput>> {
        let start = Instant::now();
        let mut masks = (plan.has_masks() && self.rank == self.layout.result_rank()).then_some(masks);
        let out = match self.runner.prepare(plan)? {
            Some(batch) => self.forward(step_id, &batch, &mut masks),
            None => Ok(None),
        };
        let out = match (out, masks) {
            (Ok(out), Some(unread)) => unread(step_id).map(|_| out),
            (out, _) => out,
        };
        self.stats.steps += 1;
        self.stats.busy_s += start.elapsed().as_secs_f64();
        out
    }

    fn forward(&mut self, step_id: u64, batch: &Batch, masks: &mut Option<MaskSource>) -> Result<Option<StepOutput>> {
        let stage = self.layout.stage_of(self.rank);
        let tp_rank = self.layout.tp_rank_of(self.rank);
        let x = if stage == 0 { self.runner.embed(batch, &self.tp)? } else { self.receive_hidden(step_id, batch)? };
        let x = self.runner.forward_layers(x, batch, &self.tp)?;
        if stage + 1 < self.layout.pp {
            self.send_hidden(step_id, &x)?;
            self.wait_device()?;
            return Ok(None);
        }
        // Every tp rank takes part in gathering the vocabulary shards; rank 0 of the stage
        // scores and samples.
        let prompt_logprobs = self.runner.score_prompts(&x, batch, &self.tp, tp_rank == 0)?;
        if batch.sampled.is_empty() {
            self.wait_device()?;
            return Ok((tp_rank == 0).then_some(StepOutput { prompt_logprobs, ..Default::default() }));
        }
        let logits = self.runner.logits(&x, batch, &self.tp)?;
        self.wait_device()?;
        if tp_rank != 0 {
            return Ok(None);
        }
        if let Some(masks) = masks.take() {
            let masks = masks(step_id)?;
            self.runner.set_masks(batch, masks)?;
        }
        Ok(Some(StepOutput { prompt_logprobs, ..self.runner.sample(&logits, batch)? }))
    }

    /// Waits, bounded, for the step's queued device work on a CUDA rank with NCCL links (the
    /// step watchdog, see `DeviceComms::wait`); nothing to wait for otherwise.
    fn wait_device(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(d) = &self.device_comms {
            d.wait()?;
        }
        Ok(())
    }

    fn send_hidden(&mut self, step_id: u64, x: &Tensor) -> Result<()> {
        let send = Instant::now();
        #[cfg(feature = "cuda")]
        if let Some(next) = self.device_comms.as_ref().and_then(|d| d.next.as_ref()) {
            crate::nccl::send_tensor(next, 1, x)?;
            self.stats.pipeline_s += send.elapsed().as_secs_f64();
            return Ok(());
        }
        let to = self.layout.rank_of(self.layout.stage_of(self.rank) + 1, self.layout.tp_rank_of(self.rank));
        self.comm.send(to, Tag::Hidden, encode_hidden(step_id, x)?)?;
        self.stats.pipeline_s += send.elapsed().as_secs_f64();
        Ok(())
    }

    fn receive_hidden(&mut self, step_id: u64, batch: &Batch) -> Result<Tensor> {
        let stage = self.layout.stage_of(self.rank);
        let from = self.layout.rank_of(stage - 1, self.layout.tp_rank_of(self.rank));
        let hidden = self.runner.model().config().hidden_size;
        let rows = batch.input.num_rows();
        let wait = Instant::now();
        #[cfg(feature = "cuda")]
        if let Some(prev) = self.device_comms.as_ref().and_then(|d| d.prev.as_ref()) {
            // Only queued here: the wait happens on the GPU, and at the step's end on the host.
            let model = self.runner.model();
            let x = crate::nccl::recv_tensor(prev, 0, (rows, hidden), model.dtype(), model.device())?;
            self.stats.pipeline_s += wait.elapsed().as_secs_f64();
            return Ok(x);
        }
        let bytes = self.comm.recv(from, Tag::Hidden)?;
        self.stats.pipeline_s += wait.elapsed().as_secs_f64();
        let (got_step, data) = decode_hidden(&bytes)?;
        if got_step != step_id || data.len() != rows * hidden {
            return Err(WorkerError::Protocol(format!(
                "rank {from} sent hidden states of step {got_step} ({} values) during step {step_id} ({} expected)",
                data.len(),
                rows * hidden
            )));
        }
        let model = self.runner.model();
        Ok(Tensor::from_vec(data, (rows, hidden), &Device::Cpu)?.to_dtype(model.dtype())?.to_device(model.device())?)
    }
}

/// `rank`'s stage's tensor-parallel collective over `comm`, through NCCL where it has a
/// communicator for the group (`vocab` splits the gathered logits).
#[cfg(feature = "cuda")]
fn tp_collective(
    comm: &Arc<Comm>,
    layout: &GroupLayout,
    rank: usize,
    vocab: usize,
    device_comms: Option<&crate::nccl::DeviceComms>,
) -> TpCollective {
    let tp = TpCollective::new(Arc::clone(comm), layout.tp_group(layout.stage_of(rank)));
    match device_comms.and_then(|d| d.tp.clone()) {
        Some(nccl) => {
            let widths = (0..layout.tp).map(|r| shardline_model::even_split(vocab, layout.tp, r).len()).collect();
            tp.with_nccl(nccl, widths)
        }
        None => tp,
    }
}

/// `rank`'s stage's tensor-parallel collective over `comm`.
#[cfg(not(feature = "cuda"))]
fn tp_collective(comm: &Arc<Comm>, layout: &GroupLayout, rank: usize) -> TpCollective {
    TpCollective::new(Arc::clone(comm), layout.tp_group(layout.stage_of(rank)))
}

fn encode_hidden(step_id: u64, x: &Tensor) -> Result<Vec<u8>> {
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(8 + data.len() * 4);
    out.extend_from_slice(&step_id.to_le_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    Ok(out)
}

fn decode_hidden(bytes: &[u8]) -> Result<(u64, Vec<f32>)> {
    if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(4) {
        return Err(WorkerError::Protocol("malformed hidden-state message".into()));
    }
    let step = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok((step, f32s(&bytes[8..])))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
