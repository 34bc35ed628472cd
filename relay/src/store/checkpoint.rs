//! The store's checkpoint of acknowledged deposits: for each mailbox, the highest sequence
//! number that was durable (and so acknowledged to its sender). It lives in its own small file
//! in the store directory, written atomically (temporary file, fsync, rename, fsync of the
//! directory) every few seconds while deposits come in and at a clean close. It shares nothing
//! with the journal, so a journal that lost its tail (a truncated or damaged file that the
//! storage library replays only up to the damage, without an error) cannot take the record of
//! what it lost with it: at start-up the recovered mailboxes are compared with the checkpoint
//! and a shortfall is reported loudly.
//!
//! Format: `"SPCKPT01"`, count (u64 BE), count × (recipient_id (16) ‖ high (u64 BE)), then the
//! first 16 bytes of the SHA-256 of everything before them.

use sealpost_core::RecipientId;
use std::path::Path;

/// The checkpoint's file name in the store directory.
pub const FILE: &str = "checkpoint";
const MAGIC: &[u8; 8] = b"SPCKPT01";
const ENTRY: usize = 24;

fn check(body: &[u8]) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// Writes the checkpoint atomically (see `atomic_file`: concurrent writers each leave a whole
/// file).
pub fn write(dir: &Path, entries: &[(RecipientId, u64)]) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(16 + entries.len() * ENTRY + 16);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for (rid, high) in entries {
        body.extend_from_slice(rid);
        body.extend_from_slice(&high.to_be_bytes());
    }
    let sum = check(&body);
    body.extend_from_slice(&sum);
    super::atomic_file::write(dir, FILE, &body)
}

/// Reads the checkpoint: `Ok(None)` if there is none (a new store, or one written before
/// checkpoints were kept), an error saying what is wrong if it is damaged.
pub fn read(dir: &Path) -> Result<Option<Vec<(RecipientId, u64)>>, String> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let damaged = || format!("{} is damaged", path.display());
    if bytes.len() < 32 || &bytes[..8] != MAGIC {
        return Err(damaged());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 16);
    if check(body) != sum {
        return Err(damaged());
    }
    let n = u64::from_be_bytes(body[8..16].try_into().map_err(|_| damaged())?);
    let entries = &body[16..];
    if entries.len() as u64 != n.saturating_mul(ENTRY as u64) {
        return Err(damaged());
    }
    Ok(Some(
        entries
            .chunks_exact(ENTRY)
            .filter_map(|c| {
                let rid: RecipientId = c[..16].try_into().ok()?;
                Some((rid, u64::from_be_bytes(c[16..].try_into().ok()?)))
            })
            .collect(),
    ))
}

/// What recovery found missing compared with the checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Envelopes acknowledged to senders (by the checkpoint) beyond what the store recovered,
    /// in mailboxes that were recovered. Some may have been delivered and acknowledged before
    /// the loss.
    pub envelopes: u64,
    /// Mailboxes with such a shortfall.
    pub mailboxes: u64,
    /// Mailboxes in the checkpoint that were not recovered at all: lost, or deleted in the
    /// seconds between the last checkpoint and the stop.
    pub mailboxes_missing: u64,
}

/// Compares the checkpoint with what was recovered (`recovered(rid)`: the mailbox's highest
/// sequence number, `None` if it is gone).
pub fn compare(
    checkpoint: &[(RecipientId, u64)],
    recovered: impl Fn(&RecipientId) -> Option<u64>,
) -> Shortfall {
    let mut s = Shortfall::default();
    for (rid, high) in checkpoint {
        match recovered(rid) {
            None => s.mailboxes_missing += 1,
            Some(got) if got < *high => {
                s.envelopes += high - got;
                s.mailboxes += 1;
            }
            Some(_) => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let entries = vec![([1u8; 16], 100), ([2u8; 16], 7)];
        write(dir.path(), &entries).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(entries.clone()));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("damaged"));
    }

    #[test]
    fn compare_counts_what_is_missing() {
        let cp = vec![([1u8; 16], 100), ([2u8; 16], 7), ([3u8; 16], 5)];
        let s = compare(&cp, |rid| match rid[0] {
            1 => Some(51),
            2 => Some(9),
            _ => None,
        });
        assert_eq!(
            s,
            Shortfall {
                envelopes: 49,
                mailboxes: 1,
                mailboxes_missing: 1
            }
        );
    }
}
