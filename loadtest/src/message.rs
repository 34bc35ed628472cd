//! The load generator's message content, inside the end-to-end plaintext:
//! `magic "SPLT" | run_id u64 | mailbox u32 | seq u64 | sent_us u64 | filler`, where
//! `filler[i] = (seq + i) mod 256`, so a recipient can check every byte it was sent.

const MAGIC: &[u8; 4] = b"SPLT";
/// Bytes before the filler.
pub const HEADER: usize = 4 + 8 + 4 + 8 + 8;

/// What a recipient learns from a content buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The mailbox index it was sent to.
    pub mailbox: u32,
    /// The per-mailbox sequence number the sender gave it.
    pub seq: u64,
    /// Microseconds after the run's start at which it was sent.
    pub sent_us: u64,
}

/// Builds content of exactly `len` bytes (at least [`HEADER`]).
pub fn build(run_id: u64, stamp: Stamp, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(HEADER));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&run_id.to_be_bytes());
    out.extend_from_slice(&stamp.mailbox.to_be_bytes());
    out.extend_from_slice(&stamp.seq.to_be_bytes());
    out.extend_from_slice(&stamp.sent_us.to_be_bytes());
    let fill = len.saturating_sub(HEADER);
    out.extend((0..fill).map(|i| (stamp.seq as usize).wrapping_add(i) as u8));
    out
}

/// Checks content against the run and the expected length; `None` if anything is off.
pub fn check(run_id: u64, content: &[u8], len: usize) -> Option<Stamp> {
    if content.len() != len.max(HEADER) || &content[..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(content[i..i + 8].try_into().expect("8 bytes"));
    if u64_at(4) != run_id {
        return None;
    }
    let mailbox = u32::from_be_bytes(content[12..16].try_into().expect("4 bytes"));
    let seq = u64_at(16);
    let sent_us = u64_at(24);
    let ok = content[HEADER..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (seq as usize).wrapping_add(i) as u8);
    ok.then_some(Stamp {
        mailbox,
        seq,
        sent_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_check() {
        let s = Stamp {
            mailbox: 7,
            seq: 300,
            sent_us: 12345,
        };
        let c = build(99, s, 200);
        assert_eq!(c.len(), 200);
        assert_eq!(check(99, &c, 200), Some(s));
        assert_eq!(check(98, &c, 200), None);
        let mut bad = c.clone();
        bad[150] ^= 1;
        assert_eq!(check(99, &bad, 200), None);
        assert_eq!(check(99, &c[..199], 200), None);
    }
}
