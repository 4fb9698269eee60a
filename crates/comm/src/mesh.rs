//! The established group: one TCP stream per peer, a writer thread draining a queue (so sends
//! never block on a slow reader and two ranks sending to each other cannot deadlock) and a
//! reader thread sorting incoming frames into one inbox per tag.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{CommError, Result};
use crate::wire::{read_frame, write_frame, FRAME_HEADER_BYTES};

/// Independent message streams between two ranks; order is kept within a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// Rank 0 → workers: group setup, steps, shutdown.
    Control = 0,
    /// Pipeline stage → next stage: hidden states.
    Hidden = 1,
    /// Collectives inside a tensor-parallel group.
    Collective = 2,
    /// Last stage → rank 0: step results.
    Result = 3,
    /// Proof of life between rank 0 and the workers (empty; never queued, only timed).
    Heartbeat = 4,
}
/// Tags whose messages are queued for a reader (every tag but `Heartbeat`).
const NUM_TAGS: usize = 4;

impl Tag {
    /// The tags that carry data.
    pub const ALL: [Tag; NUM_TAGS] = [Tag::Control, Tag::Hidden, Tag::Collective, Tag::Result];

    pub fn name(self) -> &'static str {
        match self {
            Tag::Control => "control",
            Tag::Hidden => "hidden",
            Tag::Collective => "collective",
            Tag::Result => "result",
            Tag::Heartbeat => "heartbeat",
        }
    }
}

/// A tagged message waiting for the writer thread.
type Frame = (u8, Vec<u8>);

struct Peer {
    stream: TcpStream,
    /// `None` once the group is closed.
    outbox: Mutex<Option<Sender<Frame>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    inbox: Vec<Mutex<Receiver<Vec<u8>>>>,
    /// Cleared by the reader thread when the connection ends (the peer exited or was killed).
    connected: Arc<AtomicBool>,
    /// When the reader last got a frame of any tag, in milliseconds since the mesh formed.
    last_heard_ms: Arc<AtomicU64>,
}

impl Peer {
    fn start(rank: usize, stream: TcpStream, formed: Instant) -> Result<Peer> {
        stream.set_nodelay(true).map_err(|e| CommError::io(format!("rank {rank}: TCP_NODELAY"), e))?;
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| CommError::io(format!("rank {rank}: socket"), e));
        let (mut reader, mut writer) = (clone(&stream)?, clone(&stream)?);
        let (out_tx, out_rx) = mpsc::channel::<Frame>();
        let writer_thread = std::thread::Builder::new()
            .name(format!("comm-tx-{rank}"))
            .spawn(move || {
                for (tag, payload) in out_rx {
                    if write_frame(&mut writer, tag, &payload).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| CommError::io("spawning a writer thread", e))?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..NUM_TAGS).map(|_| mpsc::channel::<Vec<u8>>()).unzip();
        let connected = Arc::new(AtomicBool::new(true));
        let still_connected = Arc::clone(&connected);
        let last_heard_ms = Arc::new(AtomicU64::new(0));
        let heard = Arc::clone(&last_heard_ms);
        std::thread::Builder::new()
            .name(format!("comm-rx-{rank}"))
            .spawn(move || {
                // Ends on EOF or error; dropping the senders tells every waiting receiver.
                while let Ok((tag, payload)) = read_frame(&mut reader) {
                    heard.store(formed.elapsed().as_millis() as u64, Ordering::Release);
                    if tag == Tag::Heartbeat as u8 {
                        continue;
                    }
                    match senders.get(tag as usize) {
                        Some(tx) if tx.send(payload).is_ok() => {}
                        _ => break,
                    }
                }
                still_connected.store(false, Ordering::Release);
            })
            .map_err(|e| CommError::io("spawning a reader thread", e))?;
        Ok(Peer {
            stream,
            outbox: Mutex::new(Some(out_tx)),
            writer: Mutex::new(Some(writer_thread)),
            inbox: receivers.into_iter().map(Mutex::new).collect(),
            connected,
            last_heard_ms,
        })
    }
}

/// This rank's connections to every other rank of the group.
pub struct Comm {
    rank: usize,
    world: usize,
    peers: Vec<Option<Peer>>,
    timeout: Duration,
    group_blob: Vec<u8>,
    /// Bytes taken from each tag's inboxes (frames with their headers), for traffic stats.
    received: [AtomicU64; NUM_TAGS],
    /// When the mesh formed: the origin of every peer's `last_heard_ms`.
    formed: Instant,
}

impl Comm {
    pub(crate) fn new(
        rank: usize,
        streams: Vec<Option<TcpStream>>,
        timeout: Duration,
        group_blob: Vec<u8>,
    ) -> Result<Comm> {
        let world = streams.len();
        let formed = Instant::now();
        let peers = streams
            .into_iter()
            .enumerate()
            .map(|(r, s)| s.map(|s| Peer::start(r, s, formed)).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Comm { rank, world, peers, timeout, group_blob, received: Default::default(), formed })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// How long a collective waits for a peer before failing.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The group description rank 0 handed out at the rendezvous.
    pub fn group_blob(&self) -> &[u8] {
        &self.group_blob
    }

    fn peer(&self, rank: usize) -> Result<&Peer> {
        self.peers
            .get(rank)
            .and_then(Option::as_ref)
            .ok_or_else(|| CommError::Protocol(format!("rank {} has no connection to rank {rank}", self.rank)))
    }

    /// Queues `payload` for `to`; returns at once.
    pub fn send(&self, to: usize, tag: Tag, payload: Vec<u8>) -> Result<()> {
        let peer = self.peer(to)?;
        let outbox = peer.outbox.lock().expect("outbox lock");
        match outbox.as_ref() {
            Some(tx) => tx.send((tag as u8, payload)).map_err(|_| CommError::Disconnected { rank: to }),
            None => Err(CommError::Protocol("the group is closed".into())),
        }
    }

    /// The next `tag` message from `from`, waiting at most the group timeout.
    pub fn recv(&self, from: usize, tag: Tag) -> Result<Vec<u8>> {
        self.recv_within(from, tag, Some(self.timeout), "answer")
    }

    /// Like `recv` but waits as long as the peer stays connected (an idle worker waiting for
    /// work, for instance).
    pub fn recv_until_disconnect(&self, from: usize, tag: Tag) -> Result<Vec<u8>> {
        self.recv_within(from, tag, None, "answer")
    }

    /// The next `tag` message from `from`, waiting at most `timeout` (forever when `None`, as
    /// long as the peer stays connected); a timeout error says the peer did not `what`.
    pub fn recv_within(&self, from: usize, tag: Tag, timeout: Option<Duration>, what: &'static str) -> Result<Vec<u8>> {
        let peer = self.peer(from)?;
        let inbox = peer
            .inbox
            .get(tag as usize)
            .ok_or_else(|| CommError::Protocol(format!("{} frames are not queued; see silent_for", tag.name())))?
            .lock()
            .expect("inbox lock");
        let payload = match timeout {
            None => inbox.recv().map_err(|_| CommError::Disconnected { rank: from }),
            Some(t) => inbox.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => CommError::Timeout { rank: from, what, timeout: t },
                RecvTimeoutError::Disconnected => CommError::Disconnected { rank: from },
            }),
        }?;
        self.received[tag as usize].fetch_add((payload.len() + FRAME_HEADER_BYTES) as u64, Ordering::Relaxed);
        Ok(payload)
    }

    /// Fails naming the first of `ranks` whose connection has ended. Waits that happen outside
    /// this mesh (an NCCL collective spinning on the GPU) poll it to learn of a dead peer in
    /// milliseconds instead of at their timeout.
    pub fn check_connected(&self, ranks: &[usize]) -> Result<()> {
        for &r in ranks.iter().filter(|&&r| r != self.rank) {
            if !self.peer(r)?.connected.load(Ordering::Acquire) {
                return Err(CommError::Disconnected { rank: r });
            }
        }
        Ok(())
    }

    /// How long `rank` has sent nothing at all (no frame of any tag, heartbeats included).
    pub fn silent_for(&self, rank: usize) -> Result<Duration> {
        let heard = Duration::from_millis(self.peer(rank)?.last_heard_ms.load(Ordering::Acquire));
        Ok(self.formed.elapsed().saturating_sub(heard))
    }

    /// Sends an empty `Heartbeat` frame to each of `peers` every `every`, from a thread of its
    /// own (so a long step does not look like silence), until the mesh closes. A stopped
    /// process stops beating; `silent_for` on the other side notices.
    pub fn start_heartbeat(self: &Arc<Self>, peers: Vec<usize>, every: Duration) -> Result<()> {
        let comm = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(format!("heartbeat-{}", self.rank))
            .spawn(move || loop {
                // Holds the mesh only while sending, so it still drops when its owners do.
                let Some(c) = comm.upgrade() else { return };
                if peers.iter().any(|&p| c.send(p, Tag::Heartbeat, Vec::new()).is_err()) {
                    return;
                }
                drop(c);
                std::thread::sleep(every);
            })
            .map_err(|e| CommError::io("spawning the heartbeat thread", e))?;
        Ok(())
    }

    /// Bytes this rank has received on `tag` so far (payloads and frame headers).
    pub fn bytes_received(&self, tag: Tag) -> u64 {
        self.received.get(tag as usize).map_or(0, |r| r.load(Ordering::Relaxed))
    }

    /// Delivers everything already sent, then closes every connection (waking any thread
    /// blocked on this group). Peers always drain their sockets, so the wait is short; a dead
    /// peer fails its writes at once.
    pub fn close(&self) {
        for p in self.peers.iter().flatten() {
            p.outbox.lock().expect("outbox lock").take();
            if let Some(w) = p.writer.lock().expect("writer lock").take() {
                let _ = w.join();
            }
            let _ = p.stream.shutdown(Shutdown::Both);
        }
    }

    /// Closes every connection at once, dropping anything still queued (for failures).
    pub fn abort(&self) {
        for p in self.peers.iter().flatten() {
            p.outbox.lock().expect("outbox lock").take();
            let _ = p.stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        self.close();
    }
}
