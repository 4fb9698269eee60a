//! Forming the group. Rank 0 listens at `MASTER_ADDR:MASTER_PORT`; every other rank connects
//! (retrying until the deadline: rank 0 may start later), says who it is and where its data
//! listener is, and receives the address table plus rank 0's group description. Then each rank
//! connects to every lower rank and accepts every higher one, giving one stream per pair.
//!
//! Every connection first proves the group's secret (see `auth`). Whatever fails that, or says
//! something no member would (a malformed hello, a rank out of range or already taken), is
//! logged and dropped, and the listener goes on waiting for the real members: neither a stray
//! nor a port scanner can join, learn the group's description, or stop it from forming.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::auth::{accept_member, join_member, GroupSecret, Purpose, Refused};
use crate::error::{CommError, Result};
use crate::mesh::Comm;
use crate::wire::{read_frame, write_frame};

#[derive(Clone, Debug)]
pub struct RendezvousConfig {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// Bound on every wait while forming the group, and on each collective afterwards.
    pub timeout: Duration,
    /// Rank 0 only: the group description every rank receives (e.g. model and layout).
    pub group_blob: Vec<u8>,
    /// What every member proves on every connection.
    pub secret: GroupSecret,
}

const POLL: Duration = Duration::from_millis(10);
/// How long a listener waits on one connection's handshake: long enough for a member on a slow
/// network, short enough that a silent stray barely delays the group.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

fn handshake_wait(cfg: &RendezvousConfig) -> Duration {
    HANDSHAKE_WAIT.min(cfg.timeout)
}

/// Where a just-accepted connection comes from, for the log line if it is dropped.
fn origin(s: &TcpStream) -> String {
    s.peer_addr().map_or_else(|_| "an unknown address".to_string(), |a| a.to_string())
}

/// Logs a connection a listener dropped (stderr, like every rank's start-up lines).
fn dropped(listener: &str, from: &str, why: &Refused) {
    eprintln!("warning: {listener}: dropped a connection from {from}: {why}");
}

fn master(cfg: &RendezvousConfig) -> Result<SocketAddr> {
    let spec = format!("{}:{}", cfg.master_addr, cfg.master_port);
    spec.to_socket_addrs()
        .map_err(|e| CommError::io(format!("resolving MASTER_ADDR {spec}"), e))?
        .next()
        .ok_or_else(|| CommError::Protocol(format!("MASTER_ADDR {spec} resolves to nothing")))
}

/// Accepts one connection before `deadline`.
fn accept_until(listener: &TcpListener, deadline: Instant) -> std::io::Result<Option<TcpStream>> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `addr`, retrying refused connections until `deadline`.
fn connect_until(addr: SocketAddr, deadline: Instant) -> std::io::Result<Option<TcpStream>> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

/// A rank's hello to rank 0: who it is and where its data listener is.
struct Hello {
    rank: usize,
    port: u16,
}

/// Checks a hello against the group: the right world size, a rank in range and not yet taken.
fn parse_hello(b: &[u8], world_size: usize, joined: &[Option<TcpStream>]) -> std::result::Result<Hello, Refused> {
    if b.len() != 10 {
        return Err(Refused(format!("a malformed hello ({} bytes)", b.len())));
    }
    let (rank, world) = (u32_at(b, 0) as usize, u32_at(b, 1) as usize);
    if world != world_size || rank == 0 || rank >= world {
        return Err(Refused(format!(
            "a member joined as rank {rank} of {world}, but this group has {world_size} ranks"
        )));
    }
    if joined[rank].is_some() {
        return Err(Refused(format!("a second rank {rank} (two processes were given the same rank?)")));
    }
    Ok(Hello { rank, port: u16::from_le_bytes([b[8], b[9]]) })
}

/// Joins the group described by `cfg`; returns once every pair of ranks is connected.
pub fn rendezvous(cfg: &RendezvousConfig) -> Result<Comm> {
    if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
        return Err(CommError::Protocol(format!("rank {} is outside a world of size {}", cfg.rank, cfg.world_size)));
    }
    let deadline = Instant::now() + cfg.timeout;
    let master_addr = master(cfg)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |e| CommError::io(what, e)
    };
    let (data, table, blob) = if cfg.rank == 0 {
        let listener = TcpListener::bind(master_addr).map_err(io(&format!("rank 0 listening on {master_addr}")))?;
        let data = TcpListener::bind((master_addr.ip(), 0)).map_err(io("binding the data listener"))?;
        let mut table = vec![data.local_addr().map_err(io("data listener address"))?; cfg.world_size];
        let mut joined: Vec<Option<TcpStream>> = (0..cfg.world_size).map(|_| None).collect();
        while joined.iter().skip(1).any(Option::is_none) {
            let Some(mut s) = accept_until(&listener, deadline).map_err(io("accepting ranks"))? else {
                let ranks = (1..cfg.world_size).filter(|&r| joined[r].is_none()).collect();
                return Err(CommError::MissingRanks { ranks, addr: master_addr.to_string(), timeout: cfg.timeout });
            };
            let from = origin(&s);
            let hello = match accept_member(&mut s, &cfg.secret, Purpose::Rendezvous, handshake_wait(cfg))
                .and_then(|hello| parse_hello(&hello, cfg.world_size, &joined))
            {
                Ok(hello) => hello,
                Err(why) => {
                    dropped("rendezvous", &from, &why);
                    continue;
                }
            };
            let ip = s.peer_addr().map_err(io("peer address"))?.ip();
            table[hello.rank] = SocketAddr::new(ip, hello.port);
            joined[hello.rank] = Some(s);
        }
        let text: String = table.iter().map(|a| format!("{a}\n")).collect();
        for s in joined.iter_mut().flatten() {
            write_frame(s, 0, text.as_bytes())
                .and_then(|_| write_frame(s, 0, &cfg.group_blob))
                .map_err(io("sending the table"))?;
        }
        (data, table, cfg.group_blob.clone())
    } else {
        let mut s = connect_until(master_addr, deadline)
            .map_err(io(&format!("connecting to rank 0 at {master_addr}")))?
            .ok_or(CommError::Timeout { rank: 0, what: "accept the rendezvous connection", timeout: cfg.timeout })?;
        // Listen on the interface that reaches rank 0: the one peers can reach us on.
        let my_ip: IpAddr = s.local_addr().map_err(io("local address"))?.ip();
        let data = TcpListener::bind((my_ip, 0)).map_err(io("binding the data listener"))?;
        let mut hello = Vec::with_capacity(10);
        hello.extend_from_slice(&(cfg.rank as u32).to_le_bytes());
        hello.extend_from_slice(&(cfg.world_size as u32).to_le_bytes());
        hello.extend_from_slice(&data.local_addr().map_err(io("data address"))?.port().to_le_bytes());
        let peer = format!("rank 0 at {master_addr}");
        join_member(&mut s, &cfg.secret, Purpose::Rendezvous, &hello, &peer, handshake_wait(cfg))?;
        s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(POLL)))
            .map_err(io("socket timeout"))?;
        let timeout_or = |e: std::io::Error| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => CommError::Timeout {
                rank: 0,
                what: "complete the rendezvous (other ranks missing?)",
                timeout: cfg.timeout,
            },
            _ => CommError::Disconnected { rank: 0 },
        };
        let (_, text) = read_frame(&mut s).map_err(timeout_or)?;
        let (_, blob) = read_frame(&mut s).map_err(timeout_or)?;
        let table = String::from_utf8_lossy(&text)
            .lines()
            .map(|l| l.parse::<SocketAddr>().map_err(|e| CommError::Protocol(format!("bad address {l}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        if table.len() != cfg.world_size {
            return Err(CommError::Protocol("address table has the wrong size".into()));
        }
        (data, table, blob)
    };
    let streams = connect_mesh(cfg, &data, &table, deadline)?;
    Comm::new(cfg.rank, streams, cfg.timeout, blob)
}

fn connect_mesh(
    cfg: &RendezvousConfig,
    data: &TcpListener,
    table: &[SocketAddr],
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>> {
    let mut streams: Vec<Option<TcpStream>> = (0..cfg.world_size).map(|_| None).collect();
    for (peer, addr) in table.iter().enumerate().take(cfg.rank) {
        let mut s = connect_until(*addr, deadline)
            .map_err(|e| CommError::io(format!("connecting to rank {peer} at {addr}"), e))?
            .ok_or(CommError::Timeout { rank: peer, what: "accept a connection", timeout: cfg.timeout })?;
        let greeting = (cfg.rank as u32).to_le_bytes();
        join_member(
            &mut s,
            &cfg.secret,
            Purpose::Mesh,
            &greeting,
            &format!("rank {peer} at {addr}"),
            handshake_wait(cfg),
        )?;
        streams[peer] = Some(s);
    }
    while let Some(missing) = (cfg.rank + 1..cfg.world_size).find(|&r| streams[r].is_none()) {
        let Some(mut s) = accept_until(data, deadline).map_err(|e| CommError::io("accepting peers", e))? else {
            return Err(CommError::Timeout { rank: missing, what: "connect", timeout: cfg.timeout });
        };
        let from = origin(&s);
        let peer = accept_member(&mut s, &cfg.secret, Purpose::Mesh, handshake_wait(cfg)).and_then(|greeting| {
            let peer = <[u8; 4]>::try_from(greeting.as_slice())
                .map(|b| u32::from_le_bytes(b) as usize)
                .map_err(|_| Refused("a malformed greeting".into()))?;
            if peer <= cfg.rank || peer >= cfg.world_size || streams[peer].is_some() {
                return Err(Refused(format!("a greeting from rank {peer}, which does not connect here")));
            }
            Ok(peer)
        });
        match peer {
            Ok(peer) => streams[peer] = Some(s),
            Err(why) => dropped(&format!("rank {} mesh", cfg.rank), &from, &why),
        }
    }
    Ok(streams)
}
