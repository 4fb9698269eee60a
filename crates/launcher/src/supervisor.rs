//! Spawning and watching the local ranks.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plan::LaunchPlan;
use crate::process::{self, LinePump, Sink};

/// How long ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);
/// How long `Watch::abort` waits for a dying rank to be reaped, to name it.
const EXIT_NOTICE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("could not start rank {rank} ({program}): {source}")]
    Spawn { rank: usize, program: String, source: std::io::Error },
    #[error("{0}")]
    RankFailed(String),
    #[error("interrupted by {0}; the group was shut down")]
    Interrupted(&'static str),
}

/// The program and arguments one rank runs.
#[derive(Clone, Debug)]
pub struct RankCommand {
    pub rank: usize,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment (e.g. the rank-0 job's settings).
    pub env: Vec<(String, String)>,
    /// Pass stdout through unprefixed (the job's output), instead of prefixing each line.
    pub raw_stdout: bool,
}

struct Slot {
    rank: usize,
    child: Option<Child>,
    /// What it runs, to start it again.
    command: RankCommand,
}

/// The exit status of a rank that could not (re)join its group because rank 0 is gone:
/// starting it again would only wait out another rendezvous.
pub const EXIT_GROUP_GONE: i32 = 3;

/// When a failed worker rank is started again instead of the group being taken down: at most
/// `max_restarts` restarts within any `window` (all ranks together). Rank 0 is never restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
}

/// What a [`RestartPolicy`] still allows: the restarts taken within the last window.
#[derive(Clone, Debug)]
pub struct RestartBudget {
    pub policy: RestartPolicy,
    taken: Vec<Instant>,
}

impl RestartBudget {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartBudget { policy, taken: Vec::new() }
    }

    /// Takes one restart if the window has room for it.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.taken.retain(|&t| now.duration_since(t) < self.policy.window);
        if self.taken.len() >= self.policy.max_restarts {
            return false;
        }
        self.taken.push(now);
        true
    }

    /// Restarts taken within the current window.
    pub fn taken(&self) -> usize {
        self.taken.len()
    }
}

/// Restarting ranks: what the policy still allows, and who hears of each restart (by rank).
struct Restarts {
    budget: RestartBudget,
    events: std::sync::mpsc::Sender<usize>,
}

pub struct Supervisor {
    slots: Arc<Mutex<Vec<Slot>>>,
    ready: Arc<AtomicUsize>,
    /// Workers expected to print READY (a rank-0 job does not).
    expected_ready: usize,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    plan: LaunchPlan,
    restarts: Option<Mutex<Restarts>>,
}

fn describe(rank: usize, status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("rank {rank} exited with status {code}"),
        (None, Some(sig)) => format!("rank {rank} was killed by signal {sig}"),
        _ => format!("rank {rank} exited ({status})"),
    }
}

/// Starts one rank with the group environment of `plan`, its output pumped with a `[rank N]`
/// prefix (READY lines counted into `ready`).
fn start_rank(
    plan: &LaunchPlan,
    rc: &RankCommand,
    ready: &Arc<AtomicUsize>,
    pumps: &mut Vec<JoinHandle<()>>,
) -> Result<Child, SupervisorError> {
    let mut cmd = Command::new(&rc.program);
    cmd.args(&rc.args)
        .env("RANK", rc.rank.to_string())
        .env("WORLD_SIZE", plan.world_size.to_string())
        .env("LOCAL_RANK", (rc.rank - plan.local_ranks().start).to_string())
        .env("MASTER_ADDR", &plan.master_addr)
        .env("MASTER_PORT", plan.master_port.to_string())
        .envs(rc.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("SHARDLINE_THREADS").is_none() || plan.threads_per_rank.is_some() {
        cmd.env("SHARDLINE_THREADS", plan.threads().to_string());
    }
    // Own process group: a terminal's Ctrl-C reaches the launcher, which then shuts ranks down
    // in order. Killed with the launcher: no orphans.
    let mut child = process::spawn_tied(&mut cmd, libc::SIGKILL).map_err(|source| SupervisorError::Spawn {
        rank: rc.rank,
        program: rc.program.display().to_string(),
        source,
    })?;
    let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let prefix = format!("[rank {}] ", rc.rank);
    pumps.push(if rc.raw_stdout {
        process::pass_through(format!("rank{}-stdout", rc.rank), out, Sink::Stdout)
    } else {
        let pump = LinePump::new(Sink::Stdout).prefix(&prefix).on_ready(count_ready(ready));
        pump.spawn(format!("rank{}-stdout", rc.rank), out)
    });
    let pump = LinePump::new(Sink::Stderr).prefix(prefix).on_ready(count_ready(ready));
    pumps.push(pump.spawn(format!("rank{}-stderr", rc.rank), err));
    Ok(child)
}

/// A READY callback for one rank's stream: counts the line into `ready`.
fn count_ready(ready: &Arc<AtomicUsize>) -> impl FnMut(&str) + Send + 'static {
    let ready = Arc::clone(ready);
    move |_| {
        ready.fetch_add(1, Ordering::SeqCst);
    }
}

impl Supervisor {
    /// Starts every command with the group environment of `plan`.
    pub fn spawn(plan: &LaunchPlan, commands: Vec<RankCommand>) -> Result<Supervisor, SupervisorError> {
        let ready = Arc::new(AtomicUsize::new(0));
        let mut slots = Vec::new();
        let mut pumps = Vec::new();
        let expected_ready = commands.iter().filter(|c| !c.raw_stdout).count();
        for rc in commands {
            let child = start_rank(plan, &rc, &ready, &mut pumps)?;
            slots.push(Slot { rank: rc.rank, child: Some(child), command: rc });
        }
        Ok(Supervisor {
            slots: Arc::new(Mutex::new(slots)),
            ready,
            expected_ready,
            pumps: Mutex::new(pumps),
            plan: plan.clone(),
            restarts: None,
        })
    }

    /// Starts failed worker ranks again under `policy`, telling `events` of each restart,
    /// instead of taking the group down at the first failure.
    pub fn restart_failed(mut self, policy: RestartPolicy, events: std::sync::mpsc::Sender<usize>) -> Self {
        self.restarts = Some(Mutex::new(Restarts { budget: RestartBudget::new(policy), events }));
        self
    }

    /// Local ranks that printed their READY line so far.
    pub fn num_ready(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// One supervision pass: `Ok(true)` once every rank has exited successfully (ranks exit 0
    /// only when rank 0 ends the group), `Err` (after taking the group down) when one failed and
    /// is not to be restarted.
    fn poll(&self) -> Result<bool, SupervisorError> {
        let mut slots = self.slots.lock().expect("slots lock");
        let mut failure = None;
        for slot in slots.iter_mut() {
            let Some(child) = slot.child.as_mut() else { continue };
            let Ok(Some(status)) = child.try_wait() else { continue };
            slot.child = None;
            if status.success() {
                continue;
            }
            let cause = describe(slot.rank, status);
            match self.restart(slot, status, &cause) {
                Ok(true) => {}
                Ok(false) => {
                    failure.get_or_insert(cause);
                }
                Err(e) => {
                    failure.get_or_insert(format!("{cause}; starting it again failed: {e}"));
                }
            }
        }
        if let Some(msg) = failure {
            terminate(&mut slots);
            return Err(SupervisorError::RankFailed(msg));
        }
        Ok(slots.iter().all(|s| s.child.is_none()))
    }

    /// Starts a failed rank again if the policy allows; false when it does not.
    fn restart(&self, slot: &mut Slot, status: ExitStatus, cause: &str) -> Result<bool, SupervisorError> {
        let Some(restarts) = &self.restarts else { return Ok(false) };
        let mut restarts = restarts.lock().expect("restarts lock");
        // Rank 0 (and a rank-0 job) holds the engine: nothing to rejoin, so never restarted;
        // nor is a rank that found the group gone.
        let gone = status.code() == Some(EXIT_GROUP_GONE);
        if slot.rank == 0 || slot.command.raw_stdout || gone || !restarts.budget.take() {
            return Ok(false);
        }
        let p = restarts.budget.policy;
        eprintln!(
            "launcher: {cause}; starting it again (restart {} of at most {} within {} s)",
            restarts.budget.taken(),
            p.max_restarts,
            p.window.as_secs()
        );
        let child = start_rank(&self.plan, &slot.command, &self.ready, &mut self.pumps.lock().expect("pumps lock"))?;
        slot.child = Some(child);
        let _ = restarts.events.send(slot.rank);
        Ok(true)
    }

    /// Blocks until every rank exits successfully, a rank fails, or SIGINT/SIGTERM arrives; failures and signals take the group down first.
    pub fn wait(self) -> Result<(), SupervisorError> {
        let signals = SignalFlags::register();
        let mut announced = self.expected_ready == 0;
        let result = loop {
            if !announced && self.num_ready() >= self.expected_ready {
                eprintln!("launcher: all {} local worker ranks are READY", self.expected_ready);
                announced = true;
            }
            if let Some(sig) = signals.raised() {
                terminate(&mut self.slots.lock().expect("slots lock"));
                break Err(SupervisorError::Interrupted(sig));
            }
            match self.poll() {
                Ok(true) => break Ok(()),
                Ok(false) => std::thread::sleep(POLL),
                Err(e) => break Err(e),
            }
        };
        for p in self.pumps.into_inner().expect("pumps lock") {
            let _ = p.join();
        }
        result
    }

    /// Supervises on a background thread; `on_failure` runs (once) if a rank fails or a signal
    /// arrives. Returns a handle whose `finish` performs an orderly shutdown wait.
    pub fn watch(self, on_failure: impl FnOnce(SupervisorError) + Send + 'static) -> Watch {
        let slots = Arc::clone(&self.slots);
        let thread = std::thread::spawn(move || {
            if let Err(e) = self.wait() {
                on_failure(e);
            }
        });
        Watch { slots, thread: Some(thread) }
    }
}

/// A supervisor running on its own thread.
pub struct Watch {
    slots: Arc<Mutex<Vec<Slot>>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Declares an orderly shutdown and waits (bounded) for every rank to exit; stragglers are
    /// terminated.
    pub fn finish(mut self) {
        let deadline = Instant::now() + GRACE * 2;
        while Instant::now() < deadline && !self.slots.lock().expect("slots lock").iter().all(|s| s.child.is_none()) {
            std::thread::sleep(POLL);
        }
        terminate(&mut self.slots.lock().expect("slots lock"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Takes the ranks down now (SIGTERM, the grace period, SIGKILL), for when rank 0 failed
    /// and they may be stuck waiting on it or on a dead peer.
    pub fn abort(mut self) {
        // Name the ranks that died: most likely why rank 0 failed. A rank killed a moment ago
        // may not be reaped yet, so give one a short while to show up.
        let deadline = Instant::now() + EXIT_NOTICE;
        let mut slots = self.slots.lock().expect("slots lock");
        loop {
            let mut named = false;
            for slot in slots.iter_mut() {
                if let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) {
                    slot.child = None;
                    if !status.success() {
                        eprintln!("launcher: {}", describe(slot.rank, status));
                        named = true;
                    }
                }
            }
            if named || Instant::now() >= deadline {
                break;
            }
            drop(slots);
            std::thread::sleep(POLL / 5);
            slots = self.slots.lock().expect("slots lock");
        }
        terminate(&mut slots);
        drop(slots);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SIGTERM every live rank, wait up to the grace period, then SIGKILL what is left.
fn terminate(slots: &mut [Slot]) {
    let (ranks, mut children): (Vec<usize>, Vec<&mut Child>) =
        slots.iter_mut().filter_map(|s| Some((s.rank, s.child.as_mut()?))).unzip();
    for i in process::terminate(&mut children, GRACE) {
        tracing::warn!(rank = ranks[i], "rank ignored SIGTERM; it was killed");
    }
    // Every child is reaped now (or, stuck after SIGKILL, given up on).
    for slot in slots {
        slot.child = None;
    }
}

/// SIGINT / SIGTERM observed by the supervisor (instead of killing the launcher outright).
struct SignalFlags {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl SignalFlags {
    fn register() -> Self {
        let (int, term) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&int));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term));
        SignalFlags { int, term }
    }

    fn raised(&self) -> Option<&'static str> {
        if self.int.load(Ordering::SeqCst) {
            Some("SIGINT")
        } else if self.term.load(Ordering::SeqCst) {
            Some("SIGTERM")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_budget_allows_at_most_its_restarts_per_window() {
        let mut short = RestartBudget::new(RestartPolicy { max_restarts: 2, window: Duration::from_millis(200) });
        assert!(short.take() && short.take());
        assert!(!short.take(), "a third within the window is refused");
        assert_eq!(short.taken(), 2);
        std::thread::sleep(Duration::from_millis(250));
        assert!(short.take(), "the window moved on");
        let mut none = RestartBudget::new(RestartPolicy { max_restarts: 0, window: Duration::from_secs(60) });
        assert!(!none.take());
    }
}
