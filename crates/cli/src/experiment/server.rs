//! One layout's server group for the length of its sweep: started as `shardline launch … --
//! serve …` in its own process group, ready once it prints `READY grpc=… http=…`, and torn
//! down so that no rank outlives it, whether the sweep succeeded, failed or panicked.
//!
//! Teardown is SIGTERM to the launcher (which stops its ranks in order), a bounded wait, then
//! SIGKILL to the launcher's process group. Ranks sit in process groups of their own (the
//! launcher's doing, so a terminal's Ctrl-C reaches only the launcher) but die with it
//! (PR_SET_PDEATHSIG); as a last guard every process below the launcher, noted before the
//! SIGTERM, is waited for and SIGKILLed if still there. The launcher itself gets SIGTERM if
//! this process dies without running any of that (PR_SET_PDEATHSIG again).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long the launcher gets to stop its ranks after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(15);
/// Server stderr lines kept to explain a failed start.
const TAIL_LINES: usize = 30;

/// A running server group; tears it down on drop.
pub struct ServerGroup {
    child: Child,
    stopped: bool,
    /// `http://ADDR` of the gRPC API.
    pub grpc: String,
    /// `http://ADDR` of the OpenAI-compatible API (empty when off).
    pub http: String,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// Copies a server stream's lines to the log (and the last few to `tail`); sends the first
/// READY line on `ready` and keeps draining, so the server never blocks on a full pipe.
fn pump(
    src: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    tail: Option<Tail>,
    ready: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(src).lines().map_while(Result::ok) {
            let _ = writeln!(log.lock().expect("log lock"), "{line}");
            if let Some(tail) = &tail {
                let mut t = tail.lock().expect("tail lock");
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
            if let Some(rest) = line.trim().strip_prefix("READY ") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(rest.to_string());
                }
            }
        }
    });
}

impl ServerGroup {
    /// Runs `program args`, logging its output to `log_path`, and waits up to `ready_within`
    /// for its READY line; fails (and tears down) if it exits or stays silent.
    pub fn start(
        program: &Path,
        args: &[String],
        log_path: &Path,
        ready_within: Duration,
    ) -> anyhow::Result<ServerGroup> {
        let log =
            Arc::new(Mutex::new(File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?));
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        // Owned by the guard from here: any early return below tears the group down.
        let mut server = ServerGroup { child, stopped: false, grpc: String::new(), http: String::new() };
        let tail: Tail = Arc::default();
        let (tx, rx) = mpsc::channel();
        pump(stdout, Arc::clone(&log), None, Some(tx));
        pump(stderr, log, Some(Arc::clone(&tail)), None);

        let started = Instant::now();
        let explain = |what: String| {
            let lines: Vec<String> = tail.lock().expect("tail lock").iter().cloned().collect();
            format!("{what}; last server output (full log {}):\n{}", log_path.display(), lines.join("\n"))
        };
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // stdout closed without READY: the server is exiting; its status says how.
                Err(mpsc::RecvTimeoutError::Disconnected) => thread::sleep(Duration::from_millis(100)),
            }
            if let Some(status) = server.child.try_wait()? {
                // Let the stderr pump catch up so the tail holds the last words.
                thread::sleep(Duration::from_millis(200));
                bail!(explain(format!("the server exited ({status}) before printing READY")));
            }
            if started.elapsed() > ready_within {
                bail!(explain(format!("the server printed no READY line within {} s", ready_within.as_secs())));
            }
        };
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("grpc", a)) => server.grpc = format!("http://{a}"),
                Some(("http", a)) if a != "off" => server.http = format!("http://{a}"),
                _ => {}
            }
        }
        if server.grpc.is_empty() {
            bail!("READY line without a gRPC address: `{line}`");
        }
        Ok(server)
    }

    /// Tears the group down; errors if a process had to be killed or was left behind.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pid = self.child.id();
        let below = descendants(pid);
        // SAFETY: signals to our own child and to the process group it leads.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        let mut forced = false;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                forced = true;
                unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
                self.child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Ranks die with the launcher; give them a moment, then make sure.
        let deadline = Instant::now() + Duration::from_secs(5);
        while below.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<u32> = below.into_iter().filter(|&p| alive(p)).collect();
        for &p in &left {
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        if forced {
            bail!("the server group ignored SIGTERM for {} s and was killed", TERM_GRACE.as_secs());
        }
        if !left.is_empty() {
            bail!("rank processes {left:?} outlived the launcher and were killed");
        }
        Ok(())
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("experiment: {e}");
        }
    }
}

/// Every process below `pid` (children, their children, …), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                found.push(c);
                frontier.push(c);
            }
        }
    }
    found
}

/// Whether `pid` is still running (a zombie has exited and only awaits reaping).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}
