//! Recovery from a lost executor (a rank replaced, the group re-formed): the executor says so
//! with `ExecutorError::Reset`, and the engine recomputes every request from its tokens. Each
//! request must then continue exactly as if nothing had happened: the same greedy and seeded
//! tokens, a stream with no token repeated or lost, and no stale prefix-cache hit on the K/V
//! the reset wiped.

mod common;

use std::collections::HashMap;

use common::{engine, executor, model_dir, params, text, tokenizer};
use shardline_engine::{Engine, EngineConfig, Executor, RequestId};
use shardline_exec::{ExecutorError, PendingMasks, Reset, StepOutput, StepPlan};
use shardline_sampling::SamplingParams;
use shardline_worker::LocalExecutor;

/// A `LocalExecutor` that loses everything at the given waits: its tables and K/V are replaced
/// by a fresh executor's (zeroed cache), as a respawned rank's would be.
struct Resetting {
    /// Where the replacement loads the model from (`model_dir` writes the same weights each time).
    dir: tempfile::TempDir,
    num_blocks: usize,
    inner: LocalExecutor,
    waits: usize,
    reset_at: Vec<usize>,
}

impl Executor for Resetting {
    shardline_exec::executor_shape_from!(inner);
    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<(), ExecutorError> {
        self.inner.submit(plan, masks)
    }
    fn wait(&mut self) -> Result<StepOutput, ExecutorError> {
        self.waits += 1;
        let out = self.inner.wait()?;
        if self.reset_at.contains(&self.waits) {
            self.inner = executor(&self.dir, self.num_blocks).0;
            let what = format!("test reset at wait {}", self.waits);
            return Err(ExecutorError::Reset(Reset { what, ranks_replaced: 1, seconds: 0.0 }));
        }
        Ok(out)
    }
}

/// Four requests sharing a prompt prefix (so the prefix cache has hits to lose), two greedy and
/// two seeded at temperature 0.8; returns each one's output and streamed text.
fn four_requests(e: &mut Engine) -> Vec<(Vec<u32>, String, String)> {
    let prefix = "the quick brown fox jumps over the lazy dog";
    let seeded = SamplingParams { temperature: 0.8, seed: Some(99), ..params(24) };
    let requests = [("", params(24)), (" again", params(24)), (" and", seeded.clone()), (" once", seeded)];
    let ids: Vec<RequestId> =
        requests.iter().map(|(tail, p)| e.add_request(text(&format!("{prefix}{tail}")), p.clone()).unwrap()).collect();
    let mut streamed: HashMap<RequestId, String> = HashMap::new();
    let outs = e.run_to_completion(&ids, |ev| streamed.entry(ev.request_id).or_default().push_str(&ev.text)).unwrap();
    ids.iter().zip(outs).map(|(id, o)| (o.token_ids, o.text, streamed.remove(id).unwrap_or_default())).collect()
}

#[test]
fn after_a_reset_every_request_continues_exactly_as_undisturbed() {
    let dir = model_dir();
    let want = four_requests(&mut engine(&dir, 64, EngineConfig::default()));
    for reset_at in [vec![1], vec![3], vec![2, 9, 20]] {
        let (inner, eos) = executor(&dir, 64);
        let exec = Resetting { dir: model_dir(), num_blocks: 64, inner, waits: 0, reset_at: reset_at.clone() };
        let mut e = Engine::new(Box::new(exec), tokenizer(), &eos, EngineConfig::default()).unwrap();
        let got = four_requests(&mut e);
        let stats = e.recovery_stats();
        assert_eq!(stats.recoveries as usize, reset_at.len(), "resets at waits {reset_at:?}");
        assert!(stats.requests_recomputed >= stats.recoveries, "every reset recomputed the running requests");
        for (i, ((got_ids, got_text, got_stream), (want_ids, want_text, _))) in got.iter().zip(&want).enumerate() {
            assert_eq!(got_ids, want_ids, "request {i}, resets at waits {reset_at:?}");
            assert_eq!(got_text, want_text, "request {i}");
            assert_eq!(got_stream, got_text, "request {i}: the stream repeats or loses nothing");
        }
        assert_eq!(e.kv_blocks_used(), 0);
    }
}
