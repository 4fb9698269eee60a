//! TP × PP groups as users start them: `run --tp --pp` (rank 0 in process, workers spawned),
//! two launchers forming one group over loopback, and the failure paths: a worker killed or
//! stopped mid-generation (replaced, outputs unchanged; or fail-stop without restarts, past
//! --max-restarts, or when its replacement cannot load), strays at the rendezvous port, a rank
//! that never starts. SmolLM2-135M is resolved like `--model smollm2-135m` (fetched into
//! $SHARDLINE_CACHE on first use).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_no_leftovers, children_of, shardline};
use shardline_comm::{rendezvous, GroupSecret, RendezvousConfig};

const PROMPT: &str = "The capital of France is";

fn run_json(extra: &[&str]) -> serde_json::Value {
    let out = shardline()
        .args(["run", "--prompt", PROMPT, "--max-tokens", "12", "--ignore-eos", "--logprobs", "5", "--output", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_same_generation(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    assert_eq!(got["token_ids"], want["token_ids"], "{what}: greedy tokens");
    let (g, w) = (got["logprobs"].as_array().unwrap(), want["logprobs"].as_array().unwrap());
    for (gs, ws) in g.iter().zip(w) {
        for (a, b) in gs["top"].as_array().unwrap().iter().zip(ws["top"].as_array().unwrap()) {
            assert_eq!(a["token_id"], b["token_id"], "{what}");
            let d = (a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs();
            assert!(d < 1e-4, "{what}: logprob differs by {d}");
        }
    }
}

/// In the GGUF's own block formats (the default) and dequantized to f32.
#[test]
fn smollm2_every_layout_matches_the_single_process() {
    for quantization in ["auto", "none"] {
        let want = run_json(&["--quantization", quantization]);
        for (tp, pp) in [(2, 1), (3, 1), (4, 1), (1, 2), (1, 3), (2, 2)] {
            let (tp_s, pp_s) = (tp.to_string(), pp.to_string());
            let got = run_json(&["--tp", &tp_s, "--pp", &pp_s, "--quantization", quantization]);
            assert_same_generation(&got, &want, &format!("{quantization}: tp {tp} pp {pp}"));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A 2×2 group over two "nodes" on loopback: node 1's launcher is running (reading the group's
/// secret from the environment); node 0 joins with `node0_args` (reading it from a file).
struct TwoNodes {
    node1: Child,
    node0_args: Vec<String>,
    _secret_dir: tempfile::TempDir,
}

fn two_nodes(secret: &str) -> TwoNodes {
    let port = free_port().to_string();
    let node1 = shardline()
        .args(["launch", "--tp", "2", "--pp", "2", "--nnodes", "2", "--node-rank", "1", "--master-port", &port])
        .env("SHARDLINE_GROUP_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("group-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let node0_args = ["--nnodes", "2", "--node-rank", "0", "--master-port", &port, "--secret-file"]
        .into_iter()
        .map(String::from)
        .chain([secret_file.to_str().unwrap().to_string()])
        .collect();
    TwoNodes { node1, node0_args, _secret_dir: dir }
}

#[test]
fn two_launchers_on_loopback_form_one_group() {
    let want = run_json(&[]);
    let TwoNodes { node1, node0_args, _secret_dir } = two_nodes("two-launchers-shared-secret");
    let node0: Vec<&str> =
        ["--tp", "2", "--pp", "2"].into_iter().chain(node0_args.iter().map(String::as_str)).collect();
    let got = run_json(&node0);
    assert_same_generation(&got, &want, "2 nodes × (tp 2, pp 2)");
    let out = wait_bounded(node1, Duration::from_secs(20));
    assert!(out.status.success(), "node 1 launcher: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn several_nodes_without_a_shared_secret_refuse_to_start() {
    let port = free_port().to_string();
    let out = shardline()
        .args(["launch", "--tp", "2", "--nnodes", "2", "--node-rank", "1", "--master-port", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(out, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs one secret shared by every node") && err.contains("SHARDLINE_GROUP_SECRET"), "{err}");
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What became of a 2×2 `run` after one of its workers got `signal` mid-generation.
struct Disturbed {
    status: std::process::ExitStatus,
    /// From the signal to the run's exit.
    took: Duration,
    /// Rank 0's log after the signal.
    log: String,
}

/// Starts a long 2×2 generation, sends `signal` to one worker once the group is ready, waits
/// (at most `limit`) for the run to fail, and checks that no rank process is left behind.
fn signal_a_worker_mid_generation(signal: libc::c_int, extra: &[&str], limit: Duration) -> Disturbed {
    let mut run = shardline()
        .args(["run", "--prompt", PROMPT, "--max-tokens", "2000", "--ignore-eos", "--tp", "2", "--pp", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until rank 0 reports the group ready, i.e. generation is about to start.
    let mut stderr = BufReader::new(run.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "run ended early: {log}");
        log.push_str(&line);
        if line.starts_with("rank 3 ready") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let workers = children_of(run.id());
    assert_eq!(workers.len(), 3, "three spawned ranks");
    // SAFETY: a signal to our grandchild, a worker of this test's group.
    unsafe { libc::kill(workers[1] as libc::pid_t, signal) };
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > limit {
            let _ = run.kill();
            panic!("run did not exit within {limit:?} of signal {signal} to a worker");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert_no_leftovers(&workers);
    Disturbed { status, took, log: rest }
}

#[test]
fn killing_a_worker_takes_the_group_down_quickly() {
    // Without restarts (fail-stop).
    let d = signal_a_worker_mid_generation(libc::SIGKILL, &["--max-restarts", "0"], Duration::from_secs(5));
    assert!(!d.status.success());
    assert!(d.log.contains("killed by signal 9"), "{}", d.log);
}

#[test]
fn a_stopped_worker_is_caught_by_its_silence_within_the_heartbeat_timeout() {
    // A stopped process keeps its sockets open: only the missing heartbeats give it away.
    let extra = ["--heartbeat-timeout", "1", "--max-restarts", "0"];
    let d = signal_a_worker_mid_generation(libc::SIGSTOP, &extra, Duration::from_secs(10));
    assert!(!d.status.success());
    assert!(d.log.contains("has sent nothing for") && d.log.contains("heartbeat timeout 1.0 s"), "{}", d.log);
    assert!(d.took < Duration::from_secs(4), "detected after {:?}", d.took);
}

/// `run` of `batch` greedy requests: one JSON object per request.
fn run_batch(layout: &[&str], extra: &[&str]) -> Vec<serde_json::Value> {
    let out = shardline().args(batch_args(layout, extra)).output().unwrap();
    assert!(out.status.success(), "{layout:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Long enough that generation is still running when `run_batch_disturbed` strikes (700 ms
/// after the group is ready, twice with a recovery between), and that the recomputed spans are
/// 32+ rows long.
const BATCH_TOKENS: &str = "200";

fn batch_args(layout: &[&str], extra: &[&str]) -> Vec<String> {
    let base =
        ["run", "--prompt", PROMPT, "--max-tokens", BATCH_TOKENS, "--ignore-eos", "--batch", "4", "--output", "json"];
    base.iter().chain(layout).chain(extra).map(|s| s.to_string()).collect()
}

/// A batch run on `layout` one of whose workers gets `signal` once the group is ready, and again
/// (its replacement) each time the group re-forms, `times` times in all. Victims are the first
/// of `workers(run's pid)` not hit yet. Returns the exit status, the JSON lines and rank 0's log.
fn run_batch_disturbed(
    layout: &[&str],
    extra: &[&str],
    signal: libc::c_int,
    times: usize,
    workers: impl Fn(u32) -> Vec<u32>,
) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
    let mut run =
        shardline().args(batch_args(layout, extra)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = run.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    let wait_for = |needle: &str, log: &mut String| loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no `{needle}` in: {log}"));
        log.push_str(&line);
        log.push('\n');
        if line.contains(needle) {
            return;
        }
    };
    let world = layout.iter().skip(1).step_by(2).map(|n| n.parse::<usize>().unwrap()).product::<usize>();
    wait_for(&format!("rank {} ready", world - 1), &mut log);
    let mut victims = Vec::new();
    for _ in 0..times {
        std::thread::sleep(Duration::from_millis(700)); // mid-generation
        let victim = *workers(run.id()).iter().find(|w| !victims.contains(*w)).unwrap();
        victims.push(victim);
        // SAFETY: a signal to our grandchild, a worker of this test's group.
        unsafe { libc::kill(victim as libc::pid_t, signal) };
        if victims.len() < times {
            wait_for("formed again", &mut log);
        }
    }
    let out = wait_bounded(run, Duration::from_secs(120));
    reader.join().unwrap();
    log.extend(lines.try_iter().map(|l| l + "\n"));
    let json = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status, json, log)
}

fn assert_same_tokens(got: &[serde_json::Value], want: &[serde_json::Value], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: requests");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["token_ids"], w["token_ids"], "{what}");
        assert_eq!(g["text"], w["text"], "{what}");
    }
}

#[test]
fn a_killed_worker_is_replaced_and_every_request_finishes_unchanged() {
    let layout = ["--tp", "2", "--pp", "2"];
    let want = run_batch(&layout, &[]);
    let (status, got, log) = run_batch_disturbed(&layout, &[], libc::SIGKILL, 1, children_of);
    assert!(status.success(), "{log}");
    assert!(log.contains("starting it again") && log.contains("formed again in"), "{log}");
    assert_same_tokens(&got, &want, "2x2, a worker killed");
}

/// Seeded sampling resumes deterministically: each draw depends on (seed, position) only.
#[test]
fn a_stopped_worker_is_killed_replaced_and_every_seeded_request_finishes_unchanged() {
    let layout = ["--tp", "2"];
    let seeded = ["--temperature", "0.8", "--seed", "7"];
    let want = run_batch(&layout, &seeded);
    let extra = [&seeded[..], &["--heartbeat-timeout", "1"]].concat();
    let (status, got, log) = run_batch_disturbed(&layout, &extra, libc::SIGSTOP, 1, children_of);
    assert!(status.success(), "{log}");
    assert!(log.contains("has sent nothing") && log.contains("killing rank 1"), "{log}");
    assert_same_tokens(&got, &want, "tp 2 seeded at temperature 0.8, a worker stopped");
}

#[test]
fn a_killed_rank_on_another_node_is_restarted_by_its_launcher_and_outputs_are_unchanged() {
    let layout = ["--tp", "2", "--pp", "2"];
    let want = run_batch(&layout, &[]);
    let TwoNodes { node1, node0_args, _secret_dir } = two_nodes("two-launchers-recovery-secret");
    let node1_pid = node1.id();
    let node0: Vec<&str> = node0_args.iter().map(String::as_str).collect();
    // Node 1 hosts ranks 2 and 3 (stage 1); one of them is killed.
    let (status, got, log) = run_batch_disturbed(&layout, &node0, libc::SIGKILL, 1, |_| children_of(node1_pid));
    assert!(status.success(), "{log}");
    assert!(log.contains("own launcher restarts it") && log.contains("formed again in"), "{log}");
    assert_same_tokens(&got, &want, "2 nodes x (tp 2, pp 2), a rank of node 1 killed");
    let out = wait_bounded(node1, Duration::from_secs(20));
    let node1_log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node 1 launcher: {node1_log}");
    assert!(node1_log.contains("starting it again"), "{node1_log}");
}

/// Remembers every process `children_of(pid)` returned, to check none is left at the end.
#[derive(Default)]
struct SeenRanks(std::sync::Mutex<Vec<u32>>);

impl SeenRanks {
    fn children_of(&self, pid: u32) -> Vec<u32> {
        let ranks = children_of(pid);
        self.0.lock().unwrap().extend(&ranks);
        ranks
    }

    fn assert_none_left(self) {
        assert_no_leftovers(&self.0.into_inner().unwrap());
    }
}

#[test]
fn past_max_restarts_the_group_fails_as_without_recovery() {
    let seen = SeenRanks::default();
    let (status, _, log) =
        run_batch_disturbed(&["--pp", "2"], &["--max-restarts", "1"], libc::SIGKILL, 2, |pid| seen.children_of(pid));
    assert!(!status.success(), "{log}");
    assert!(log.contains("formed again in") && log.contains("rank 1 was killed by signal 9"), "{log}");
    seen.assert_none_left();
}

#[test]
fn a_rank_that_never_starts_is_a_rendezvous_timeout() {
    const SECRET: &str = "never-starts-group-secret";
    let port = free_port().to_string();
    // Rank 0 of a 2-rank group whose rank 1 is never started.
    let out = shardline()
        .args(["run", "--prompt", PROMPT, "--tp", "2", "--comm-timeout", "1"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_PORT", &port)
        .env("SHARDLINE_GROUP_SECRET", SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ranks [1] did not join"), "{err}");
    // A worker whose rank 0 never appears.
    let worker = || {
        let mut c = shardline();
        c.args(["worker", "--comm-timeout", "1"]).env("RANK", "1").env("WORLD_SIZE", "2");
        c.env("MASTER_PORT", free_port().to_string());
        c
    };
    let out = worker().env("SHARDLINE_GROUP_SECRET", SECRET).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rank 0 did not accept"), "{err}");
    // A rank started by hand (torchrun, mpirun, Slurm) must be given the group's secret.
    let out = worker().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no group secret: set SHARDLINE_GROUP_SECRET"), "{err}");
}

#[test]
fn a_replacement_that_cannot_load_its_shard_is_a_failed_restart_and_the_group_fails() {
    // The model behind a link removed once the group serves: the killed worker's replacement
    // joins the re-formed group but finds no model to load.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("model.gguf");
    std::os::unix::fs::symlink(shardline_weights::resolve_model(shardline_weights::SMOLLM2_ALIAS).unwrap(), &link)
        .unwrap();
    let seen = SeenRanks::default();
    let workers = |run: u32| {
        std::fs::remove_file(&link).unwrap();
        seen.children_of(run)
    };
    let start = Instant::now();
    let (status, _, log) =
        run_batch_disturbed(&["--tp", "2"], &["--model", link.to_str().unwrap()], libc::SIGKILL, 1, workers);
    assert!(!status.success(), "{log}");
    assert!(log.contains("starting it again") && log.contains("recovery failed"), "{log}");
    assert!(log.contains("unknown model"), "the load error is named: {log}");
    assert!(start.elapsed() < Duration::from_secs(60));
    seen.assert_none_left();
}

/// Knocks on the rendezvous port until `stop`, one kind of stray per thread: garbage after the
/// challenge, a member's answer to another challenge replayed, and a would-be rank with the
/// wrong secret. Returns how often that one was told it was refused.
fn knock_until(port: u16, replayed: &[u8], stop: &std::sync::atomic::AtomicBool) -> usize {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    // Sends `answer` once rank 0's challenge arrives; a closed port (rank 0 is not forming the
    // group) is the common case.
    let answer_challenge = |answer: &[u8]| {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut challenge = [0u8; 9 + 40];
        if s.read_exact(&mut challenge).is_ok() {
            let _ = s.write_all(answer);
            let _ = s.read_to_end(&mut Vec::new());
        }
    };
    let replay = [[0u8].as_slice(), &(replayed.len() as u64).to_le_bytes(), replayed].concat();
    let wrong = RendezvousConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 1,
        world_size: 2,
        timeout: Duration::from_secs(2),
        group_blob: Vec::new(),
        secret: GroupSecret::from_text("not-this-groups-secret").unwrap(),
    };
    let garbage = || answer_challenge(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let replay = || answer_challenge(&replay);
    // Joins as soon as a probe finds the port open, then is refused. The port is open only
    // until the real rank joins, often a few milliseconds: `rendezvous` alone retries a closed
    // port every 50 ms and could miss every window, so the probe polls every millisecond (rank
    // 0 drops the probe, closed at once, as one more stray).
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let wrong_secret = || {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return;
        }
        if rendezvous(&wrong).is_err_and(|e| e.to_string().contains("refused this rank")) {
            refused.fetch_add(1, Ordering::SeqCst);
        }
    };
    let knocks: [&(dyn Fn() + Sync); 3] = [&garbage, &replay, &wrong_secret];
    std::thread::scope(|s| {
        for knock in knocks {
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    knock();
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    refused.into_inner()
}

/// A member's answer to one challenge, recorded by a listener posing as rank 0.
fn recorded_answer(secret: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let decoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = decoy.local_addr().unwrap().port();
    std::thread::scope(|s| {
        s.spawn(|| {
            let member = RendezvousConfig {
                master_addr: "127.0.0.1".into(),
                master_port: port,
                rank: 1,
                world_size: 2,
                timeout: Duration::from_secs(5),
                group_blob: Vec::new(),
                secret: GroupSecret::from_text(secret).unwrap(),
            };
            assert!(rendezvous(&member).is_err(), "the decoy never proves the secret");
        });
        let (mut c, _) = decoy.accept().unwrap();
        let challenge = [b"SHRDLN01".as_slice(), &[7u8; 32]].concat();
        c.write_all(&[[0u8].as_slice(), &(challenge.len() as u64).to_le_bytes(), &challenge].concat()).unwrap();
        let mut head = [0u8; 9];
        c.read_exact(&mut head).unwrap();
        let mut answer = vec![0u8; u64::from_le_bytes(head[1..].try_into().unwrap()) as usize];
        c.read_exact(&mut answer).unwrap();
        answer
    })
}

#[test]
fn strays_at_the_rendezvous_port_at_start_and_during_a_recovery_are_dropped() {
    const SECRET: &str = "strays-test-group-secret";
    let layout = ["--tp", "2"];
    let want = run_batch(&layout, &[]);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("group-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let port = free_port();
    let extra = ["--master-port", &port.to_string(), "--secret-file", secret_file.to_str().unwrap()].map(String::from);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let replayed = recorded_answer(SECRET);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ((status, got, log), refused) = std::thread::scope(|s| {
        let knocks = s.spawn(|| knock_until(port, &replayed, &stop));
        let out = run_batch_disturbed(&layout, &extra, libc::SIGKILL, 1, children_of);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, knocks.join().unwrap())
    });
    assert!(status.success(), "{log}");
    assert_same_tokens(&got, &want, "tp 2 with strays, a worker killed");
    let (_, recovery) = log.split_once("forming the group again").expect("a recovery");
    let (recovery, _) = recovery.split_once("formed again in").expect("the group formed again");
    let dropped = |log: &str| log.lines().filter(|l| l.contains("rendezvous: dropped a connection")).count();
    eprintln!(
        "strays dropped: {} during the recovery, {} in all; the wrong secret refused {refused} times",
        dropped(recovery),
        dropped(&log)
    );
    assert!(dropped(recovery) > 0, "the re-opened rendezvous met strays: {log}");
    assert!(log.contains("reading its answer"), "garbage is dropped: {log}");
    assert!(log.contains("wrong proof"), "a replayed answer or a wrong secret is dropped: {log}");
    assert!(refused > 0, "the rank with the wrong secret learns it was refused");
}
