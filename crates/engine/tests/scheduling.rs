//! Paged KV allocation, preemption by recompute and the scheduler policies, on the tiny model:
//! whatever the schedule, a greedy request's tokens and text are those of the request run alone.

mod common;

use common::{engine, model_dir, params, text, BLOCK_SIZE};
use shardline_engine::{Engine, EngineConfig, GenerationOutput, RequestId, SchedulerPolicy, StepEvent};
use shardline_sampling::SamplingParams;

/// Per step: the events and how many sequences were running after it.
type Steps = Vec<(Vec<StepEvent>, usize)>;

fn with_policy(policy: SchedulerPolicy, max_num_seqs: usize) -> EngineConfig {
    EngineConfig { max_num_seqs, policy, ..Default::default() }
}

fn alone(dir: &tempfile::TempDir, prompt: &str, p: SamplingParams) -> GenerationOutput {
    engine(dir, 64, EngineConfig::default()).generate(text(prompt), p, |_| {}).unwrap()
}

fn run(e: &mut Engine) -> Steps {
    let mut steps = Vec::new();
    while e.has_unfinished() {
        let events = e.step().unwrap();
        steps.push((events, e.num_running()));
        assert!(e.kv_blocks_used() <= e.kv_blocks_total());
    }
    steps
}

fn streamed(steps: &Steps, id: RequestId) -> String {
    steps.iter().flat_map(|(evs, _)| evs).filter(|ev| ev.request_id == id).map(|ev| ev.text.as_str()).collect()
}

#[test]
fn preemption_under_a_tiny_cache_recomputes_the_same_tokens() {
    let dir = model_dir();
    let prompts = ["the quick brown fox", "jumps over", "the lazy dog again", "and again and"];
    let sampled = SamplingParams { temperature: 1.5, seed: Some(7), ..params(16) };
    let request = |i: usize| if i == 1 { sampled.clone() } else { params(16) };
    let want: Vec<_> = prompts.iter().enumerate().map(|(i, p)| alone(&dir, p, request(i))).collect();
    // Each request fits alone, far from all four at once: running sequences must be preempted.
    let need = prompts.iter().map(|p| (text(p).len() + 16).div_ceil(BLOCK_SIZE)).max();
    let mut e = engine(&dir, need.unwrap() + 2, EngineConfig { max_batch_tokens: 7, ..Default::default() });
    let ids: Vec<_> = prompts.iter().enumerate().map(|(i, p)| e.add_request(text(p), request(i)).unwrap()).collect();
    let steps = run(&mut e);
    assert!(e.num_preemptions() > 0, "the cache was meant to be too small");
    assert_eq!(e.kv_blocks_used(), 0, "finished requests return their blocks");
    for (id, want) in ids.iter().zip(&want) {
        let got = e.take_output(*id).unwrap();
        assert_eq!(got.token_ids, want.token_ids, "request {id}");
        assert_eq!(got.text, want.text, "request {id}");
        assert_eq!(streamed(&steps, *id), got.text, "request {id}: the stream continues seamlessly");
    }
}

#[test]
fn preempted_requests_resume_before_later_arrivals() {
    let dir = model_dir();
    let need = (text("one more time").len() + 16).div_ceil(BLOCK_SIZE);
    let mut e = engine(&dir, need + 2, with_policy(SchedulerPolicy::Continuous, 2));
    let ids: Vec<_> =
        ["one more time", "two more", "three"].iter().map(|p| e.add_request(text(p), params(16)).unwrap()).collect();
    let steps = run(&mut e);
    assert!(e.num_preemptions() > 0);
    // The second request was preempted for the first; it goes back in ahead of the third, which
    // can only start once one of the first two has finished.
    let first_done = step_of(&steps, ids[0], true).min(step_of(&steps, ids[1], true));
    assert!(step_of(&steps, ids[2], false) > first_done);
}

/// Two requests, a step, then a third while they run; returns outputs, per-step record, ids.
fn late_joiner(policy: SchedulerPolicy) -> (Vec<GenerationOutput>, Steps, Vec<RequestId>) {
    let dir = model_dir();
    let mut e = engine(&dir, 64, with_policy(policy, 2));
    let mut ids =
        vec![e.add_request(text("first one"), params(12)).unwrap(), e.add_request(text("second"), params(6)).unwrap()];
    let mut steps = vec![(e.step().unwrap(), e.num_running())];
    ids.push(e.add_request(text("late"), params(5)).unwrap());
    steps.extend(run(&mut e));
    let outs = ids.iter().map(|id| e.take_output(*id).unwrap()).collect();
    (outs, steps, ids)
}

/// Step index of the first or last event of `id`.
fn step_of(steps: &Steps, id: RequestId, last: bool) -> usize {
    let mut hits =
        steps.iter().enumerate().filter(|(_, (evs, _))| evs.iter().any(|ev| ev.request_id == id)).map(|(i, _)| i);
    if last { hits.next_back() } else { hits.next() }.unwrap()
}

#[test]
fn static_policy_admits_only_between_batches() {
    let (cont, cont_steps, ids) = late_joiner(SchedulerPolicy::Continuous);
    let batch_end = |steps: &Steps| step_of(steps, ids[0], true).max(step_of(steps, ids[1], true));
    assert!(
        step_of(&cont_steps, ids[2], false) < batch_end(&cont_steps),
        "continuous: the late request joins mid-batch"
    );
    let (stat, stat_steps, _) = late_joiner(SchedulerPolicy::Static);
    assert!(
        step_of(&stat_steps, ids[2], false) > batch_end(&stat_steps),
        "static: the late request waits for the batch"
    );
    assert_eq!(stat_steps[1].1, 2, "both batch members run together");
    for (s, c) in stat.iter().zip(&cont) {
        assert_eq!(s.token_ids, c.token_ids);
        assert_eq!(s.text, c.text);
    }
}

#[test]
fn sequential_policy_runs_one_request_at_a_time() {
    let (cont, _, ids) = late_joiner(SchedulerPolicy::Continuous);
    let (seq, steps, _) = late_joiner(SchedulerPolicy::Sequential);
    assert!(steps.iter().all(|(evs, running)| *running <= 1 && evs.len() <= 1), "never more than one running");
    assert!(step_of(&steps, ids[0], true) < step_of(&steps, ids[1], false));
    assert!(step_of(&steps, ids[1], true) < step_of(&steps, ids[2], false));
    for (s, c) in seq.iter().zip(&cont) {
        assert_eq!(s.token_ids, c.token_ids);
    }
    // The second request queued for the whole of the first one's decode.
    assert!(seq[1].metrics.queue_ms >= seq[0].metrics.decode_ms && seq[1].metrics.queue_ms > 0.0);
}

#[test]
fn abort_returns_a_running_requests_blocks_at_once() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let a = e.add_request(text("abort me please"), params(30)).unwrap();
    let b = e.add_request(text("and me too"), params(30)).unwrap();
    for _ in 0..3 {
        e.step().unwrap();
    }
    let both = e.kv_blocks_used();
    assert!(e.abort(a));
    let one = e.kv_blocks_used();
    assert!(0 < one && one < both, "{both} -> {one}");
    assert!(e.abort(b));
    assert_eq!(e.kv_blocks_used(), 0);
    assert!(!e.has_unfinished() && !e.abort(b) && e.take_output(a).is_none());
    // The engine goes on with a clean cache.
    assert_eq!(e.generate(text("after"), params(3), |_| {}).unwrap().token_ids.len(), 3);
}

#[test]
fn kv_blocks_are_allocated_as_the_sequence_grows() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let prompt = text("a short prompt");
    let len = prompt.len();
    let id = e.add_request(prompt, params(40)).unwrap();
    assert_eq!(e.kv_blocks_used(), 0, "waiting requests hold no blocks");
    for step in 1..=40 {
        e.step().unwrap();
        // After step k the prompt and k − 1 generated tokens are in the cache.
        let used = (len + step - 1).div_ceil(BLOCK_SIZE);
        assert_eq!(e.kv_blocks_used(), if step < 40 { used } else { 0 }, "step {step}");
        assert!((e.kv_usage() - e.kv_blocks_used() as f64 / 64.0).abs() < 1e-12);
    }
    let out = e.take_output(id).unwrap();
    assert_eq!((out.prompt_token_ids.len(), out.token_ids.len()), (len, 40));
    assert!(e.take_output(id).is_none(), "an output is taken once");
}

#[test]
fn step_events_carry_logprobs_and_metrics_add_up() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let mut events = Vec::new();
    let out = e
        .generate(text("hi there"), SamplingParams { logprobs: Some(2), ..params(6) }, |ev| events.push(ev.clone()))
        .unwrap();
    let streamed: Vec<_> = events.iter().map(|ev| ev.logprobs.clone().unwrap()).collect();
    assert_eq!(Some(streamed), out.logprobs);
    e.generate(text("hi there"), params(2), |ev| assert!(ev.logprobs.is_none())).unwrap();
    let m = &out.metrics;
    assert!(m.queue_ms >= 0.0 && m.prefill_ms > 0.0 && m.decode_ms > 0.0);
    assert!((m.queue_ms + m.prefill_ms - m.ttft_ms).abs() < 1e-6, "{m:?}");
    assert!((m.ttft_ms + m.decode_ms - m.e2e_ms).abs() < 1e-6, "{m:?}");
}

/// The prefix cache on real K/V: a prompt computed once is reused (and gives the same tokens);
/// once other requests have taken its blocks, it is computed again rather than read stale.
#[test]
fn cached_prefixes_are_reused_and_evicted_ones_recomputed() {
    let dir = model_dir();
    let prompt = text("the quick brown fox jumps over the lazy dog");
    let want = engine(&dir, 64, EngineConfig { enable_prefix_caching: false, ..Default::default() })
        .generate(prompt.clone(), params(8), |_| {})
        .unwrap();
    // Room for the prompt's request and little more.
    let need = (prompt.len() + 8).div_ceil(BLOCK_SIZE);
    let mut e = engine(&dir, need + 1, EngineConfig::default());
    let first = e.generate(prompt.clone(), params(8), |_| {}).unwrap();
    let again = e.generate(prompt.clone(), params(8), |_| {}).unwrap();
    assert_eq!((first.num_cached_tokens, first.token_ids.clone()), (0, want.token_ids.clone()));
    assert_eq!(again.num_cached_tokens, (prompt.len() - 1) / BLOCK_SIZE * BLOCK_SIZE, "every full block is reused");
    assert_eq!(again.token_ids, want.token_ids);
    // Other prompts fill the cache: the blocks holding the prompt's K/V now hold theirs.
    for other in ["a completely different request here", "and another one that is long enough"] {
        let out = e.generate(text(other), params(8), |_| {}).unwrap();
        assert_eq!(out.num_cached_tokens, 0);
    }
    let after = e.generate(prompt.clone(), params(8), |_| {}).unwrap();
    assert!(after.num_cached_tokens < again.num_cached_tokens, "evicted blocks are not found");
    assert_eq!(after.token_ids, want.token_ids, "and what is found is not stale");
    let stats = e.prefix_cache_stats();
    assert_eq!(stats.hits as usize, again.num_cached_tokens + after.num_cached_tokens);
}
