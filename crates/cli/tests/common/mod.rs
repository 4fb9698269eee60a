//! Starting and stopping `shardline serve` / `launch` from tests: ephemeral ports read from the
//! READY line, SIGTERM with a bounded wait, SIGKILL on drop, and checks that no rank is left.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use shardline_launcher::process;

/// The binary under test, without rank variables a CI environment might set.
pub fn shardline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardline"));
    for var in [
        "SHARDLINE_MODEL",
        "RANK",
        "WORLD_SIZE",
        "MASTER_PORT",
        "SHARDLINE_TP",
        "SHARDLINE_PP",
        "SHARDLINE_GROUP_SECRET",
        "SHARDLINE_GROUP_SECRET_FILE",
    ] {
        c.env_remove(var);
    }
    c
}

/// A server process; SIGKILL and reap on drop.
pub struct Server {
    pub child: Child,
    /// `http://ADDR` of the gRPC API.
    pub grpc: String,
    /// `http://ADDR` of the HTTP API, empty when it is off.
    pub http: String,
}

impl Server {
    /// Starts `args` (a `serve` or `launch` command) and waits for its READY line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = shardline().args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Owned by `Server` from here, so its Drop reaps the process whatever happens next.
        let mut server = Server { child, grpc: String::new(), http: String::new() };
        let line = ready_line(stdout).unwrap_or_else(|| panic!("{args:?} exited before READY"));
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("grpc", a)) => server.grpc = format!("http://{a}"),
                Some(("http", a)) if a != "off" => server.http = format!("http://{a}"),
                _ => {}
            }
        }
        assert!(!server.grpc.is_empty(), "READY line without a gRPC address: {line}");
        server
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        wait_bounded(&mut self.child, Duration::from_secs(15))
    }
}

/// The rest of the READY line; stdout keeps being drained afterwards so the server never
/// blocks on a full pipe.
fn ready_line(mut stdout: BufReader<ChildStdout>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        if let Some(rest) = line.trim().strip_prefix("READY ") {
            let rest = rest.to_string();
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            return Some(rest);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    process::wait_timeout(child, limit).unwrap().unwrap_or_else(|| panic!("process did not exit within {limit:?}"))
}

/// `pid`'s children (of every thread: a rank started again is the supervising thread's child).
pub fn children_of(pid: u32) -> Vec<u32> {
    process::children(pid)
}

/// Every process in `ranks` is gone (or a zombie about to be reaped).
pub fn assert_no_leftovers(ranks: &[u32]) {
    std::thread::sleep(Duration::from_millis(200));
    for &r in ranks {
        assert!(!process::alive(r), "rank process {r} left behind");
    }
}

/// (status, body) of one HTTP/1.1 request to `http` (`http://host:port`), with `auth` as the
/// Authorization header and `body` as JSON.
pub fn http(http: &str, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let authority = http.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}
