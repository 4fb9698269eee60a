//! Child processes that cannot outlive us: the one place that starts, drains and stops them, for
//! the launcher's ranks and for the server groups `shardline experiment` starts (one process
//! tree each), so both get the same guarantees instead of two copies of the same fork tricks.
//!
//! - [`spawn_tied`] starts a child as the leader of its own process group (a terminal's Ctrl-C
//!   reaches only us, and we decide how the child stops) that is signalled when we die.
//! - [`LinePump`] drains one output stream of a child on a thread of its own, so the child never
//!   blocks on a full pipe: each line goes to a [`Sink`] (optionally prefixed, e.g. `[rank 3] `),
//!   the last few into a [`Tail`], and `READY …` lines to a callback. [`pass_through`] copies a
//!   stream unchanged instead (partial lines included, for streamed text).
//! - [`terminate`] stops children politely (SIGTERM, a bounded wait, SIGKILL to each one's
//!   process group); [`terminate_tree`] also makes sure nothing that was below the child, from
//!   /proc, is still running afterwards.
//!
//! Threading: one thread per pumped stream, ending at EOF (when the child and everything that
//! inherited the pipe have exited); callers may join them or let them go. Everything else runs
//! on the caller's thread. Every wait here is bounded: child exits are polled against a
//! deadline, and even the wait after SIGKILL gives up (leaving a zombie) rather than hang on a
//! process stuck in the kernel.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a bounded wait looks at a child again.
const POLL: Duration = Duration::from_millis(20);
/// How long a SIGKILLed child gets to be reaped before we stop waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Spawns `cmd` as the leader of a new process group and arranges for it to get `death_signal`
/// when we die: SIGKILL for a leaf, SIGTERM for a child that must stop its own children first.
///
/// The kernel sends that signal when the *thread* that spawned the child exits, not the whole
/// process (PR_SET_PDEATHSIG's "parent" is a thread), so spawn from a thread that lives as long
/// as the child should: the main thread, or one that owns the child to the end.
pub fn spawn_tied(cmd: &mut Command, death_signal: libc::c_int) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // std calls setpgid(0, 0) in the child, before the pre_exec hook below.
    cmd.process_group(0);
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe calls
    // are allowed: prctl, getppid and _exit are, and building an io::Error from errno neither
    // allocates nor takes a lock. `parent` is a plain copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // We may have died between fork and prctl, in which case the signal never comes:
            // the child was already handed to another parent. Don't run it at all.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Where pumped output goes.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    /// A writer several pumps share (a log file); the lock keeps their lines whole.
    Shared(Arc<Mutex<dyn Write + Send>>),
}

impl Sink {
    /// A [`Sink::Shared`] around `writer`; clone it for each pump that writes there.
    pub fn shared(writer: impl Write + Send + 'static) -> Sink {
        Sink::Shared(Arc::new(Mutex::new(writer)))
    }

    /// Writes and flushes `bytes` under one lock, so concurrent pumps never interleave.
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        fn all(mut w: impl Write, bytes: &[u8]) -> io::Result<()> {
            w.write_all(bytes)?;
            w.flush()
        }
        match self {
            Sink::Stdout => all(io::stdout().lock(), bytes),
            Sink::Stderr => all(io::stderr().lock(), bytes),
            Sink::Shared(w) => all(&mut *w.lock().expect("sink lock"), bytes),
        }
    }
}

/// The last lines a pump passed on, kept to explain a child that failed.
#[derive(Clone)]
pub struct Tail {
    keep: usize,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    /// Keeps the last `keep` lines.
    pub fn new(keep: usize) -> Tail {
        Tail { keep, lines: Arc::default() }
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("tail lock").iter().cloned().collect()
    }

    fn push(&self, line: &str) {
        let mut lines = self.lines.lock().expect("tail lock");
        if lines.len() == self.keep {
            lines.pop_front();
        }
        if self.keep > 0 {
            lines.push_back(line.to_string());
        }
    }
}

/// Called with the rest of a `READY …` line.
type OnReady = Box<dyn FnMut(&str) + Send>;

/// What to do with each line of one output stream of a child; [`LinePump::spawn`] starts it.
pub struct LinePump {
    sink: Sink,
    prefix: String,
    tail: Option<Tail>,
    on_ready: Option<OnReady>,
}

impl LinePump {
    /// Lines go to `sink` unchanged until told otherwise.
    pub fn new(sink: Sink) -> LinePump {
        LinePump { sink, prefix: String::new(), tail: None, on_ready: None }
    }

    /// Puts `prefix` before every line (`[rank 3] `).
    pub fn prefix(mut self, prefix: impl Into<String>) -> LinePump {
        self.prefix = prefix.into();
        self
    }

    /// Also keeps the last lines (unprefixed) in `tail`.
    pub fn tail(mut self, tail: &Tail) -> LinePump {
        self.tail = Some(tail.clone());
        self
    }

    /// Calls `on_ready` with the rest of every `READY …` line (what a Shardline process prints
    /// once it serves), after the line itself has reached the sink.
    pub fn on_ready(mut self, on_ready: impl FnMut(&str) + Send + 'static) -> LinePump {
        self.on_ready = Some(Box::new(on_ready));
        self
    }

    /// Drains `src` on a thread called `name` until EOF. A line that is not UTF-8 is passed on
    /// lossily rather than ending the pump, which would leave the child blocked on a full pipe.
    pub fn spawn(mut self, name: impl Into<String>, src: impl Read + Send + 'static) -> JoinHandle<()> {
        let run = move || {
            let mut src = BufReader::new(src);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match src.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.strip_suffix('\n').map_or(&*text, |l| l.strip_suffix('\r').unwrap_or(l));
                let _ = self.sink.write(format!("{}{line}\n", self.prefix).as_bytes());
                if let Some(tail) = &self.tail {
                    tail.push(line);
                }
                if let (Some(on_ready), Some(rest)) = (self.on_ready.as_mut(), line.trim().strip_prefix("READY ")) {
                    on_ready(rest);
                }
            }
        };
        thread::Builder::new().name(name.into()).spawn(run).expect("spawning an output pump thread")
    }
}

/// Copies `src` to `sink` byte for byte on a thread called `name` until EOF: a child's own
/// output (streamed text, partial lines and all) rather than a log of it.
pub fn pass_through(name: impl Into<String>, mut src: impl Read + Send + 'static, sink: Sink) -> JoinHandle<()> {
    let run = move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = sink.write(&buf[..n]);
        }
    };
    thread::Builder::new().name(name.into()).spawn(run).expect("spawning an output pump thread")
}

/// Waits up to `limit` for `child` to exit; `Ok(None)` if it is still running then.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Whether `child` has exited (and been reaped, or is reaped now). An error from waitpid counts
/// as running, so that the caller goes on to stop it.
fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// Whether `pid` is stopped (SIGSTOP, a debugger): state `T` or `t` in /proc/PID/stat.
fn is_stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
}

/// Stops `children` the polite way: SIGTERM to each, up to `grace` for all of them together to
/// exit, then SIGKILL to each one still running and to its process group (which is its own, if
/// [`spawn_tied`] started it), and a bounded wait to reap it. Returns the positions in
/// `children` of those that had to be killed.
///
/// Children already reaped are left alone: their pids may belong to someone else by now.
pub fn terminate(children: &mut [&mut Child], grace: Duration) -> Vec<usize> {
    for child in children.iter_mut() {
        if !exited(child) {
            // A stopped process cannot act on SIGTERM until continued: it would only sit out
            // the grace period. SIGKILL acts on it at once.
            let signal = if is_stopped(child.id()) { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its own.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }
    // Waiting for each in turn against one deadline bounds the whole wait by `grace`.
    let deadline = Instant::now() + grace;
    let mut killed = Vec::new();
    for (i, child) in children.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if matches!(wait_timeout(child, left), Ok(Some(_))) {
            continue;
        }
        killed.push(i);
        let pid = child.id() as libc::pid_t;
        let _ = child.kill();
        // SAFETY: killpg(2) on the group our unreaped child leads; if it leads none, ESRCH.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        if !matches!(wait_timeout(child, KILL_WAIT), Ok(Some(_))) {
            tracing::warn!(pid, "still running {} s after SIGKILL; leaving it", KILL_WAIT.as_secs());
        }
    }
    killed
}

/// How [`terminate_tree`] went.
#[derive(Debug, Default)]
pub struct TreeStop {
    /// The child ignored SIGTERM for the whole grace period and was killed.
    pub killed: bool,
    /// Processes below the child that were still running after it and had to be killed.
    pub leftovers: Vec<u32>,
}

/// [`terminate`] for a child with processes of its own below it (a launcher and its ranks),
/// making sure none outlives it: everything below the child is noted before the SIGTERM, gets
/// up to `linger` after the child's exit to go too (ranks die with their launcher), and is
/// SIGKILLed if still there.
pub fn terminate_tree(child: &mut Child, grace: Duration, linger: Duration) -> TreeStop {
    if exited(child) {
        // Already reaped: its pid, and so anything found below it, may be someone else's.
        return TreeStop::default();
    }
    let below = descendants(child.id());
    let killed = !terminate(&mut [child], grace).is_empty();
    let deadline = Instant::now() + linger;
    while below.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    let leftovers: Vec<u32> = below.into_iter().filter(|&p| alive(p)).collect();
    for &p in &leftovers {
        // SAFETY: kill(2) on a process that was below our child a moment ago and is running:
        // not reaped, so (short of a reap and a pid reuse in between) still the same process.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    TreeStop { killed, leftovers }
}

/// The children of `pid`, from /proc, by pid; empty if `pid` is gone.
pub fn children(pid: u32) -> Vec<u32> {
    // A child belongs to the thread that forked it, so every thread's list counts.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let mut found: Vec<u32> = tasks
        .flat_map(|task| {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()).collect::<Vec<_>>()
        })
        .collect();
    found.sort_unstable();
    found
}

/// Every process below `pid` (children, their children, …), from /proc; empty if `pid` is gone.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in children(p) {
            found.push(c);
            frontier.push(c);
        }
    }
    found
}

/// Whether `pid` is still running (a zombie has exited and only awaits reaping).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::sync::mpsc;

    use super::*;

    fn sleep() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        cmd
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        cmd
    }

    /// Waits (bounded) until `pid` has `n` processes below it.
    fn wait_for_descendants(pid: u32, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let below = descendants(pid);
            if below.len() >= n {
                return below;
            }
            assert!(Instant::now() < deadline, "{pid} has {below:?} below it, not {n} processes");
            thread::sleep(POLL);
        }
    }

    #[test]
    fn a_tied_child_leads_its_own_group() {
        let mut child = spawn_tied(&mut sleep(), libc::SIGKILL).unwrap();
        // SAFETY: getpgid(2) only reads.
        let pgid = unsafe { libc::getpgid(child.id() as libc::pid_t) };
        assert_eq!(pgid, child.id() as libc::pid_t);
        assert!(terminate(&mut [&mut child], Duration::from_secs(5)).is_empty(), "sleep stops on SIGTERM");
    }

    #[test]
    fn a_tied_child_dies_with_the_thread_that_spawned_it() {
        let mut child = thread::spawn(|| spawn_tied(&mut sleep(), libc::SIGKILL).unwrap()).join().unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(10)).unwrap().expect("killed with its parent");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn terminate_kills_what_ignores_sigterm() {
        let mut polite = spawn_tied(&mut sleep(), libc::SIGKILL).unwrap();
        // The trap comes first, so it is in place once the background sleep exists.
        let mut stubborn = spawn_tied(&mut sh("trap '' TERM; sleep 30 & wait"), libc::SIGKILL).unwrap();
        let grandchild = wait_for_descendants(stubborn.id(), 1)[0];
        let started = Instant::now();
        assert_eq!(terminate(&mut [&mut polite, &mut stubborn], Duration::from_millis(500)), [1]);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(polite.try_wait().unwrap().and_then(|s| s.signal()), Some(libc::SIGTERM));
        assert_eq!(stubborn.try_wait().unwrap().and_then(|s| s.signal()), Some(libc::SIGKILL));
        // The SIGKILL went to the whole group, the shell's own child included.
        thread::sleep(Duration::from_millis(200));
        assert!(!alive(grandchild), "the group was killed");
    }

    #[test]
    fn terminate_tree_kills_what_outlives_the_child() {
        // Two sleeps the shell leaves behind when SIGTERM ends it.
        let mut child = spawn_tied(&mut sh("sleep 30 & sleep 30 & wait"), libc::SIGKILL).unwrap();
        let below = wait_for_descendants(child.id(), 2);
        let stop = terminate_tree(&mut child, Duration::from_secs(5), Duration::from_millis(200));
        assert!(!stop.killed, "the shell stops on SIGTERM");
        assert_eq!(stop.leftovers.len(), 2, "both sleeps outlived the shell: {stop:?}");
        thread::sleep(Duration::from_millis(200));
        assert!(below.iter().all(|&p| !alive(p)));
        // A reaped child's pid is not ours to signal any more: nothing is done.
        let stop = terminate_tree(&mut child, Duration::from_secs(5), Duration::from_secs(5));
        assert!(!stop.killed && stop.leftovers.is_empty());
    }

    #[test]
    fn a_pump_prefixes_lines_keeps_a_tail_and_reports_ready() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let tail = Tail::new(2);
        let (tx, rx) = mpsc::channel();
        let src = Cursor::new(b"one\r\nREADY grpc=1.2.3.4:5\nbad \xff byte\nlast without newline".to_vec());
        LinePump::new(Sink::Shared(out.clone()))
            .prefix("[rank 3] ")
            .tail(&tail)
            .on_ready(move |rest| tx.send(rest.to_string()).unwrap())
            .spawn("test-pump", src)
            .join()
            .unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "[rank 3] one\n[rank 3] READY grpc=1.2.3.4:5\n[rank 3] bad \u{fffd} byte\n[rank 3] last without newline\n"
        );
        assert_eq!(tail.lines(), ["bad \u{fffd} byte", "last without newline"]);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["grpc=1.2.3.4:5"]);
    }

    #[test]
    fn pass_through_copies_bytes_unchanged() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let bytes = b"partial \xff line".to_vec();
        pass_through("test-raw", Cursor::new(bytes.clone()), Sink::Shared(out.clone())).join().unwrap();
        assert_eq!(*out.lock().unwrap(), bytes);
    }
}
