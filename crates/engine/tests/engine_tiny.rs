//! Engine behaviour on a tiny random model with a tiny tokenizer, written to disk in-test:
//! reproducible seeded sampling, stop rules, chunked prefill, continuous batching under a small
//! KV cache, and clear errors for bad requests. Paging, preemption and policies: scheduling.rs.

mod common;

use common::{engine, model_dir, params, text, BLOCK_SIZE};
use shardline_engine::{EngineConfig, EngineError};
use shardline_sampling::{FinishReason, SamplingParams};

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let sampled = |seed| SamplingParams { temperature: 1.5, seed: Some(seed), ..params(24) };
    let a = e.generate(text("hello world"), sampled(1), |_| {}).unwrap();
    let b = e.generate(text("hello world"), sampled(1), |_| {}).unwrap();
    let c = e.generate(text("hello world"), sampled(2), |_| {}).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
    // The same seeded request inside a batch gives the same tokens as alone.
    let ids: Vec<_> = [1, 5, 1].iter().map(|&s| e.add_request(text("hello world"), sampled(s)).unwrap()).collect();
    let outs = e.run_to_completion(&ids, |_| {}).unwrap();
    assert_eq!(outs[0].token_ids, a.token_ids);
    assert_eq!(outs[2].token_ids, a.token_ids);
}

#[test]
fn chunked_prefill_and_batching_do_not_change_greedy_tokens() {
    let dir = model_dir();
    let prompts = ["the quick brown fox jumps", "a", "over the lazy dog and then some more words"];
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| engine(&dir, 64, EngineConfig::default()).generate(text(p), params(12), |_| {}).unwrap())
        .collect();
    // Three requests at once, 5-token budget per step (prompts are prefilled in chunks while
    // others decode), and a cache that holds only two requests at full length (paged on
    // demand, all three start; one may be preempted and recomputed).
    let needs: Vec<usize> = prompts.iter().map(|p| (text(p).len() + 12).div_ceil(BLOCK_SIZE)).collect();
    let blocks = needs.iter().max().unwrap() + needs.iter().min().unwrap();
    let mut e = engine(&dir, blocks, EngineConfig { max_batch_tokens: 5, max_num_seqs: 8, ..Default::default() });
    let ids: Vec<_> = prompts.iter().map(|p| e.add_request(text(p), params(12)).unwrap()).collect();
    let mut max_running = 0;
    let mut events = Vec::new();
    while e.has_unfinished() {
        events.extend(e.step().unwrap());
        max_running = max_running.max(e.num_running());
    }
    assert_eq!(max_running, 3, "blocks are allocated on demand, so all three start at once");
    for (id, want) in ids.iter().zip(&alone) {
        let got = e.take_output(*id).unwrap();
        assert_eq!(got.token_ids, want.token_ids);
        assert_eq!(got.text, want.text);
        assert_eq!(got.finish_reason, FinishReason::Length);
        let streamed: String = events.iter().filter(|ev| ev.request_id == *id).map(|ev| ev.text.as_str()).collect();
        assert_eq!(streamed, got.text, "streamed deltas add up to the final text");
    }
}

#[test]
fn stop_strings_token_ids_and_eos_end_generation() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let free = e.generate(text("stop test"), params(20), |_| {}).unwrap();
    assert_eq!(free.token_ids.len(), 20);
    // Stop token id: the third generated token.
    let third = free.token_ids[2];
    let first_hit = free.token_ids.iter().position(|&t| t == third).unwrap();
    let p = SamplingParams { stop_token_ids: vec![third], ..params(20) };
    let out = e.generate(text("stop test"), p, |_| {}).unwrap();
    assert_eq!(out.token_ids, free.token_ids[..=first_hit]);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // EOS (when not ignored) is the same rule through the config's eos id.
    let p = SamplingParams { ignore_eos: false, stop_token_ids: vec![], ..params(20) };
    let mut e2 = engine(&dir, 64, EngineConfig::default());
    let eos = e2.eos_token_ids().to_vec();
    assert!(eos.contains(&257));
    let out = e2.generate(text("stop test"), p, |_| {}).unwrap();
    if let Some(i) = free.token_ids.iter().position(|t| eos.contains(t)) {
        assert_eq!(out.token_ids, free.token_ids[..=i]);
    } else {
        assert_eq!(out.token_ids, free.token_ids);
    }
    // Stop string: a piece from the middle of the free text; output is the text before it.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() > 6, "free text too short: {:?}", free.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = free.text.find(&stop).unwrap();
    let p = SamplingParams { stop: vec![stop.clone()], ..params(20) };
    let out = e.generate(text("stop test"), p, |_| {}).unwrap();
    assert_eq!(out.text, free.text[..cut], "stop string {stop:?}");
    assert_eq!(out.finish_reason, FinishReason::Stop);
}

#[test]
fn bad_requests_are_invalid_argument_errors() {
    let dir = model_dir();
    let mut e = engine(&dir, 16, EngineConfig::default());
    let cases: Vec<(Vec<u32>, SamplingParams, &str)> = vec![
        (Vec::new(), params(4), "empty"),
        (vec![1, 300], params(4), "300"),
        (text("hi"), SamplingParams { temperature: -1.0, ..params(4) }, "temperature"),
        (text("hi"), SamplingParams { top_p: 0.0, ..params(4) }, "top_p"),
        (text("hi"), params(600), "context length"),
        (text("hi"), params(100), "KV cache"),
    ];
    for (prompt, p, needle) in cases {
        let err = e.add_request(prompt, p).unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.to_string().contains(needle), "`{err}` should mention {needle}");
    }
    assert!(!e.has_unfinished(), "rejected requests leave nothing queued");
    let ok: Result<_, EngineError> = e.generate(text("hi"), params(3), |_| {});
    assert_eq!(ok.unwrap().token_ids.len(), 3);
}

#[test]
fn logprobs_are_returned_when_asked() {
    let dir = model_dir();
    let mut e = engine(&dir, 64, EngineConfig::default());
    let out = e.generate(text("hi"), SamplingParams { logprobs: Some(3), ..params(5) }, |_| {}).unwrap();
    let lp = out.logprobs.unwrap();
    assert_eq!(lp.len(), 5);
    for (entry, &id) in lp.iter().zip(&out.token_ids) {
        assert_eq!(entry.token_id, id);
        assert_eq!(entry.top.len(), 3);
        assert_eq!(entry.top[0].token_id, id, "greedy picks the top logprob");
        assert!((entry.top[0].logprob - entry.logprob).abs() < 1e-6);
    }
    let none = e.generate(text("hi"), params(2), |_| {}).unwrap();
    assert!(none.logprobs.is_none());
}
