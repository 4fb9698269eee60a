//! Framing on a stream: `[tag: u8][len: u64 LE][payload]`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The tag byte and the length in front of every payload.
pub const FRAME_HEADER_BYTES: usize = 9;

pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

pub fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    r.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// Reads one frame of at most `max` payload bytes, waiting at most `wait` for each read; for
/// connections not yet known to come from a member (a stray's length field could ask for any
/// amount of memory). The stream is left without a read timeout.
pub fn read_frame_within(s: &mut TcpStream, max: usize, wait: Duration) -> std::io::Result<(u8, Vec<u8>)> {
    s.set_read_timeout(Some(wait))?;
    let mut head = [0u8; FRAME_HEADER_BYTES];
    let read = s.read_exact(&mut head).and_then(|_| {
        let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
        if len > max as u64 {
            return Err(std::io::Error::new(ErrorKind::InvalidData, format!("a {len}-byte frame (at most {max})")));
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).map(|_| payload)
    });
    s.set_read_timeout(None)?;
    read.map(|payload| (head[0], payload))
}
