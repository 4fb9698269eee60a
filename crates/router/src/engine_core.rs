//! The engine core: one thread owns the [`Engine`] and steps it while anything is unfinished,
//! as vLLM v1's EngineCore does. Front ends talk to it through an [`EngineHandle`]: submit a
//! tokenized request and get its events on a channel; dropping the receiver aborts the request,
//! and its KV blocks are free before the next step. Nothing slow (tokenizing, JSON, network)
//! runs on this thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use shardline_engine::{Engine, EngineError, GenerationOutput, RequestId, TokenLogprobs};
use shardline_sampling::{SamplingParams, ScoredToken};
use shardline_structured::{Guide, SharedGrammars};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::error::RouterError;
use crate::metrics::Metrics;

/// What a request's receiver gets, in order: tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug)]
pub enum CoreEvent {
    Token(TokenEvent),
    Finished(Box<GenerationOutput>),
    /// The engine failed; the server is going down.
    Failed(String),
}

/// A generated token.
#[derive(Debug)]
pub struct TokenEvent {
    pub token_id: u32,
    /// Text that became final with it (may be empty).
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
    /// With the first token, when the request asked for prompt logprobs.
    pub prompt_logprobs: Option<Vec<Option<ScoredToken>>>,
}

/// A submitted request: its engine id and event stream. Dropping it aborts the request.
pub struct Submitted {
    pub id: RequestId,
    pub events: async_mpsc::UnboundedReceiver<CoreEvent>,
    _slot: QueueSlot,
}

/// Counts a request against `max_queue` until it is dropped.
struct QueueSlot(Arc<AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Load figures the core publishes after every step (read by /health and /metrics).
#[derive(Debug, Default)]
pub struct CoreStats {
    pub serving: AtomicBool,
    /// Raised while the group re-forms after losing a rank (requests wait meanwhile).
    pub recovering: Option<Arc<AtomicBool>>,
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and found, so far.
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    /// Recoveries from a lost rank, ranks replaced, requests recomputed, and the last
    /// recovery's duration in milliseconds.
    pub recoveries: AtomicU64,
    pub ranks_replaced: AtomicU64,
    pub requests_recomputed: AtomicU64,
    pub last_recovery_ms: AtomicU64,
    /// Structured-output masks computed, and the microseconds they took.
    pub structured_masks: AtomicU64,
    pub structured_mask_us: AtomicU64,
}

impl CoreStats {
    /// Whether the group is re-forming after losing a rank.
    pub fn is_recovering(&self) -> bool {
        self.recovering.as_ref().is_some_and(|r| r.load(Ordering::SeqCst))
    }

    pub fn kv_usage(&self) -> f64 {
        let total = self.kv_blocks_total.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            self.kv_blocks_used.load(Ordering::Relaxed) as f64 / total as f64
        }
    }
}

type Reply = oneshot::Sender<Result<RequestId, EngineError>>;

enum Command {
    Submit(Box<Submission>),
    Shutdown,
}

/// One sample's parameters, its constraint's guide (compiled off the core's thread) and the
/// stream its events go to.
type Sample = (SamplingParams, Option<Guide>, async_mpsc::UnboundedSender<CoreEvent>);

struct Submission {
    prompt_token_ids: Vec<u32>,
    first: Sample,
    /// More samples of the same prompt (`n > 1`), added once the first has its first token,
    /// so that they find the prompt's K/V in the prefix cache.
    siblings: Vec<Sample>,
    reply: Reply,
}

/// Cheap to clone; every front end holds one.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    in_flight: Arc<AtomicUsize>,
    max_queue: usize,
    /// Where constraints compile, on a blocking thread of the caller's runtime.
    grammars: SharedGrammars,
    pub stats: Arc<CoreStats>,
    pub metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Validates and queues a tokenized request. Errors: invalid request, queue full, engine gone.
    pub async fn submit(&self, prompt_token_ids: Vec<u32>, params: SamplingParams) -> Result<Submitted, RouterError> {
        let mut subs = self.submit_samples(prompt_token_ids, vec![params]).await?;
        Ok(subs.remove(0))
    }

    /// One request per entry of `samples` over the same prompt (OpenAI's `n`): the first
    /// starts at once, the others once it has its first token and so the prompt's K/V is in
    /// the prefix cache (full blocks are shared, only the last partial block is recomputed).
    /// Every sample counts against `max_queue`. The siblings' `id` is the first's.
    pub async fn submit_samples(
        &self,
        prompt_token_ids: Vec<u32>,
        mut samples: Vec<SamplingParams>,
    ) -> Result<Vec<Submitted>, RouterError> {
        assert!(!samples.is_empty(), "at least one sample");
        if !self.stats.serving.load(Ordering::SeqCst) {
            return Err(RouterError::Unavailable("it has stopped".into()));
        }
        let n = samples.len();
        if self.in_flight.fetch_add(n, Ordering::SeqCst) + n > self.max_queue {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(RouterError::QueueFull(self.max_queue));
        }
        let slots: Vec<QueueSlot> = (0..n).map(|_| QueueSlot(Arc::clone(&self.in_flight))).collect();
        // The samples share one constraint: compiled once, here (a large schema takes tens
        // of milliseconds, which the core's steps never wait for), and cloned for each.
        let guide = match samples[0].constraint.clone() {
            Some(constraint) => {
                let grammars = self.grammars.clone();
                let compiled = tokio::task::spawn_blocking(move || grammars.guide(&constraint))
                    .await
                    .map_err(|e| RouterError::Internal(format!("compiling the constraint: {e}")))?;
                Some(compiled.map_err(|e| RouterError::InvalidRequest(e.to_string()))?)
            }
            None => None,
        };
        let (channels, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| async_mpsc::unbounded_channel()).unzip();
        let mut channels = channels.into_iter();
        let events = channels.next().expect("n >= 1");
        let params = samples.remove(0);
        let siblings = samples.into_iter().zip(channels).map(|(p, events)| (p, guide.clone(), events)).collect();
        let (reply, answer) = oneshot::channel();
        let first = (params, guide, events);
        self.commands
            .send(Command::Submit(Box::new(Submission { prompt_token_ids, first, siblings, reply })))
            .map_err(|_| RouterError::Unavailable("it has stopped".into()))?;
        let id = answer.await.map_err(|_| RouterError::Unavailable("it stopped".into()))??;
        Ok(receivers.into_iter().zip(slots).map(|(events, slot)| Submitted { id, events, _slot: slot }).collect())
    }

    /// Asks the core to stop after aborting what is in flight.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// Limits the core enforces outside the engine.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Requests waiting or running at once before new ones get RESOURCE_EXHAUSTED.
    pub max_queue: usize,
}

/// The running core thread; `join` returns the engine's fatal error, if any.
pub struct EngineCore {
    pub handle: EngineHandle,
    thread: JoinHandle<Result<(), EngineError>>,
}

impl EngineCore {
    pub fn start(engine: Engine, cfg: CoreConfig, metrics: Arc<Metrics>) -> Self {
        let (commands, rx) = mpsc::channel();
        let grammars = engine.grammars();
        let stats = Arc::new(CoreStats { recovering: engine.recovering_flag(), ..CoreStats::default() });
        stats.serving.store(true, Ordering::SeqCst);
        let core_stats = Arc::clone(&stats);
        let core_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("engine-core".into())
            .spawn(move || {
                let mut state = CoreLoop { engine, streams: HashMap::new(), stats: core_stats, metrics: core_metrics };
                let result = state.run(rx);
                state.stats.serving.store(false, Ordering::SeqCst);
                if let Err(e) = &result {
                    state.fail_all(&e.to_string());
                }
                result
            })
            .expect("spawning the engine-core thread");
        let handle = EngineHandle {
            commands,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_queue: cfg.max_queue,
            grammars,
            stats,
            metrics,
        };
        EngineCore { handle, thread }
    }

    /// Waits for the core thread to end (after `shutdown` or a fatal error).
    pub fn join(self) -> Result<(), EngineError> {
        self.thread.join().unwrap_or_else(|_| Err(EngineError::Internal("the engine-core thread panicked".into())))
    }

    /// Whether the thread has ended (fatal error or shutdown).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Per-request bookkeeping on the core side.
struct Stream {
    events: async_mpsc::UnboundedSender<CoreEvent>,
    last_token: Option<Instant>,
    /// Samples waiting for this request's first token (its prompt, their params and streams).
    siblings: Option<(Vec<u32>, Vec<Sample>)>,
}

struct CoreLoop {
    engine: Engine,
    streams: HashMap<RequestId, Stream>,
    stats: Arc<CoreStats>,
    metrics: Arc<Metrics>,
}

impl CoreLoop {
    fn run(&mut self, rx: mpsc::Receiver<Command>) -> Result<(), EngineError> {
        loop {
            self.publish_stats();
            // Idle: block for work. Busy: take what arrived and keep stepping.
            if !self.engine.has_unfinished() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return Ok(());
                        }
                    }
                    Err(_) => return Ok(()),
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return Ok(());
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.abort_abandoned();
            // Published before any event goes out, so a client that has seen a token (or has
            // left) reads /metrics that already account for it.
            self.publish_stats();
            if self.engine.has_unfinished() {
                self.step()?;
            }
        }
    }

    /// Returns false on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(submission) => {
                let Submission { prompt_token_ids, first: (params, guide, events), siblings, reply } = *submission;
                let prompt_tokens = prompt_token_ids.len() as u64;
                let waiting = (!siblings.is_empty()).then(|| (prompt_token_ids.clone(), siblings));
                let result = self.engine.add_request_guided(prompt_token_ids, params, guide);
                if let Ok(id) = &result {
                    self.streams.insert(*id, Stream { events, last_token: None, siblings: waiting });
                    self.metrics.prompt_tokens.inc_by(prompt_tokens);
                }
                if reply.send(result).is_err() {
                    // The caller went away before hearing back; its stream is already closed.
                }
                true
            }
            Command::Shutdown => {
                let ids: Vec<RequestId> = self.streams.keys().copied().collect();
                for id in ids {
                    self.engine.abort(id);
                }
                self.fail_all("the server is shutting down");
                false
            }
        }
    }

    /// Aborts requests whose receiver was dropped (client disconnected or cancelled).
    fn abort_abandoned(&mut self) {
        let gone: Vec<RequestId> =
            self.streams.iter().filter(|(_, s)| s.events.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.engine.abort(id);
            self.streams.remove(&id);
            self.metrics.aborted.inc();
        }
    }

    fn step(&mut self) -> Result<(), EngineError> {
        let events = self.engine.step()?;
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.publish_stats();
        let now = Instant::now();
        for e in events {
            let Some(stream) = self.streams.get_mut(&e.request_id) else { continue };
            if let Some((prompt, siblings)) = stream.siblings.take() {
                self.start_siblings(prompt, siblings);
            }
            let Some(stream) = self.streams.get_mut(&e.request_id) else { continue };
            if let Some(prev) = stream.last_token {
                self.metrics.inter_token_latency.observe(now.duration_since(prev).as_secs_f64());
            }
            stream.last_token = Some(now);
            self.metrics.generation_tokens.inc();
            let sent = stream
                .events
                .send(CoreEvent::Token(TokenEvent {
                    token_id: e.token_id,
                    text: e.text,
                    logprobs: e.logprobs,
                    prompt_logprobs: e.prompt_logprobs,
                }))
                .is_ok();
            if e.finish.is_some() {
                let stream = self.streams.remove(&e.request_id).expect("stream present");
                if let Some(out) = self.engine.take_output(e.request_id) {
                    self.metrics.observe_finished(&out);
                    let _ = stream.events.send(CoreEvent::Finished(Box::new(out)));
                }
            } else if !sent {
                self.engine.abort(e.request_id);
                self.streams.remove(&e.request_id);
                self.metrics.aborted.inc();
            }
        }
        Ok(())
    }

    /// Adds the samples that waited for their first sibling's prefill. Their parameters
    /// passed the same checks as the first's, so a failure here is reported on their stream.
    fn start_siblings(&mut self, prompt: Vec<u32>, siblings: Vec<Sample>) {
        for (params, guide, events) in siblings {
            if events.is_closed() {
                continue;
            }
            match self.engine.add_request_guided(prompt.clone(), params, guide) {
                Ok(id) => {
                    self.streams.insert(id, Stream { events, last_token: None, siblings: None });
                    self.metrics.prompt_tokens.inc_by(prompt.len() as u64);
                }
                Err(e) => {
                    let _ = events.send(CoreEvent::Failed(e.to_string()));
                }
            }
        }
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        s.running.store(self.engine.num_running(), Ordering::Relaxed);
        s.waiting.store(self.engine.num_waiting(), Ordering::Relaxed);
        s.kv_blocks_used.store(self.engine.kv_blocks_used(), Ordering::Relaxed);
        s.kv_blocks_total.store(self.engine.kv_blocks_total(), Ordering::Relaxed);
        s.preemptions.store(self.engine.num_preemptions(), Ordering::Relaxed);
        let prefix = self.engine.prefix_cache_stats();
        s.prefix_cache_queries.store(prefix.queries, Ordering::Relaxed);
        s.prefix_cache_hits.store(prefix.hits, Ordering::Relaxed);
        let (masks, mask_seconds) = self.engine.structured_mask_stats();
        s.structured_masks.store(masks, Ordering::Relaxed);
        s.structured_mask_us.store((mask_seconds * 1e6) as u64, Ordering::Relaxed);
        let recovery = self.engine.recovery_stats();
        s.recoveries.store(recovery.recoveries, Ordering::Relaxed);
        s.ranks_replaced.store(recovery.ranks_replaced, Ordering::Relaxed);
        s.requests_recomputed.store(recovery.requests_recomputed, Ordering::Relaxed);
        s.last_recovery_ms.store((recovery.last_seconds * 1e3) as u64, Ordering::Relaxed);
    }

    fn fail_all(&mut self, why: &str) {
        for (_, s) in self.streams.drain() {
            let waiting = s.siblings.into_iter().flat_map(|(_, siblings)| siblings).map(|(_, _, events)| events);
            for events in std::iter::once(s.events).chain(waiting) {
                let _ = events.send(CoreEvent::Failed(why.to_string()));
            }
        }
    }
}
