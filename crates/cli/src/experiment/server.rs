//! One layout's server group for the length of its sweep: started as `shardline launch … --
//! serve …` in its own process group, ready once it prints `READY grpc=… http=…`, and torn
//! down so that no rank outlives it, whether the sweep succeeded, failed or panicked.
//!
//! Teardown is SIGTERM to the launcher (which stops its ranks in order), a bounded wait, then
//! SIGKILL to the launcher's process group. Ranks sit in process groups of their own (the
//! launcher's doing, so a terminal's Ctrl-C reaches only the launcher) but die with it
//! (PR_SET_PDEATHSIG); as a last guard every process below the launcher, noted before the
//! SIGTERM, is waited for and SIGKILLed if still there. The launcher itself gets SIGTERM if
//! this process dies without running any of that (PR_SET_PDEATHSIG again). The mechanics are
//! `shardline_launcher::process`'s, shared with the launcher's own supervision of its ranks.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shardline_launcher::process::{self, LinePump, Sink, Tail};

/// How long the launcher gets to stop its ranks after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(15);
/// How long ranks get to follow their launcher out before they are killed.
const RANK_LINGER: Duration = Duration::from_secs(5);
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

impl ServerGroup {
    /// Runs `program args`, logging its output to `log_path`, and waits up to `ready_within`
    /// for its READY line; fails (and tears down) if it exits or stays silent.
    pub fn start(
        program: &Path,
        args: &[String],
        log_path: &Path,
        ready_within: Duration,
    ) -> anyhow::Result<ServerGroup> {
        let log = Sink::shared(File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?);
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SIGTERM rather than SIGKILL if we die: the launcher then stops its ranks itself.
        let mut child =
            process::spawn_tied(&mut cmd, libc::SIGTERM).with_context(|| format!("starting {}", program.display()))?;
        let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        // Owned by the guard from here: any early return below tears the group down.
        let mut server = ServerGroup { child, stopped: false, grpc: String::new(), http: String::new() };
        // The pumps keep draining after READY (and are never joined), so the server never
        // blocks on a full pipe; only the first READY line is sent.
        let tail = Tail::new(TAIL_LINES);
        let (tx, rx) = mpsc::channel();
        let mut tx = Some(tx);
        let first_ready = move |rest: &str| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(rest.to_string());
            }
        };
        LinePump::new(log.clone()).on_ready(first_ready).spawn("server-stdout", stdout);
        LinePump::new(log).tail(&tail).spawn("server-stderr", stderr);

        let started = Instant::now();
        let explain = |what: String| {
            format!("{what}; last server output (full log {}):\n{}", log_path.display(), tail.lines().join("\n"))
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
        let stop = process::terminate_tree(&mut self.child, TERM_GRACE, RANK_LINGER);
        if stop.killed {
            bail!("the server group ignored SIGTERM for {} s and was killed", TERM_GRACE.as_secs());
        }
        if !stop.leftovers.is_empty() {
            bail!("rank processes {:?} outlived the launcher and were killed", stop.leftovers);
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
