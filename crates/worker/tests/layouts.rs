//! Every TP × PP layout gives the single process's greedy tokens (and logprobs within 1e-4),
//! on a tiny random model whose head counts do not divide evenly. Ranks are threads of this test
//! process talking over loopback TCP, exactly as separate processes would.

use std::net::TcpListener;
use std::time::Duration;

use candle_core::DType;
use shardline_engine::{load_local, Engine, EngineConfig, GenerationOutput, LocalExecutor, ModelSpec, Prompt};
use shardline_sampling::SamplingParams;
use shardline_worker::{run_worker, start_group, GroupExecutor, GroupLayout, GroupSpec, RankEnv};

const TIMEOUT: Duration = Duration::from_secs(30);

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shardline_model::testing::tiny_config("Qwen2ForCausalLM", 300, false);
    cfg["num_hidden_layers"] = serde_json::json!(4);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 5).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300)).unwrap();
    dir
}

fn prompts() -> Vec<Prompt> {
    ["the quick brown fox", "a", "jumps over the lazy dog again and again"]
        .iter()
        .map(|p| Prompt::Text(p.to_string()))
        .collect()
}

fn params() -> SamplingParams {
    SamplingParams { max_tokens: 10, ignore_eos: true, logprobs: Some(5), ..SamplingParams::greedy() }
}

fn generate(engine: &mut Engine) -> Vec<GenerationOutput> {
    let ids: Vec<_> = prompts().iter().map(|p| engine.add_request(p, params()).unwrap()).collect();
    engine.run_to_completion(&ids, |_| {}).unwrap()
}

fn single(dir: &tempfile::TempDir) -> Vec<GenerationOutput> {
    single_with(dir, EngineConfig::default(), generate)
}

fn single_with(
    dir: &tempfile::TempDir,
    cfg: EngineConfig,
    run: fn(&mut Engine) -> Vec<GenerationOutput>,
) -> Vec<GenerationOutput> {
    let (model, tok) = load_local(&ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32)).unwrap();
    let exec = LocalExecutor::new(model, 64, 4).unwrap();
    run(&mut Engine::new(Box::new(exec), tok, &[], cfg).unwrap())
}

fn grouped(dir: &tempfile::TempDir, tp: usize, pp: usize) -> Vec<GenerationOutput> {
    grouped_with(dir, tp, pp, EngineConfig::default(), generate)
}

fn grouped_with(
    dir: &tempfile::TempDir,
    tp: usize,
    pp: usize,
    cfg: EngineConfig,
    run: fn(&mut Engine) -> Vec<GenerationOutput>,
) -> Vec<GenerationOutput> {
    let layout = GroupLayout::new(tp, pp, 4, None).unwrap();
    let spec = GroupSpec {
        model: dir.path().to_str().unwrap().to_string(),
        load_format: "auto".into(),
        dtype: "f32".into(),
        tp: tp as u32,
        pp: pp as u32,
        stage_layers: layout.stage_layers.iter().map(|&l| l as u32).collect(),
        num_blocks: 64,
        block_size: 4,
        device: "cpu".into(),
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = |rank| RankEnv {
        rank,
        world_size: tp * pp,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (1..tp * pp).map(|r| s.spawn(move || run_worker(&env(r), TIMEOUT))).collect();
        let ready = start_group(spec, &env(0), TIMEOUT, TIMEOUT).unwrap();
        assert_eq!(ready.ready.len(), tp * pp, "every rank reported READY");
        let (exec, tok) = GroupExecutor::new(ready);
        let mut engine = Engine::new(Box::new(exec), tok, &[], cfg).unwrap();
        let out = run(&mut engine);
        drop(engine); // shuts the group down
        for w in workers {
            w.join().unwrap().unwrap();
        }
        out
    })
}

#[test]
fn every_layout_matches_the_single_process() {
    let dir = model_dir();
    let want = single(&dir);
    for (tp, pp) in [(2, 1), (3, 1), (4, 1), (1, 2), (1, 3), (2, 2)] {
        let got = grouped(&dir, tp, pp);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.token_ids, w.token_ids, "tp {tp} pp {pp}: greedy tokens");
            for (gs, ws) in g.logprobs.as_ref().unwrap().iter().zip(w.logprobs.as_ref().unwrap()) {
                for (a, b) in gs.top.iter().zip(&ws.top) {
                    assert_eq!(a.token_id, b.token_id, "tp {tp} pp {pp}");
                    assert!((a.logprob - b.logprob).abs() < 1e-4, "tp {tp} pp {pp}: {} vs {}", a.logprob, b.logprob);
                }
            }
        }
    }
}

/// With PP, rank 0 may submit the next step before the previous one returns, so both stages
/// work at once; results come back in order and match one-at-a-time execution.
#[test]
fn pipeline_keeps_several_steps_in_flight() {
    use shardline_engine::{Executor, ScheduledSeq, StepPlan};
    use shardline_model::SeqInput;

    let dir = model_dir();
    let plan_for = |seq_id: u64, tokens: Vec<u32>, blocks: Vec<u32>| StepPlan {
        seqs: vec![ScheduledSeq {
            seq_id,
            input: SeqInput { tokens, cached_len: 0, block_table: blocks, wants_logits: true },
        }],
        finished: vec![],
    };
    let (a, b) = (vec![5u32, 6, 7, 8, 9], vec![40u32, 41, 42]);
    // One at a time, in the single process.
    let (model, _) = load_local(&ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32)).unwrap();
    let mut local = LocalExecutor::new(model, 64, 4).unwrap();
    let want_a = local.execute(plan_for(1, a.clone(), vec![0, 1])).unwrap();
    let want_b = local.execute(plan_for(2, b.clone(), vec![2])).unwrap();

    let layout = GroupLayout::new(1, 2, 4, None).unwrap();
    let spec = GroupSpec {
        model: dir.path().to_str().unwrap().to_string(),
        load_format: "auto".into(),
        dtype: "f32".into(),
        tp: 1,
        pp: 2,
        stage_layers: layout.stage_layers.iter().map(|&l| l as u32).collect(),
        num_blocks: 64,
        block_size: 4,
        device: "cpu".into(),
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env =
        |rank| RankEnv { rank, world_size: 2, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port };
    std::thread::scope(|s| {
        let worker = s.spawn(move || run_worker(&env(1), TIMEOUT));
        let (mut exec, _) = GroupExecutor::new(start_group(spec, &env(0), TIMEOUT, TIMEOUT).unwrap());
        let first = exec.submit(plan_for(1, a.clone(), vec![0, 1])).unwrap();
        let second = exec.submit(plan_for(2, b.clone(), vec![2])).unwrap();
        let (id_a, got_a) = exec.wait().unwrap();
        let (id_b, got_b) = exec.wait().unwrap();
        assert_eq!((id_a, id_b), (first, second));
        for (g, w) in got_a.iter().chain(&got_b).zip(want_a.iter().chain(&want_b)) {
            let d = g.iter().zip(w).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(d < 1e-4, "logits differ by {d}");
        }
        drop(exec);
        worker.join().unwrap().unwrap();
    });
}

/// The engine keeps one microbatch per stage in flight over a PP group: with many concurrent
/// requests and prompts chunked over several steps, the tokens are still the single process's.
#[test]
fn engine_pipelines_microbatches_over_stages() {
    fn many(engine: &mut Engine) -> Vec<GenerationOutput> {
        let prompts =
            ["the quick brown fox", "a", "jumps over the lazy dog", "again and again", "b c d", "over the fox"];
        let p = SamplingParams { max_tokens: 6, ignore_eos: true, ..SamplingParams::greedy() };
        let ids: Vec<_> =
            prompts.iter().map(|t| engine.add_request(&Prompt::Text(t.to_string()), p.clone()).unwrap()).collect();
        engine.run_to_completion(&ids, |_| {}).unwrap()
    }
    let dir = model_dir();
    let cfg = || EngineConfig { max_batch_tokens: 8, ..Default::default() };
    let want = single_with(&dir, cfg(), many);
    let got = grouped_with(&dir, 1, 2, cfg(), many);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.token_ids, w.token_ids, "request {i}");
    }
}
