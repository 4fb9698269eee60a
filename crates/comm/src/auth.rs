//! Only members join. Each group has a secret: `shardline launch` makes one for the ranks it
//! starts; ranks started otherwise (several nodes, torchrun, mpirun, Slurm) read the one the user
//! gives them. Every connection to a rank's listeners (rank 0's rendezvous port, every rank's
//! mesh port) opens with a challenge–response over it, so a stray process, a wrong secret or a
//! replayed message learns nothing of the group and changes nothing in it:
//!
//! ```text
//! acceptor → joiner   MAGIC, nonce_a                      (32 fresh random bytes)
//! joiner → acceptor   nonce_j, HMAC(secret, "join" · purpose · nonce_a · nonce_j · payload), payload
//! acceptor → joiner   HMAC(secret, "accept" · purpose · nonce_j · nonce_a)
//! ```
//!
//! The acceptor's fresh nonce makes every proof single-use (a replay fails), `purpose` binds it to
//! the kind of port, and the acceptor proves the secret too, so a rank never takes a group
//! description from a process that merely listens on the right port. HMAC-SHA256, compared in
//! constant time.

use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{CommError, Result};
use crate::wire::{read_frame_within, write_frame};

const MAGIC: &[u8; 8] = b"SHRDLN01";
const NONCE: usize = 32;
const MAC: usize = 32;
/// The largest handshake message a rank accepts: a hello is a few bytes, so anything bigger is
/// not a member and is not worth the memory.
const MAX_HANDSHAKE_BYTES: usize = 4096;

/// What a handshake is for; part of every proof.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    Rendezvous,
    Mesh,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Rendezvous => b"rendezvous",
            Purpose::Mesh => b"mesh",
        }
    }
}

/// The shared secret of one group. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupSecret(String);

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupSecret({} bytes)", self.0.len())
    }
}

impl GroupSecret {
    /// Fewer bytes than this would be guessable.
    pub const MIN_BYTES: usize = 16;

    /// A secret from the text a user gave (an environment variable or a file's contents;
    /// surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<GroupSecret> {
        let text = text.trim();
        if text.len() < Self::MIN_BYTES {
            return Err(CommError::Protocol(format!(
                "a group secret needs at least {} characters (e.g. `openssl rand -hex 32`), this one has {}",
                Self::MIN_BYTES,
                text.len()
            )));
        }
        Ok(GroupSecret(text.to_string()))
    }

    /// A fresh random secret (64 hex digits).
    pub fn generate() -> GroupSecret {
        let bytes: [u8; 32] = rand::random();
        GroupSecret(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The secret's text, to hand to the ranks a launcher starts (never to logs).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes keys of any length");
        for p in parts {
            mac.update(p);
        }
        mac
    }
}

fn nonce() -> [u8; NONCE] {
    rand::random()
}

/// Why a connection was refused; the acceptor logs it and goes on waiting for members.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

fn refused(what: impl std::fmt::Display) -> Refused {
    Refused(what.to_string())
}

/// The acceptor's side, on a connection just accepted: challenges it, checks the proof, proves
/// the secret back and returns the joiner's payload. Each read waits at most `wait`, so a silent
/// stray delays the group by that much at most.
pub(crate) fn accept_member(
    s: &mut TcpStream,
    secret: &GroupSecret,
    purpose: Purpose,
    wait: Duration,
) -> std::result::Result<Vec<u8>, Refused> {
    let mine = nonce();
    write_frame(s, 0, &[MAGIC.as_slice(), &mine].concat()).map_err(|e| refused(format!("sending a challenge: {e}")))?;
    let (_, msg) =
        read_frame_within(s, MAX_HANDSHAKE_BYTES, wait).map_err(|e| refused(format!("reading its answer: {e}")))?;
    if msg.len() < NONCE + MAC {
        return Err(refused(format!("a {}-byte answer is no member's", msg.len())));
    }
    let (theirs, rest) = msg.split_at(NONCE);
    let (proof, payload) = rest.split_at(MAC);
    secret
        .mac(&[b"join", purpose.label(), &mine, theirs, payload])
        .verify_slice(proof)
        .map_err(|_| refused("wrong proof: not this group's secret, or a replayed message"))?;
    let answer = secret.mac(&[b"accept", purpose.label(), theirs, &mine]).finalize().into_bytes();
    write_frame(s, 0, &answer).map_err(|e| refused(format!("answering: {e}")))?;
    Ok(payload.to_vec())
}

/// The joiner's side, on a connection to a member's listener: answers the challenge with
/// `payload` and checks that the acceptor knows the secret too. `peer` names the acceptor in
/// errors.
pub(crate) fn join_member(
    s: &mut TcpStream,
    secret: &GroupSecret,
    purpose: Purpose,
    payload: &[u8],
    peer: &str,
    wait: Duration,
) -> Result<()> {
    let not_member = |why: String| CommError::Protocol(format!("{peer} {why}"));
    let (_, challenge) = read_frame_within(s, MAX_HANDSHAKE_BYTES, wait)
        .map_err(|e| not_member(format!("sent no challenge ({e}): is another program on that port?")))?;
    let Some(their_nonce) = challenge.strip_prefix(MAGIC.as_slice()).filter(|n| n.len() == NONCE) else {
        return Err(not_member("is not a Shardline rank (unexpected greeting)".into()));
    };
    let mine = nonce();
    let proof = secret.mac(&[b"join", purpose.label(), their_nonce, &mine, payload]).finalize().into_bytes();
    write_frame(s, 0, &[mine.as_slice(), &proof, payload].concat())
        .map_err(|e| CommError::io(format!("answering {peer}'s challenge"), e))?;
    let (_, answer) = read_frame_within(s, MAX_HANDSHAKE_BYTES, wait).map_err(|_| {
        not_member("refused this rank: every rank of a group needs the same secret (SHARDLINE_GROUP_SECRET)".into())
    })?;
    secret
        .mac(&[b"accept", purpose.label(), &mine, their_nonce])
        .verify_slice(&answer)
        .map_err(|_| not_member("does not know this group's secret: a different group on that port?".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};

    /// A stray: sends `bytes`, then waits for the acceptor to hang up.
    fn send_raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(bytes)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.read_to_end(&mut Vec::new());
        Ok(())
    }

    fn secret(text: &str) -> GroupSecret {
        GroupSecret::from_text(text).unwrap()
    }

    /// Runs one handshake over loopback; returns (acceptor's result, joiner's result).
    fn handshake(
        acceptor: &GroupSecret,
        joiner: &GroupSecret,
        purposes: (Purpose, Purpose),
    ) -> (std::result::Result<Vec<u8>, Refused>, Result<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::scope(|scope| {
            let joined = scope.spawn(|| {
                let mut s = TcpStream::connect(addr).unwrap();
                join_member(&mut s, joiner, purposes.1, b"rank 3", "rank 0", Duration::from_secs(5))
            });
            let (mut s, _) = listener.accept().unwrap();
            let accepted = accept_member(&mut s, acceptor, purposes.0, Duration::from_secs(5));
            drop(s);
            (accepted, joined.join().unwrap())
        })
    }

    #[test]
    fn members_prove_the_secret_both_ways() {
        let s = secret("0123456789abcdef-group");
        let (accepted, joined) = handshake(&s, &s, (Purpose::Mesh, Purpose::Mesh));
        assert_eq!(accepted.unwrap(), b"rank 3");
        joined.unwrap();
    }

    #[test]
    fn a_wrong_secret_or_purpose_is_refused_on_both_sides() {
        let (a, b) = (secret("0123456789abcdef-group"), secret("0123456789abcdef-other"));
        let (accepted, joined) = handshake(&a, &b, (Purpose::Rendezvous, Purpose::Rendezvous));
        assert!(accepted.unwrap_err().0.contains("wrong proof"));
        assert!(joined.unwrap_err().to_string().contains("refused this rank"), "the joiner learns why");
        let (accepted, _) = handshake(&a, &a, (Purpose::Rendezvous, Purpose::Mesh));
        assert!(accepted.is_err(), "a mesh proof does not open the rendezvous");
    }

    #[test]
    fn a_replayed_answer_is_refused() {
        let s = secret("0123456789abcdef-group");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Record a member's answer to one challenge...
        let recorded = std::thread::scope(|scope| {
            let acceptor = scope.spawn(|| {
                let (mut c, _) = listener.accept().unwrap();
                accept_member(&mut c, &s, Purpose::Rendezvous, Duration::from_secs(5)).unwrap();
            });
            let mut c = TcpStream::connect(addr).unwrap();
            let (_, challenge) = read_frame_within(&mut c, MAX_HANDSHAKE_BYTES, Duration::from_secs(5)).unwrap();
            let mine = nonce();
            let proof = s.mac(&[b"join", b"rendezvous", &challenge[MAGIC.len()..], &mine, b"hello"]).finalize();
            let answer = [mine.as_slice(), &proof.into_bytes(), b"hello"].concat();
            write_frame(&mut c, 0, &answer).unwrap();
            acceptor.join().unwrap();
            answer
        });
        // ...and send it again to a new challenge.
        std::thread::scope(|scope| {
            let acceptor = scope.spawn(|| {
                let (mut c, _) = listener.accept().unwrap();
                accept_member(&mut c, &s, Purpose::Rendezvous, Duration::from_secs(5))
            });
            let mut c = TcpStream::connect(addr).unwrap();
            read_frame_within(&mut c, MAX_HANDSHAKE_BYTES, Duration::from_secs(5)).unwrap();
            write_frame(&mut c, 0, &recorded).unwrap();
            assert!(acceptor.join().unwrap().unwrap_err().0.contains("replayed"));
        });
    }

    #[test]
    fn garbage_silence_and_oversized_frames_are_refused_quickly() {
        let s = secret("0123456789abcdef-group");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let huge = [[0u8].as_slice(), &u64::MAX.to_le_bytes()].concat();
        for (what, bytes) in [("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()), ("huge", huge), ("silence", vec![])] {
            std::thread::scope(|scope| {
                scope.spawn(|| send_raw(addr, &bytes));
                let (mut c, _) = listener.accept().unwrap();
                let start = std::time::Instant::now();
                let err = accept_member(&mut c, &s, Purpose::Rendezvous, Duration::from_millis(300)).unwrap_err();
                drop(c);
                assert!(start.elapsed() < Duration::from_secs(3), "{what}: {err}");
            });
        }
        assert!(GroupSecret::from_text("short").is_err());
        let generated = GroupSecret::generate();
        assert_eq!(GroupSecret::from_text(generated.expose()).unwrap(), generated);
        assert_ne!(generated, GroupSecret::generate());
        assert!(!format!("{generated:?}").contains(&generated.expose()[..8]), "Debug hides the secret");
    }
}
