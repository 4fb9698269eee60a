//! Several microbatches in flight, as with pipeline parallelism: an executor that takes up to
//! `depth` steps before returning the oldest checks the engine never puts a sequence, an executor
//! id or a KV block in two steps in flight, and greedy results equal one step at a time.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::DType;
use common::{engine, model_dir, params, text, BLOCK_SIZE};
use shardline_engine::{load_local, Engine, EngineConfig, Executor, LocalExecutor, ModelSpec, StepPlan};

/// One submitted step: its executor ids, the blocks its tables cover, and its logits.
type Pending = (HashSet<u64>, HashSet<u32>, Vec<Vec<f32>>);

/// Runs each step when submitted (so the KV cache sees steps in submission order, as pipeline
/// stages do) and hands results back in order, at most `depth` later. Learns tables once, like
/// `common::LearnOnce`.
struct Pipelined {
    inner: LocalExecutor,
    depth: usize,
    tables: HashMap<u64, Vec<u32>>,
    queue: VecDeque<Pending>,
    retired: HashSet<u64>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Executor for Pipelined {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> usize {
        self.inner.num_blocks()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_model_len(&self) -> usize {
        self.inner.max_model_len()
    }
    fn execute(&mut self, plan: StepPlan) -> shardline_engine::Result<Vec<Vec<f32>>> {
        self.submit(plan)?;
        self.wait()
    }
    fn max_in_flight(&self) -> usize {
        self.depth
    }
    fn submit(&mut self, mut plan: StepPlan) -> shardline_engine::Result<()> {
        assert!(self.queue.len() < self.depth, "more than {} steps in flight", self.depth);
        let (mut ids, mut blocks) = (HashSet::new(), HashSet::new());
        for s in &mut plan.seqs {
            assert!(!plan.finished.contains(&s.seq_id), "id {} scheduled and retired in one plan", s.seq_id);
            assert!(!self.retired.contains(&s.seq_id), "id {} scheduled after being retired", s.seq_id);
            s.input.block_table = self.tables.entry(s.seq_id).or_insert_with(|| s.input.block_table.clone()).clone();
            ids.insert(s.seq_id);
            blocks.extend(s.input.block_table.iter().copied());
        }
        for (their_ids, their_blocks, _) in &self.queue {
            assert!(ids.is_disjoint(their_ids), "a sequence is in two steps in flight");
            assert!(blocks.is_disjoint(their_blocks), "a KV block is in two steps in flight");
            assert!(plan.finished.iter().all(|id| !their_ids.contains(id)), "an id retired while in flight");
        }
        for id in &plan.finished {
            self.tables.remove(id);
            self.retired.insert(*id);
        }
        let logits = self.inner.execute(plan)?;
        self.queue.push_back((ids, blocks, logits));
        self.most_in_flight.fetch_max(self.queue.len(), Ordering::Relaxed);
        Ok(())
    }
    fn wait(&mut self) -> shardline_engine::Result<Vec<Vec<f32>>> {
        Ok(self.queue.pop_front().expect("a step in flight").2)
    }
}

/// An engine whose executor keeps up to `depth` steps in flight, and the most it ever held.
fn pipelined(
    dir: &tempfile::TempDir,
    num_blocks: usize,
    cfg: EngineConfig,
    depth: usize,
) -> (Engine, Arc<AtomicUsize>) {
    let (model, tok) = load_local(&ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32)).unwrap();
    let eos = model.config().eos_token_ids.clone();
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let exec = Pipelined {
        inner: LocalExecutor::new(model, num_blocks, BLOCK_SIZE).unwrap(),
        depth,
        tables: HashMap::new(),
        queue: VecDeque::new(),
        retired: HashSet::new(),
        most_in_flight: Arc::clone(&most_in_flight),
    };
    (Engine::new(Box::new(exec), tok, &eos, cfg).unwrap(), most_in_flight)
}

const PROMPTS: [&str; 5] = ["the quick brown fox", "jumps over", "the lazy dog again", "and again and", "a"];

#[test]
fn pipelined_greedy_outputs_match_one_step_at_a_time_under_preemption() {
    let dir = model_dir();
    // (token budget, tokens per request, steps in flight); each request fits the cache alone,
    // far from all five at once: sequences must be preempted (or wait for blocks in flight).
    for (max_batch_tokens, max_tokens, depth) in [(7, 16, 2), (7, 16, 3), (4, 20, 3), (8, 30, 2), (64, 30, 3)] {
        let case = format!("budget {max_batch_tokens}, {max_tokens} tokens, depth {depth}");
        let cfg = || EngineConfig { max_batch_tokens, ..Default::default() };
        let num_blocks = (PROMPTS[0].len() + max_tokens).div_ceil(BLOCK_SIZE);
        let mut one = engine(&dir, num_blocks, cfg());
        let ids: Vec<_> = PROMPTS.iter().map(|p| one.add_request(&text(p), params(max_tokens)).unwrap()).collect();
        let want = one.run_to_completion(&ids, |_| {}).unwrap();

        let (mut e, most_in_flight) = pipelined(&dir, num_blocks, cfg(), depth);
        let ids: Vec<_> = PROMPTS.iter().map(|p| e.add_request(&text(p), params(max_tokens)).unwrap()).collect();
        let mut streamed = vec![String::new(); ids.len()];
        let got = e.run_to_completion(&ids, |ev| streamed[ev.request_id as usize].push_str(&ev.text)).unwrap();
        assert_eq!(most_in_flight.load(Ordering::Relaxed), depth, "{case}: the pipeline was filled");
        assert!(e.num_preemptions() > 0, "{case}: the cache was meant to be too small");
        assert_eq!(e.kv_blocks_used(), 0, "{case}: finished requests return their blocks");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.token_ids, w.token_ids, "{case}, request {i}");
            assert_eq!(g.text, w.text, "{case}, request {i}");
            assert_eq!(streamed[i], g.text, "{case}, request {i}: streamed text");
        }
    }
}

#[test]
fn running_sequences_are_split_between_microbatches() {
    let dir = model_dir();
    let (mut e, most_in_flight) = pipelined(&dir, 64, EngineConfig::default(), 2);
    for p in &PROMPTS[..4] {
        e.add_request(&text(p), params(8)).unwrap();
    }
    // Each step completes one microbatch of the two in flight: half of the requests.
    let mut per_step = Vec::new();
    while e.has_unfinished() {
        per_step.push(e.step().unwrap().len());
    }
    assert_eq!(most_in_flight.load(Ordering::Relaxed), 2);
    assert!(per_step.iter().all(|&n| n == 2), "tokens per step: {per_step:?}");
    assert_eq!(per_step.len(), 4 * 8 / 2);
}

#[test]
fn aborting_a_sequence_in_flight_frees_its_blocks_when_its_step_returns() {
    let dir = model_dir();
    let want = engine(&dir, 64, EngineConfig::default()).generate(&text(PROMPTS[0]), params(8), |_| {}).unwrap();
    let (mut e, _) = pipelined(&dir, 64, EngineConfig::default(), 2);
    let a = e.add_request(&text(PROMPTS[0]), params(8)).unwrap();
    let b = e.add_request(&text(PROMPTS[2]), params(8)).unwrap();
    // One microbatch each: the first step returns `a`'s and leaves `b`'s in flight.
    let events = e.step().unwrap();
    assert_eq!(events.iter().map(|ev| ev.request_id).collect::<Vec<_>>(), [a]);
    let used = e.kv_blocks_used();
    assert!(e.abort(b));
    assert!(!e.abort(b), "already aborted");
    assert_eq!(e.kv_blocks_used(), used, "b's step may still write its blocks");
    assert_eq!(e.num_running(), 2);
    let events = e.step().unwrap(); // b's step returns: b leaves without a token
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(e.num_running(), 1);
    let mut rest = Vec::new();
    let got = e.run_to_completion(&[a], |ev| rest.push(ev.request_id)).unwrap().remove(0);
    assert!(rest.iter().all(|&id| id == a));
    assert_eq!(got.token_ids, want.token_ids);
    assert!(e.take_output(b).is_none());
    assert_eq!(e.kv_blocks_used(), 0, "every block is back");
}
