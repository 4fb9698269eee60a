//! Framing on a stream: `[tag: u8][len: u64 LE][payload]`.

use std::io::{Read, Write};

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
