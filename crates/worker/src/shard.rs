//! One rank's part of every step: embed (first stage) or receive hidden states from the previous
//! stage, run this stage's layers with tensor-parallel collectives, then pass hidden states on or
//! (last stage) compute logits, which the stage's tp rank 0 returns to rank 0.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use shardline_comm::{Comm, Tag};
use shardline_engine::{load_local, LoadFormat, ModelSpec};
use shardline_model::{BatchInput, KvCache, Llama, SeqInput, ShardPlan};
use shardline_proto::worker::v1::{GroupSpec, Ready, Step, StepResult};
use shardline_tokenizer::Tokenizer;

use crate::collective::TpCollective;
use crate::error::{Result, WorkerError};
use crate::layout::GroupLayout;

pub fn dtype_of(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(WorkerError::Protocol(format!("unknown dtype {other}"))),
    }
}

/// The device a rank runs on: the CPU, or CUDA device `local_rank` of this node.
pub fn device_for(kind: &str, local_rank: usize) -> Result<Device> {
    match kind {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => {
            // Ask the driver first, so a machine without a GPU or driver gets a plain answer rather
            // than candle's raw `DriverError(CUDA_ERROR_…)` from deep inside device creation.
            let count = cudarc::driver::CudaContext::device_count()
                .map_err(|e| WorkerError::Device(format!("no CUDA driver/GPU found: {e}")))?;
            if local_rank >= usize::try_from(count).unwrap_or(0) {
                return Err(WorkerError::Device(format!(
                    "CUDA device {local_rank} requested, but the driver sees {count} GPU(s)"
                )));
            }
            Ok(Device::new_cuda(local_rank)?)
        }
        other => {
            let _ = local_rank;
            Err(WorkerError::Protocol(format!(
                "device `{other}` is not available in this build (cuda needs --features cuda)"
            )))
        }
    }
}

pub fn layout_of(spec: &GroupSpec) -> GroupLayout {
    GroupLayout {
        tp: spec.tp as usize,
        pp: spec.pp as usize,
        stage_layers: spec.stage_layers.iter().map(|&l| l as usize).collect(),
    }
}

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
    model: Llama,
    cache: KvCache,
    comm: Arc<Comm>,
    tp: TpCollective,
    block_tables: HashMap<u64, Vec<u32>>,
    stats: StepStats,
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
    /// Loads rank `rank`'s slice of the model (its TP share of its stage's layers) and KV cache.
    /// `local_rank` picks the CUDA device on this node.
    pub fn load(rank: usize, local_rank: usize, spec: &GroupSpec, comm: Arc<Comm>) -> Result<(WorkerShard, Tokenizer)> {
        let layout = layout_of(spec);
        let stage = layout.stage_of(rank);
        let mut mspec = ModelSpec::cpu(&spec.model, dtype_of(&spec.dtype)?);
        mspec.device = device_for(&spec.device, local_rank)?;
        mspec.load_format = if spec.load_format == "dummy" { LoadFormat::Dummy } else { LoadFormat::Auto };
        let cfg = shardline_engine::read_config(&mspec)?;
        mspec.plan = Some(ShardPlan::new(&cfg, layout.tp_rank_of(rank), layout.tp)?);
        mspec.layers = Some(layout.layers_of_stage(stage));
        let (model, tokenizer) = load_local(&mspec)?;
        let cache = model.new_cache(spec.num_blocks as usize, spec.block_size as usize)?;
        let tp = TpCollective::new(Arc::clone(&comm), layout.tp_group(stage));
        #[cfg(feature = "cuda")]
        let tp = match model.device() {
            Device::Cuda(dev) => {
                let widths =
                    (0..layout.tp).map(|r| shardline_model::even_split(cfg.vocab_size, layout.tp, r).len()).collect();
                tp.with_nccl(dev.cuda_stream(), widths)?
            }
            _ => tp,
        };
        let shard = WorkerShard {
            rank,
            layout,
            model,
            cache,
            comm,
            tp,
            block_tables: HashMap::new(),
            stats: StepStats::default(),
        };
        Ok((shard, tokenizer))
    }

    pub fn ready(&self) -> Ready {
        Ready {
            rank: self.rank as u32,
            weight_bytes: self.model.weight_bytes() as u64,
            kv_cache_bytes: self.cache.bytes() as u64,
            peak_rss_bytes: peak_rss_bytes(),
            error: String::new(),
        }
    }

    pub fn model(&self) -> &Llama {
        &self.model
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

    /// Runs this rank's part of `step`; the result rank returns the logits.
    pub fn step(&mut self, step: &Step) -> Result<Option<StepResult>> {
        let start = std::time::Instant::now();
        let out = self.step_inner(step);
        self.stats.steps += 1;
        self.stats.busy_s += start.elapsed().as_secs_f64();
        out
    }

    fn step_inner(&mut self, step: &Step) -> Result<Option<StepResult>> {
        for s in &step.new_sequences {
            self.block_tables.insert(s.seq_id, s.block_table.clone());
        }
        let mut seqs = Vec::with_capacity(step.scheduled.len());
        for s in &step.scheduled {
            let table = self.block_tables.get(&s.seq_id).ok_or_else(|| {
                WorkerError::Protocol(format!("step {} names unknown sequence {}", step.step_id, s.seq_id))
            })?;
            seqs.push(SeqInput {
                tokens: s.tokens.clone(),
                cached_len: s.cached_len as usize,
                block_table: table.clone(),
                wants_logits: s.wants_logits,
            });
        }
        let result = if seqs.is_empty() { None } else { self.forward(step.step_id, seqs)? };
        for id in &step.finished_seq_ids {
            self.block_tables.remove(id);
        }
        Ok(result)
    }

    fn forward(&mut self, step_id: u64, seqs: Vec<SeqInput>) -> Result<Option<StepResult>> {
        let batch = BatchInput::new(seqs, self.cache.block_size(), self.cache.num_blocks())?;
        let stage = self.layout.stage_of(self.rank);
        let tp_rank = self.layout.tp_rank_of(self.rank);
        let hidden = self.model.config().hidden_size;
        let x = if stage == 0 {
            self.model.embed(&batch.tokens, &self.tp)?
        } else {
            let from = self.layout.rank_of(stage - 1, tp_rank);
            let wait = std::time::Instant::now();
            let bytes = self.comm.recv(from, Tag::Hidden)?;
            self.stats.pipeline_s += wait.elapsed().as_secs_f64();
            let (got_step, data) = decode_hidden(&bytes)?;
            if got_step != step_id || data.len() != batch.num_rows() * hidden {
                return Err(WorkerError::Protocol(format!(
                    "rank {from} sent hidden states of step {got_step} ({} values) during step {step_id} ({} expected)",
                    data.len(),
                    batch.num_rows() * hidden
                )));
            }
            Tensor::from_vec(data, (batch.num_rows(), hidden), &Device::Cpu)?
                .to_dtype(self.model.dtype())?
                .to_device(self.model.device())?
        };
        let x = self.model.forward_layers(x, &batch, &mut self.cache, &self.tp)?;
        if stage + 1 < self.layout.pp {
            let to = self.layout.rank_of(stage + 1, tp_rank);
            let send = std::time::Instant::now();
            self.comm.send(to, Tag::Hidden, encode_hidden(step_id, &x)?)?;
            self.stats.pipeline_s += send.elapsed().as_secs_f64();
            return Ok(None);
        }
        if batch.logit_rows.is_empty() {
            return Ok((tp_rank == 0).then(|| StepResult { step_id, ..Default::default() }));
        }
        let logits = self.model.logits(&x, &batch.logit_rows, &self.tp)?;
        if tp_rank != 0 {
            return Ok(None);
        }
        let (rows, vocab) = logits.dims2()?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(StepResult {
            step_id,
            rows: rows as u32,
            vocab: vocab as u32,
            logits: bytemuck_bytes(&flat),
            error: String::new(),
        }))
    }
}

fn bytemuck_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
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

pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
