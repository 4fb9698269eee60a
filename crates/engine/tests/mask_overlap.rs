//! Structured-output masks are computed while the step's forward runs (vLLM v1's order:
//! `execute_model`, then the grammar bitmask, then `sample_tokens`): an executor around the
//! single-process one finds, on entering `submit`, that a masked step's masks are not there yet
//! (computed before the submit, they always would be), waits for them only then, and checks
//! every constrained token it returns against its mask. The outputs satisfy their constraints
//! and equal the plain executor's.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::{executor, model_dir, params, text};
use shardline_engine::{Engine, EngineConfig, Executor, GenerationOutput};
use shardline_exec::{ExecutorError, PendingMasks, StepMasks, StepOutput, StepPlan};
use shardline_sampling::SamplingParams;
use shardline_structured::Constraint;
use shardline_tokenizer::Tokenizer;
use shardline_worker::LocalExecutor;

/// What [`Watching`] saw, read after the engine that owns it is done.
#[derive(Default)]
struct Books {
    /// Masked steps submitted, and those whose masks were not there yet when `submit` began.
    masked_steps: usize,
    masks_came_later: usize,
    /// Tokens sampled under a mask: all, and those the mask did not allow.
    masked_tokens: usize,
    disallowed: Vec<String>,
}

/// Passes steps to `inner`, watching when each step's masks come and what it samples.
struct Watching {
    inner: LocalExecutor,
    /// Each step in flight's masks (`None`: an unmasked step), oldest first.
    in_flight: VecDeque<Option<StepMasks>>,
    books: Arc<Mutex<Books>>,
}

impl Executor for Watching {
    shardline_exec::executor_shape_from!(inner);
    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<(), ExecutorError> {
        let Some(pending) = masks else {
            assert!(!plan.has_masks(), "a masked plan comes with its masks");
            self.in_flight.push_back(None);
            return self.inner.submit(plan, None);
        };
        let early = pending.try_take();
        let came_later = early.is_none();
        let masks = match early {
            Some(masks) => masks,
            None => pending.wait()?,
        };
        let mut books = self.books.lock().unwrap();
        books.masked_steps += 1;
        books.masks_came_later += usize::from(came_later);
        drop(books);
        let mut masked: Vec<_> = plan.scheduled.iter().filter(|s| s.masked).map(|s| s.id).collect();
        let mut got: Vec<_> = masks.allowed.keys().copied().collect();
        masked.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, masked, "one mask per masked request");
        let (tx, relay) = PendingMasks::channel();
        tx.send(masks.clone()).expect("the relay is open");
        self.in_flight.push_back(Some(masks));
        self.inner.submit(plan, Some(relay))
    }
    fn wait(&mut self) -> Result<StepOutput, ExecutorError> {
        let out = self.inner.wait()?;
        let masks = self.in_flight.pop_front().expect("a step in flight");
        let mut books = self.books.lock().unwrap();
        for s in &out.sampled {
            let Some(words) = masks.as_ref().and_then(|m| m.allowed.get(&s.id)) else { continue };
            books.masked_tokens += 1;
            let t = s.token.token_id as usize;
            if words.get(t / 32).is_none_or(|w| w >> (t % 32) & 1 == 0) {
                books.disallowed.push(format!("request {} drew token {t}", s.id));
            }
        }
        Ok(out)
    }
}

/// An engine over `exec` with the tokenizer of `dir`, which names the model's end-of-sequence
/// token (structured outputs need one; the tokenizer alone does not say it).
fn engine_over(dir: &tempfile::TempDir, exec: Box<dyn Executor>, eos: &[u32]) -> Engine {
    let tokenizer = Arc::new(Tokenizer::from_path(dir.path()).unwrap());
    Engine::new(exec, tokenizer, eos, EngineConfig::default()).unwrap()
}

/// Eight requests sampled with seeds, six of them constrained (several masks per step).
fn batch(engine: &mut Engine) -> Vec<GenerationOutput> {
    let mut ids = Vec::new();
    for i in 0..8u64 {
        let constraint = match i % 4 {
            0 | 3 => Some(Constraint::Regex("[0-9]{2}:[0-9]{2}".into())),
            1 => Some(Constraint::Choice(vec!["yes".into(), "no".into(), "maybe".into()])),
            _ => None,
        }
        .filter(|_| i < 6);
        let p = SamplingParams { temperature: 0.9, seed: Some(7 + i), constraint, ignore_eos: false, ..params(12) };
        ids.push(engine.add_request(text(&format!("request {i}: the time is")), p).unwrap());
    }
    engine.run_to_completion(&ids, |_| {}).unwrap()
}

fn check(outs: &[GenerationOutput]) {
    for (i, o) in outs.iter().enumerate().take(6).filter(|(i, _)| i % 4 != 2) {
        assert_eq!(o.finish_reason.as_str(), "stop", "request {i} completes its constraint: {:?}", o.text);
        match i % 4 {
            0 | 3 => {
                let b = o.text.as_bytes();
                assert!(b.len() == 5 && b[2] == b':' && o.text.replace(':', "").parse::<u32>().is_ok(), "{}", o.text)
            }
            _ => assert!(["yes", "no", "maybe"].contains(&o.text.as_str()), "{}", o.text),
        }
    }
}

#[test]
fn masks_are_computed_while_the_step_runs_and_bind_its_samples() {
    let dir = model_dir();
    let (inner, eos) = executor(&dir, 64);
    let books = Arc::new(Mutex::new(Books::default()));
    let watching = Watching { inner, in_flight: VecDeque::new(), books: Arc::clone(&books) };
    let mut engine = engine_over(&dir, Box::new(watching), &eos);
    let got = batch(&mut engine);
    check(&got);
    let (masks, seconds) = engine.structured_mask_stats();
    assert!(masks > 0 && seconds > 0.0, "mask statistics are kept: {masks} masks, {seconds} s");

    let books = books.lock().unwrap();
    assert!(books.masked_steps >= 5, "{} masked steps", books.masked_steps);
    // Computed before the submit, every step's masks would be waiting for it. Computed
    // alongside, a step's masks (six guides' worth) come after the submit began but for the
    // rare step whose mask thread outran the submitting one.
    assert!(
        books.masks_came_later > 0,
        "none of {} masked steps entered submit before its masks existed",
        books.masked_steps
    );
    assert!(books.masked_tokens > 0);
    assert!(books.disallowed.is_empty(), "tokens outside their masks: {:?}", books.disallowed);

    let (plain, eos) = executor(&dir, 64);
    let plain = batch(&mut engine_over(&dir, Box::new(plain), &eos));
    let tokens = |outs: &[GenerationOutput]| outs.iter().map(|o| o.token_ids.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&got), tokens(&plain), "the watcher changes nothing");
}
