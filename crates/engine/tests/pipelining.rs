//! Several microbatches in flight, as with pipeline parallelism: an executor that takes up to
//! `depth` steps before returning the oldest checks the engine never puts a request in two steps
//! in flight, never lets a step read a KV block another step in flight writes, and that greedy
//! results equal one step at a time.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{engine, executor, model_dir, params, text, tokenizer, BLOCK_SIZE};
use shardline_engine::{Engine, EngineConfig, Executor, RequestId};
use shardline_exec::{ExecutorError, PendingMasks, StepOutput, StepPlan};
use shardline_worker::LocalExecutor;

/// One submitted step: its requests, the blocks it writes and reads, and its output.
struct Pending {
    ids: HashSet<RequestId>,
    writes: HashSet<u32>,
    reads: HashSet<u32>,
    output: StepOutput,
}

/// Runs each step when submitted (so the KV cache sees steps in submission order, as pipeline
/// stages do) and hands results back in order, at most `depth` later.
struct Pipelined {
    inner: LocalExecutor,
    depth: usize,
    /// What the workers know of each request: (tokens, computed, blocks).
    known: HashMap<RequestId, (usize, usize, Vec<u32>)>,
    queue: VecDeque<Pending>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Executor for Pipelined {
    shardline_exec::executor_shape_from!(inner);
    fn max_in_flight(&self) -> usize {
        self.depth
    }
    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<(), ExecutorError> {
        assert!(self.queue.len() < self.depth, "more than {} steps in flight", self.depth);
        for id in &plan.forget {
            assert!(self.queue.iter().all(|p| !p.ids.contains(id)), "request {id} forgotten while in flight");
            self.known.remove(id);
        }
        for r in &plan.new_requests {
            self.known.insert(r.id, (r.token_ids.len(), r.num_computed_tokens, r.block_ids.clone()));
        }
        let mut step = Pending {
            ids: HashSet::new(),
            writes: HashSet::new(),
            reads: HashSet::new(),
            output: StepOutput::default(),
        };
        for s in &plan.scheduled {
            let (tokens, computed, blocks) = self.known.get_mut(&s.id).expect("scheduled requests are known");
            *tokens += s.new_token_ids.len();
            blocks.extend(&s.new_block_ids);
            let last = (*computed + s.num_tokens - 1) / BLOCK_SIZE;
            step.writes.extend(&blocks[*computed / BLOCK_SIZE..=last]);
            step.reads.extend(&blocks[..=last]);
            *computed += s.num_tokens;
            step.ids.insert(s.id);
        }
        for other in &self.queue {
            assert!(step.ids.is_disjoint(&other.ids), "a request is in two steps in flight");
            assert!(step.writes.is_disjoint(&other.reads), "a step writes a block another step in flight reads");
            assert!(step.reads.is_disjoint(&other.writes), "a step reads a block another step in flight writes");
        }
        self.inner.submit(plan, masks)?;
        step.output = self.inner.wait()?;
        self.queue.push_back(step);
        self.most_in_flight.fetch_max(self.queue.len(), Ordering::Relaxed);
        Ok(())
    }
    fn wait(&mut self) -> Result<StepOutput, ExecutorError> {
        Ok(self.queue.pop_front().expect("a step in flight").output)
    }
}

/// An engine whose executor keeps up to `depth` steps in flight, and the most it ever held.
fn pipelined(
    dir: &tempfile::TempDir,
    num_blocks: usize,
    cfg: EngineConfig,
    depth: usize,
) -> (Engine, Arc<AtomicUsize>) {
    let (inner, eos) = executor(dir, num_blocks);
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let exec = Pipelined {
        inner,
        depth,
        known: HashMap::new(),
        queue: VecDeque::new(),
        most_in_flight: Arc::clone(&most_in_flight),
    };
    (Engine::new(Box::new(exec), tokenizer(), &eos, cfg).unwrap(), most_in_flight)
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
        let ids: Vec<_> = PROMPTS.iter().map(|p| one.add_request(text(p), params(max_tokens)).unwrap()).collect();
        let want = one.run_to_completion(&ids, |_| {}).unwrap();

        let (mut e, most_in_flight) = pipelined(&dir, num_blocks, cfg(), depth);
        let ids: Vec<_> = PROMPTS.iter().map(|p| e.add_request(text(p), params(max_tokens)).unwrap()).collect();
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
        e.add_request(text(p), params(8)).unwrap();
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
    let want = engine(&dir, 64, EngineConfig::default()).generate(text(PROMPTS[0]), params(8), |_| {}).unwrap();
    let (mut e, _) = pipelined(&dir, 64, EngineConfig::default(), 2);
    let a = e.add_request(text(PROMPTS[0]), params(8)).unwrap();
    let b = e.add_request(text(PROMPTS[2]), params(8)).unwrap();
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
