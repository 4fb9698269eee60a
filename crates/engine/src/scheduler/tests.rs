//! The scheduler on fake requests: no model, no tokenizer. A fake executor applies each plan the
//! way workers do (forget, add, update) and "samples" token `1000 + id` for every request whose
//! computed tokens reach the end of its known tokens.

use std::collections::HashMap;

use shardline_exec::{RequestId, Sampled, StepOutput, StepPlan};
use shardline_sampling::{SampledToken, SamplingParams};

use super::{Scheduler, SchedulerConfig};
use crate::config::SchedulerPolicy;

const BS: usize = 4;

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_tokens: 64,
        max_num_seqs: 8,
        policy: SchedulerPolicy::Continuous,
        block_size: BS,
        num_blocks,
        max_in_flight: 1,
        enable_prefix_caching: true,
    }
}

/// What a worker knows of each request: (tokens, computed, blocks).
#[derive(Default)]
struct FakeExecutor {
    known: HashMap<RequestId, (Vec<u32>, usize, Vec<u32>)>,
}

impl FakeExecutor {
    /// Applies `plan` and returns what a real executor would sample.
    fn run(&mut self, plan: &StepPlan) -> StepOutput {
        for id in &plan.forget {
            assert!(self.known.remove(id).is_some(), "forgot unknown request {id}");
        }
        for r in &plan.new_requests {
            let fresh = self.known.insert(r.id, (r.token_ids.clone(), r.num_computed_tokens, r.block_ids.clone()));
            assert!(fresh.is_none(), "request {} introduced twice", r.id);
        }
        let mut out = StepOutput::default();
        for s in &plan.scheduled {
            let (tokens, computed, blocks) = self.known.get_mut(&s.id).expect("scheduled requests are known");
            tokens.extend(&s.new_token_ids);
            blocks.extend(&s.new_block_ids);
            *computed += s.num_tokens;
            assert!(*computed <= tokens.len(), "request {} computes past its tokens", s.id);
            assert!(blocks.len() * BS >= *computed, "request {} has too few blocks", s.id);
            if *computed == tokens.len() {
                let token = SampledToken { token_id: 1000 + s.id as u32, logprob: 0.0, top: Vec::new() };
                out.sampled.push(Sampled { id: s.id, token });
            }
        }
        out
    }
}

fn add(s: &mut Scheduler, id: RequestId, prompt: Vec<u32>) {
    s.add_request(id, prompt, SamplingParams::greedy().sampler_settings(0));
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| salt * 100 + i).collect()
}

/// Schedules and completes one step; returns the plan and the ids that got a token.
fn step(s: &mut Scheduler, exec: &mut FakeExecutor) -> Option<(StepPlan, Vec<RequestId>)> {
    let plan = s.schedule()?;
    let out = exec.run(&plan);
    let got = s.update_from_output(out).unwrap().into_iter().map(|(id, _)| id).collect();
    Some((plan, got))
}

#[test]
fn a_request_is_sent_once_then_as_diffs() {
    let mut s = Scheduler::new(config(16));
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(6, 1));
    let (plan, got) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.new_requests.len(), 1);
    assert_eq!(plan.new_requests[0].token_ids, prompt(6, 1));
    assert_eq!(plan.new_requests[0].block_ids.len(), 2, "6 tokens in blocks of 4");
    assert_eq!(plan.scheduled[0].num_tokens, 6);
    assert_eq!(got, [0]);
    // Decode steps name the request with only what changed.
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert!(plan.new_requests.is_empty());
    assert_eq!(plan.scheduled[0].new_token_ids, [1000], "the token sampled last step");
    assert!(plan.scheduled[0].new_block_ids.is_empty(), "7 tokens still fit 2 blocks");
    step(&mut s, &mut exec).unwrap(); // 8 tokens computed
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.scheduled[0].new_block_ids.len(), 1, "the 9th token needs a third block");
    assert_eq!(s.kv_blocks_used(), 3);
    s.finish(0);
    assert_eq!(s.kv_blocks_used(), 0);
    assert!(!s.has_unfinished());
    // The next plan tells the executor to forget it.
    add(&mut s, 1, prompt(2, 2));
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.forget, [0]);
}

#[test]
fn decodes_go_first_and_long_prompts_are_chunked() {
    let mut s = Scheduler::new(SchedulerConfig { max_batch_tokens: 5, ..config(32) });
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(3, 1));
    step(&mut s, &mut exec).unwrap();
    add(&mut s, 1, prompt(12, 2));
    let mut chunks = Vec::new();
    while s.num_cached_tokens(1).is_none() || chunks.iter().sum::<usize>() < 12 {
        let (plan, _) = step(&mut s, &mut exec).unwrap();
        assert_eq!(plan.scheduled[0].id, 0, "the running decode comes first");
        assert_eq!(plan.scheduled[0].num_tokens, 1);
        assert!(plan.num_tokens() <= 5);
        chunks.extend(plan.scheduled.iter().filter(|r| r.id == 1).map(|r| r.num_tokens));
    }
    assert_eq!(chunks, [4, 4, 4], "12 prompt tokens in chunks of the 4 left by the decode");
}

#[test]
fn the_newest_request_is_preempted_and_resumes_first_with_all_its_tokens() {
    // 3 blocks: two requests of 4-token prompts fit (one block each) until they grow.
    let mut s = Scheduler::new(config(3));
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(4, 1));
    add(&mut s, 1, prompt(4, 2));
    step(&mut s, &mut exec).unwrap(); // both prefilled: 2 blocks
                                      // Both decode into a second block each: 4 needed, 3 exist. The plan that preempts request
                                      // 1 tells the executor to forget it.
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.forget, [1]);
    assert_eq!(plan.scheduled.iter().map(|r| r.id).collect::<Vec<_>>(), [0]);
    assert_eq!(s.num_preemptions(), 1);
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    add(&mut s, 2, prompt(1, 3));
    // 1 cannot come back while 0 holds the blocks; once 0 finishes, 1 comes back (before 2)
    // with its generated token among its tokens.
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert!(plan.new_requests.is_empty());
    s.finish(0);
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    let resumed = &plan.new_requests[0];
    assert_eq!(resumed.id, 1);
    assert_eq!(resumed.token_ids, [prompt(4, 2), vec![1001]].concat());
    assert_eq!(resumed.num_computed_tokens, 4, "its prompt block was still cached");
    assert_eq!(plan.scheduled.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn static_and_sequential_policies_admit_as_documented() {
    for policy in [SchedulerPolicy::Static, SchedulerPolicy::Sequential] {
        let mut s = Scheduler::new(SchedulerConfig { policy, max_num_seqs: 2, ..config(32) });
        let mut exec = FakeExecutor::default();
        add(&mut s, 0, prompt(2, 1));
        add(&mut s, 1, prompt(2, 2));
        let (plan, _) = step(&mut s, &mut exec).unwrap();
        let want = if policy == SchedulerPolicy::Static { 2 } else { 1 };
        assert_eq!(plan.scheduled.len(), want, "{policy}");
        add(&mut s, 2, prompt(2, 3));
        s.finish(0);
        let (plan, _) = step(&mut s, &mut exec).unwrap();
        let ids: Vec<_> = plan.scheduled.iter().map(|r| r.id).collect();
        match policy {
            // The batch {0, 1} is not done: 2 waits although a slot is free.
            SchedulerPolicy::Static => assert_eq!(ids, [1]),
            _ => assert_eq!(ids, [1], "one at a time, in arrival order"),
        }
    }
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let mut s = Scheduler::new(config(16));
    let mut exec = FakeExecutor::default();
    let system = prompt(8, 7); // two full blocks
    add(&mut s, 0, [system.clone(), vec![1, 2, 3]].concat());
    step(&mut s, &mut exec).unwrap();
    add(&mut s, 1, [system.clone(), vec![4, 5]].concat());
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    let new = &plan.new_requests[0];
    assert_eq!(new.num_computed_tokens, 8, "both system-prompt blocks are hits");
    let held = plan.scheduled.iter().find(|r| r.id == 1).unwrap();
    assert_eq!(held.num_tokens, 2, "only the suffix is computed");
    assert_eq!(s.num_cached_tokens(1), Some(8));
    let first_table = &exec.known[&0].2;
    assert_eq!(new.block_ids[..2], first_table[..2], "the same physical blocks");
    let stats = s.prefix_cache_stats();
    assert_eq!((stats.queries, stats.hits), (11 + 10, 8));
    // The shared blocks are held once each.
    assert_eq!(s.kv_blocks_used(), 3 + 1);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_token() {
    let mut s = Scheduler::new(config(16));
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(8, 1));
    step(&mut s, &mut exec).unwrap();
    s.finish(0);
    add(&mut s, 1, prompt(8, 1));
    let (plan, got) = step(&mut s, &mut exec).unwrap();
    // The last block holds the last token, so only the first block can be taken.
    assert_eq!(plan.new_requests[0].num_computed_tokens, 4);
    assert_eq!(plan.scheduled[0].num_tokens, 4);
    assert_eq!(got, [1]);
}

#[test]
fn blocks_are_named_only_once_their_step_returns() {
    let mut s = Scheduler::new(SchedulerConfig { max_in_flight: 2, ..config(16) });
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(9, 1));
    let first = s.schedule().unwrap();
    let first_table = first.new_requests[0].block_ids.clone();
    // Request 1 arrives while 0's prefill is in flight: nothing of it is cached yet.
    add(&mut s, 1, prompt(9, 1));
    let second = s.schedule().unwrap();
    assert_eq!(second.new_requests[0].num_computed_tokens, 0);
    assert!(s.schedule().is_none(), "two steps in flight at most");
    for plan in [&first, &second] {
        let out = exec.run(plan);
        s.update_from_output(out).unwrap();
    }
    // Both computed the same blocks; the first to return named them, later requests hit.
    s.finish(0);
    s.finish(1);
    add(&mut s, 2, prompt(9, 1));
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    let new = &plan.new_requests[0];
    assert_eq!(new.num_computed_tokens, 8);
    assert_eq!(new.block_ids[..2], first_table[..2]);
}

#[test]
fn an_evicted_prefix_is_never_served_stale() {
    // 4 blocks. Request 0's two full blocks are cached, then freed; request 1 needs every block,
    // so the cached ones are reused for other tokens; request 2 repeats 0's prompt and must
    // compute it all again.
    let mut s = Scheduler::new(config(4));
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(9, 1));
    step(&mut s, &mut exec).unwrap();
    s.finish(0);
    assert_eq!(s.kv_blocks_used(), 0);
    assert_eq!(s.kv_blocks_cached(), 2, "freed, still cached");
    add(&mut s, 1, prompt(16, 2));
    step(&mut s, &mut exec).unwrap();
    assert_eq!(s.kv_blocks_cached(), 4, "1's blocks are named now, 0's are gone");
    s.finish(1);
    add(&mut s, 2, prompt(9, 1));
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.new_requests[0].num_computed_tokens, 0, "no stale hit");
    assert_eq!(plan.scheduled[0].num_tokens, 9);
}

#[test]
fn prefix_caching_off_never_shares() {
    let mut s = Scheduler::new(SchedulerConfig { enable_prefix_caching: false, ..config(16) });
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(9, 1));
    step(&mut s, &mut exec).unwrap();
    add(&mut s, 1, prompt(9, 1));
    let (plan, _) = step(&mut s, &mut exec).unwrap();
    assert_eq!(plan.new_requests[0].num_computed_tokens, 0);
    assert_eq!(s.kv_blocks_cached(), 0);
    assert_eq!(s.prefix_cache_stats().hits, 0);
}

#[test]
fn microbatches_split_the_requests_and_never_share_a_request() {
    let mut s = Scheduler::new(SchedulerConfig { max_in_flight: 2, ..config(32) });
    let mut exec = FakeExecutor::default();
    for id in 0..4 {
        add(&mut s, id, prompt(3, id as u32 + 1));
    }
    let a = s.schedule().unwrap();
    let b = s.schedule().unwrap();
    assert_eq!((a.scheduled.len(), b.scheduled.len()), (2, 2), "each stage gets half");
    let ids = |p: &StepPlan| p.scheduled.iter().map(|r| r.id).collect::<Vec<_>>();
    assert!(ids(&a).iter().all(|id| !ids(&b).contains(id)));
    // Aborting a request in flight keeps its blocks until its step returns.
    let used = s.kv_blocks_used();
    assert!(s.abort(ids(&b)[0]));
    assert!(!s.abort(ids(&b)[0]), "already aborted");
    assert_eq!(s.kv_blocks_used(), used);
    let out = exec.run(&a);
    assert_eq!(s.update_from_output(out).unwrap().len(), 2);
    let out = exec.run(&b);
    assert_eq!(s.update_from_output(out).unwrap().len(), 1, "the aborted request yields nothing");
    assert!(s.kv_blocks_used() < used);
    assert_eq!(s.num_running(), 3);
}

#[test]
fn a_missing_or_unexpected_sample_is_an_error() {
    let mut s = Scheduler::new(config(16));
    add(&mut s, 0, prompt(3, 1));
    s.schedule().unwrap();
    assert!(s.update_from_output(StepOutput::default()).unwrap_err().to_string().contains("no token"));
    let mut s = Scheduler::new(config(16));
    add(&mut s, 1, prompt(3, 2));
    let mut exec = FakeExecutor::default();
    let plan = s.schedule().unwrap();
    let mut out = exec.run(&plan);
    out.sampled.push(Sampled { id: 9, token: SampledToken { token_id: 1, logprob: 0.0, top: Vec::new() } });
    assert!(s.update_from_output(out).is_err());
}

#[test]
fn a_reset_sends_every_request_again_from_scratch_in_admission_order() {
    let mut s = Scheduler::new(config(16));
    let mut exec = FakeExecutor::default();
    add(&mut s, 0, prompt(9, 1));
    step(&mut s, &mut exec).unwrap(); // 0's two full blocks are named now
    add(&mut s, 1, prompt(9, 1)); // shares 0's prefix
    add(&mut s, 2, prompt(5, 2));
    step(&mut s, &mut exec).unwrap();
    assert!(s.prefix_cache_stats().hits > 0, "1 hit 0's blocks before the reset");
    let plan = s.schedule().unwrap(); // a step in flight, never to return
    s.abort(2); // aborted while in flight: leaves with the reset
    assert_eq!(s.reset(), 2);
    assert_eq!((s.kv_blocks_used(), s.kv_blocks_cached(), s.has_in_flight()), (0, 0, false));
    // A fresh executor: every request is new to it, recomputed from its first token, and the
    // prefix cache (whose K/V died with the old executor) serves nothing.
    let mut fresh = FakeExecutor::default();
    let (plan2, _) = step(&mut s, &mut fresh).unwrap();
    assert!(plan2.forget.is_empty(), "nothing to forget: the executor knows nothing");
    let ids: Vec<_> = plan2.new_requests.iter().map(|r| (r.id, r.num_computed_tokens, r.token_ids.len())).collect();
    // 0 sampled twice, 1 once; the step in flight at the reset never counts.
    assert_eq!(ids, [(0, 0, 11), (1, 0, 10)], "admission order, every token computed again");
    assert!(plan.scheduled.iter().any(|r| r.id == 2));
}
