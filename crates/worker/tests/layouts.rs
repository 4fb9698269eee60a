//! Every TP × PP layout gives the single process's greedy tokens (and logprobs within 1e-4),
//! on a tiny random model whose head counts do not divide evenly; prefix caching, preemption,
//! chunked prefill, seeded sampling and structured outputs (whose masks follow each step to
//! whichever rank samples) do not change that. Ranks are threads of this test
//! process talking over loopback TCP, exactly as separate processes would.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use candle_core::DType;
use shardline_comm::GroupSecret;
use shardline_engine::{Engine, EngineConfig, Executor, GenerationOutput};
use shardline_exec::{NewRequest, ScheduledRequest, StepPlan};
use shardline_model::{DeviceKind, LoadFormat, ModelSpec, Quantization};
use shardline_sampling::{SamplingParams, TokenLogprob};
use shardline_structured::Constraint;
use shardline_tokenizer::Tokenizer;
use shardline_worker::{run_worker, start_group, GroupConfig, GroupExecutor, GroupLayout, LocalExecutor, RankEnv};

const TIMEOUT: Duration = Duration::from_secs(30);
const BLOCK_SIZE: usize = 4;

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shardline_model::testing::tiny_config("Qwen2ForCausalLM", 300, false);
    cfg["num_hidden_layers"] = serde_json::json!(4);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 5).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300)).unwrap();
    dir
}

fn tokenizer(dir: &tempfile::TempDir) -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_path(dir.path()).unwrap())
}

type Workload = dyn Fn(&mut Engine) -> Vec<GenerationOutput>;

/// Three prompts of different lengths, greedy with logprobs.
fn three_prompts(engine: &mut Engine) -> Vec<GenerationOutput> {
    let tok = Arc::clone(engine.tokenizer());
    let p = SamplingParams { max_tokens: 10, ignore_eos: true, logprobs: Some(5), ..SamplingParams::greedy() };
    let ids: Vec<_> = ["the quick brown fox", "a", "jumps over the lazy dog again and again"]
        .iter()
        .map(|t| engine.add_request(tok.encode(t, true).unwrap(), p.clone()).unwrap())
        .collect();
    engine.run_to_completion(&ids, |_| {}).unwrap()
}

fn single(dir: &tempfile::TempDir, cfg: EngineConfig, num_blocks: usize, run: &Workload) -> Vec<GenerationOutput> {
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let exec = LocalExecutor::new(model, num_blocks, BLOCK_SIZE).unwrap();
    run(&mut Engine::new(Box::new(exec), tokenizer(dir), &[], cfg).unwrap())
}

fn group_config(dir: &tempfile::TempDir, tp: usize, pp: usize, num_blocks: usize) -> GroupConfig {
    GroupConfig {
        model: dir.path().to_str().unwrap().to_string(),
        load_format: LoadFormat::Auto,
        quantization: Quantization::Auto,
        dtype: DType::F32,
        device: DeviceKind::Cpu,
        layout: GroupLayout::new(tp, pp, 4, None).unwrap(),
        num_blocks,
        block_size: BLOCK_SIZE,
        heartbeat_timeout: Duration::from_secs(5),
        recover: false,
    }
}

fn rank_env(rank: usize, world_size: usize, port: u16) -> RankEnv {
    RankEnv {
        rank,
        world_size,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        devices: Vec::new(),
        secret: Some(GroupSecret::from_text("layouts-test-group-secret").unwrap()),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `run` on an engine over a `tp` × `pp` group whose other ranks are threads here.
fn grouped(
    dir: &tempfile::TempDir,
    (tp, pp): (usize, usize),
    cfg: EngineConfig,
    num_blocks: usize,
    run: &Workload,
) -> Vec<GenerationOutput> {
    let port = free_port();
    let world = tp * pp;
    std::thread::scope(|s| {
        let workers: Vec<_> =
            (1..world).map(|r| s.spawn(move || run_worker(&rank_env(r, world, port), TIMEOUT))).collect();
        let ready =
            start_group(group_config(dir, tp, pp, num_blocks), &rank_env(0, world, port), TIMEOUT, TIMEOUT).unwrap();
        assert_eq!(ready.ready.len(), world, "every rank reported READY");
        let exec = GroupExecutor::new(ready);
        let mut engine = Engine::new(Box::new(exec), tokenizer(dir), &[], cfg).unwrap();
        let out = run(&mut engine);
        drop(engine); // shuts the group down
        for w in workers {
            w.join().unwrap().unwrap();
        }
        out
    })
}

fn assert_same(got: &[GenerationOutput], want: &[GenerationOutput], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.token_ids, w.token_ids, "{what}, request {i}: tokens");
        for (gs, ws) in g.logprobs.iter().flatten().zip(w.logprobs.iter().flatten()) {
            for (a, b) in gs.top.iter().zip(&ws.top) {
                assert_eq!(a.token_id, b.token_id, "{what}, request {i}");
                assert!((a.logprob - b.logprob).abs() < 1e-4, "{what}, request {i}: {} vs {}", a.logprob, b.logprob);
            }
        }
    }
}

#[test]
fn every_layout_matches_the_single_process() {
    let dir = model_dir();
    let want = single(&dir, EngineConfig::default(), 64, &three_prompts);
    for layout in [(2, 1), (3, 1), (4, 1), (1, 2), (1, 3), (2, 2)] {
        let got = grouped(&dir, layout, EngineConfig::default(), 64, &three_prompts);
        assert_same(&got, &want, &format!("tp {} pp {}", layout.0, layout.1));
    }
}

/// With PP, rank 0 may submit the next step before the previous one returns, so both stages
/// work at once; results come back in order and match one-at-a-time execution.
#[test]
fn pipeline_keeps_several_steps_in_flight() {
    let dir = model_dir();
    let sampling = SamplingParams { logprobs: Some(3), ..SamplingParams::greedy() }.sampler_settings(0);
    let plan_for = |id: u64, tokens: Vec<u32>, blocks: Vec<u32>| StepPlan {
        new_requests: vec![NewRequest {
            id,
            token_ids: tokens.clone(),
            num_computed_tokens: 0,
            block_ids: blocks,
            sampling: sampling.clone(),
        }],
        scheduled: vec![ScheduledRequest { id, num_tokens: tokens.len(), ..Default::default() }],
        ..Default::default()
    };
    let (a, b) = (vec![5u32, 6, 7, 8, 9], vec![40u32, 41, 42]);
    // One at a time, in the single process.
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let mut local = LocalExecutor::new(model, 64, BLOCK_SIZE).unwrap();
    let mut want = Vec::new();
    for plan in [plan_for(1, a.clone(), vec![0, 1]), plan_for(2, b.clone(), vec![2])] {
        local.submit(plan, None).unwrap();
        want.push(local.wait().unwrap());
    }

    let port = free_port();
    std::thread::scope(|s| {
        let worker = s.spawn(move || run_worker(&rank_env(1, 2, port), TIMEOUT));
        let ready = start_group(group_config(&dir, 1, 2, 64), &rank_env(0, 2, port), TIMEOUT, TIMEOUT).unwrap();
        let mut exec = GroupExecutor::new(ready);
        assert_eq!(exec.max_in_flight(), 2);
        exec.submit(plan_for(1, a.clone(), vec![0, 1]), None).unwrap();
        exec.submit(plan_for(2, b.clone(), vec![2]), None).unwrap();
        for w in &want {
            let got = exec.wait().unwrap();
            assert_eq!(got.sampled.len(), 1);
            let (g, w) = (&got.sampled[0], &w.sampled[0]);
            assert_eq!((g.id, g.token.token_id), (w.id, w.token.token_id), "results come back in order");
            for (x, y) in g.token.top.iter().zip(&w.token.top) {
                assert_eq!(x.token_id, y.token_id);
                assert!((x.logprob - y.logprob).abs() < 1e-4, "logprobs differ: {} vs {}", x.logprob, y.logprob);
            }
        }
        drop(exec);
        worker.join().unwrap().unwrap();
    });
}

/// The engine keeps one microbatch per stage in flight over a PP group: with many concurrent
/// requests and prompts chunked over several steps, the tokens are still the single process's.
#[test]
fn engine_pipelines_microbatches_over_stages() {
    let many = |engine: &mut Engine| {
        let tok = Arc::clone(engine.tokenizer());
        let prompts =
            ["the quick brown fox", "a", "jumps over the lazy dog", "again and again", "b c d", "over the fox"];
        let p = SamplingParams { max_tokens: 6, ignore_eos: true, ..SamplingParams::greedy() };
        let ids: Vec<_> =
            prompts.iter().map(|t| engine.add_request(tok.encode(t, true).unwrap(), p.clone()).unwrap()).collect();
        engine.run_to_completion(&ids, |_| {}).unwrap()
    };
    let dir = model_dir();
    let cfg = || EngineConfig { max_batch_tokens: 8, ..Default::default() };
    let want = single(&dir, cfg(), 64, &many);
    let got = grouped(&dir, (1, 2), cfg(), 64, &many);
    assert_same(&got, &want, "pp 2");
}

/// Requests sharing a 24-token prefix (6 blocks) with distinct tails, submitted in two waves so
/// the second wave can hit what the first computed; `sampling` decides greedy or seeded.
fn shared_prefix_waves(engine: &mut Engine, sampling: &SamplingParams) -> Vec<GenerationOutput> {
    let prefix: Vec<u32> = (20..44).collect();
    let prompt = |i: u32| [prefix.clone(), vec![100 + i, 150 + i, 200 + i]].concat();
    let p = SamplingParams { max_tokens: 8, ignore_eos: true, ..sampling.clone() };
    let mut outs = Vec::new();
    for wave in [0..3u32, 3..6] {
        let ids: Vec<_> = wave.map(|i| engine.add_request(prompt(i), p.clone()).unwrap()).collect();
        outs.extend(engine.run_to_completion(&ids, |_| {}).unwrap());
    }
    outs
}

/// A cache that holds each request of a wave alone (9 blocks) but not the wave at once, even
/// with the shared prefix held once: requests are preempted and recomputed.
const TIGHT_BLOCKS: usize = 12;

fn greedy_waves(engine: &mut Engine) -> Vec<GenerationOutput> {
    let outs = shared_prefix_waves(engine, &SamplingParams { logprobs: Some(3), ..SamplingParams::greedy() });
    let cached: usize = outs.iter().map(|o| o.num_cached_tokens).sum();
    let limits = engine.limits();
    assert_eq!(cached > 0, limits.prefix_caching, "prefix caching {}: {cached} cached tokens", limits.prefix_caching);
    if limits.num_kv_blocks == TIGHT_BLOCKS {
        assert!(engine.num_preemptions() > 0, "{TIGHT_BLOCKS} blocks were meant to force preemption");
    }
    outs
}

#[test]
fn prefix_caching_on_and_off_give_the_same_tokens_on_every_layout() {
    let dir = model_dir();
    let off = EngineConfig { enable_prefix_caching: false, ..Default::default() };
    let want = single(&dir, off.clone(), 64, &greedy_waves);
    // A roomy cache, and a tiny one (preemption) with a small step budget (chunked prefill).
    let roomy = (EngineConfig::default(), 64);
    let tight = (EngineConfig { max_batch_tokens: 6, ..Default::default() }, TIGHT_BLOCKS);
    for (cfg, blocks) in [roomy, tight] {
        let what = format!("budget {}, {blocks} blocks", cfg.max_batch_tokens);
        assert_same(&single(&dir, cfg.clone(), blocks, &greedy_waves), &want, &format!("tp 1, cache on, {what}"));
        for layout in [(2, 1), (1, 2), (2, 2)] {
            let name = format!("tp {} pp {}", layout.0, layout.1);
            let on = grouped(&dir, layout, cfg.clone(), blocks, &greedy_waves);
            assert_same(&on, &want, &format!("{name}, cache on, {what}"));
        }
    }
    let off_22 = grouped(&dir, (2, 2), off, 64, &greedy_waves);
    assert_same(&off_22, &want, "tp 2 pp 2, cache off");
}

#[test]
fn seeded_sampling_is_the_same_on_every_layout_and_under_preemption() {
    let dir = model_dir();
    let seeded = |engine: &mut Engine| {
        shared_prefix_waves(engine, &SamplingParams { temperature: 0.8, seed: Some(1234), ..Default::default() })
    };
    let want = single(&dir, EngineConfig::default(), 64, &seeded);
    let distinct: std::collections::HashSet<_> = want.iter().map(|o| o.token_ids.clone()).collect();
    assert!(distinct.len() > 1, "sampling at temperature 0.8 varies with the prompt");
    let preempting = || EngineConfig { max_batch_tokens: 6, ..Default::default() };
    let seeded_preempted = move |e: &mut Engine| {
        let out = seeded(e);
        assert!(e.num_preemptions() > 0, "{TIGHT_BLOCKS} blocks were meant to force preemption");
        out
    };
    assert_same(&single(&dir, preempting(), TIGHT_BLOCKS, &seeded_preempted), &want, "tp 1, preempted");
    assert_same(&grouped(&dir, (2, 2), EngineConfig::default(), 64, &seeded), &want, "tp 2 pp 2");
    assert_same(&grouped(&dir, (2, 2), preempting(), TIGHT_BLOCKS, &seeded_preempted), &want, "tp 2 pp 2, preempted");
}

/// Presence and frequency penalties and logit bias travel to the sampling rank with the
/// prompt's length, so they count the same generated tokens on every layout and after a
/// preemption recomputes a request.
#[test]
fn penalties_and_logit_bias_are_the_same_on_every_layout_and_under_preemption() {
    let dir = model_dir();
    fn penalized(engine: &mut Engine) -> Vec<GenerationOutput> {
        let params = SamplingParams {
            temperature: 0.7,
            seed: Some(99),
            presence_penalty: 0.8,
            frequency_penalty: 0.6,
            logit_bias: vec![(5, 3.0), (17, -100.0)],
            ..Default::default()
        };
        shared_prefix_waves(engine, &params)
    }
    let want = single(&dir, EngineConfig::default(), 64, &penalized);
    assert!(want.iter().all(|o| !o.token_ids.contains(&17)), "token 17 is banned");
    let plain = single(&dir, EngineConfig::default(), 64, &|e: &mut Engine| {
        shared_prefix_waves(e, &SamplingParams { temperature: 0.7, seed: Some(99), ..Default::default() })
    });
    assert_ne!(
        want.iter().map(|o| &o.token_ids).collect::<Vec<_>>(),
        plain.iter().map(|o| &o.token_ids).collect::<Vec<_>>(),
        "the penalties change what is sampled"
    );
    let preempting = EngineConfig { max_batch_tokens: 6, ..Default::default() };
    let penalized_preempted = |e: &mut Engine| {
        let out = penalized(e);
        assert!(e.num_preemptions() > 0, "{TIGHT_BLOCKS} blocks were meant to force preemption");
        out
    };
    assert_same(&single(&dir, preempting, TIGHT_BLOCKS, &penalized_preempted), &want, "tp 1, preempted");
    for layout in [(2, 1), (1, 2), (2, 2)] {
        assert_same(&grouped(&dir, layout, EngineConfig::default(), 64, &penalized), &want, &format!("{layout:?}"));
    }
}

/// The shared-prefix waves asking for prompt logprobs: no request reuses cached K/V, since each
/// needs every prompt position's logits.
fn scored_waves(engine: &mut Engine) -> Vec<GenerationOutput> {
    let sampling = SamplingParams { logprobs: Some(3), prompt_logprobs: Some(3), ..SamplingParams::greedy() };
    let outs = shared_prefix_waves(engine, &sampling);
    assert!(outs.iter().all(|o| o.num_cached_tokens == 0), "a request scoring its prompt computes all of it");
    if engine.limits().num_kv_blocks == TIGHT_BLOCKS {
        assert!(engine.num_preemptions() > 0, "{TIGHT_BLOCKS} blocks were meant to force preemption");
    }
    outs
}

fn assert_same_prompt_scores(got: &[GenerationOutput], want: &[GenerationOutput], what: &str) {
    assert_same(got, want, what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.prompt_logprobs.as_ref().unwrap(), w.prompt_logprobs.as_ref().unwrap());
        assert_eq!(g.len(), w.len(), "{what}, request {i}");
        assert!(g[0].is_none(), "nothing scores the first prompt token");
        for (p, (a, b)) in g.iter().zip(w).enumerate().skip(1) {
            let (a, b) = (a.as_ref().expect("every later position is scored"), b.as_ref().unwrap());
            assert_eq!((a.token_id, a.rank), (b.token_id, b.rank), "{what}, request {i}, position {p}");
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{what}, request {i}, position {p}");
            let ids = |s: &shardline_sampling::ScoredToken| s.top.iter().map(|t| t.token_id).collect::<Vec<_>>();
            assert_eq!(ids(a), ids(b), "{what}, request {i}, position {p}");
        }
    }
}

/// Prompt logprobs score each prompt token under the logits before it: a greedy continuation,
/// scored as part of a prompt, gets the logprobs (rank 1) it was sampled with; and the scores
/// are the same on every layout, with chunked prefill and under preemption.
#[test]
fn prompt_logprobs_match_sampled_logprobs_and_every_layout() {
    let dir = model_dir();
    let mut engine = Engine::new(
        Box::new(
            LocalExecutor::new(
                ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap(),
                64,
                BLOCK_SIZE,
            )
            .unwrap(),
        ),
        tokenizer(&dir),
        &[],
        EngineConfig::default(),
    )
    .unwrap();
    let prompt: Vec<u32> = (20..30).collect();
    let greedy = SamplingParams { max_tokens: 6, ignore_eos: true, logprobs: Some(3), ..SamplingParams::greedy() };
    let generated = engine.generate(prompt.clone(), greedy, |_| {}).unwrap();
    let scoring = SamplingParams { max_tokens: 1, prompt_logprobs: Some(3), ..SamplingParams::greedy() };
    let scored = engine.generate([prompt, generated.token_ids.clone()].concat(), scoring, |_| {}).unwrap();
    let scores = scored.prompt_logprobs.unwrap();
    for (j, sampled) in generated.logprobs.unwrap().iter().enumerate() {
        let s = scores[10 + j].as_ref().unwrap();
        assert_eq!((s.token_id, s.rank), (sampled.token_id, 1), "generated token {j}");
        assert!(
            (s.logprob - sampled.logprob).abs() < 1e-4,
            "generated token {j}: {} vs {}",
            s.logprob,
            sampled.logprob
        );
        // The prompt's rows go through the matmuls many at a time, a decode row alone: the
        // sums may round differently in the last bit, so the top lists match within 1e-4.
        let ids = |top: &[TokenLogprob]| top.iter().map(|t| t.token_id).collect::<Vec<_>>();
        assert_eq!(ids(&s.top), ids(&sampled.top), "generated token {j}");
        for (a, b) in s.top.iter().zip(&sampled.top) {
            assert!((a.logprob - b.logprob).abs() < 1e-4, "generated token {j}: {a:?} vs {b:?}");
        }
    }

    let want = single(&dir, EngineConfig::default(), 64, &scored_waves);
    let tight = EngineConfig { max_batch_tokens: 6, ..Default::default() };
    assert_same_prompt_scores(
        &single(&dir, tight.clone(), TIGHT_BLOCKS, &scored_waves),
        &want,
        "tp 1, chunked, preempted",
    );
    for layout in [(2, 1), (1, 2), (2, 2)] {
        let got = grouped(&dir, layout, EngineConfig::default(), 64, &scored_waves);
        assert_same_prompt_scores(&got, &want, &format!("{layout:?}"));
    }
    let got = grouped(&dir, (2, 2), tight, TIGHT_BLOCKS, &scored_waves);
    assert_same_prompt_scores(&got, &want, "tp 2 pp 2, chunked, preempted");
}

/// A regex and a choice beside a free request, seeded at temperature: each constrained output
/// matches, so every mask reached the rank that sampled.
fn constrained(engine: &mut Engine) -> Vec<GenerationOutput> {
    let tok = Arc::clone(engine.tokenizer());
    let regex = Constraint::Regex("[0-9]{2}:[0-9]{2}".into());
    let choice = Constraint::Choice(vec!["yes".into(), "no".into(), "maybe".into()]);
    let ids: Vec<_> = [Some(regex), Some(choice), None]
        .into_iter()
        .enumerate()
        .map(|(i, constraint)| {
            let p = SamplingParams {
                temperature: 0.9,
                seed: Some(5 + i as u64),
                max_tokens: 10,
                constraint,
                ..Default::default()
            };
            engine.add_request(tok.encode(&format!("request {i}: the time is now"), true).unwrap(), p).unwrap()
        })
        .collect();
    let outs = engine.run_to_completion(&ids, |_| {}).unwrap();
    let (time, answer) = (&outs[0].text, &outs[1].text);
    assert!(time.len() == 5 && time.as_bytes()[2] == b':' && time.replace(':', "").parse::<u32>().is_ok(), "{time}");
    assert!(["yes", "no", "maybe"].contains(&answer.as_str()), "{answer}");
    outs
}

/// With tp 2 × pp 1, rank 0's own shard samples and takes the masks from rank 0's executor
/// directly; with pp 2, a worker of the last stage does, over the control stream, with two
/// steps in flight. A small step budget chunks the prompts, so some masked steps sample
/// nothing and their masks are read all the same.
#[test]
fn structured_output_masks_reach_the_sampling_rank_on_every_layout() {
    let dir = model_dir();
    let want = single(&dir, EngineConfig::default(), 64, &constrained);
    let chunked = || EngineConfig { max_batch_tokens: 6, ..Default::default() };
    assert_same(&single(&dir, chunked(), 64, &constrained), &want, "tp 1, chunked");
    for layout in [(2, 1), (1, 2), (2, 2)] {
        let name = format!("tp {} pp {}", layout.0, layout.1);
        assert_same(&grouped(&dir, layout, EngineConfig::default(), 64, &constrained), &want, &name);
        assert_same(&grouped(&dir, layout, chunked(), 64, &constrained), &want, &format!("{name}, chunked"));
    }
}
