//! The stored form of an envelope sealed at rest, and the batch sealing and opening of it.
//!
//! ```text
//! 0   1   format = 0xA5 (a plain envelope starts with its version, 1: the two never clash)
//! 1   1   shard of the epoch
//! 2   8   epoch start, Unix seconds, u64 BE
//! 10  16  dedupe digest (below)
//! 26  12  nonce (synthetic, below)
//! 38  N   ChaCha20-Poly1305 ciphertext of the envelope as received
//! 38+N 16 tag
//! ```
//!
//! AAD = `"sealpost/1 at-rest" ‖ deposit_id ‖ bytes 0..38`: a record opens only in its own
//! mailbox and under its own epoch, with its own dedupe digest, so records cannot be moved
//! between mailboxes or relabelled.
//!
//! The dedupe digest is `HMAC-SHA256(dedupe_key, "envelope digest" ‖ deposit_id ‖
//! envelope)[..16]` under the long-lived dedupe key ([`super::keyring::DedupeKey`]). The inner
//! stores tell a byte-identical retry (DUPLICATE) from another envelope under the same sender
//! nonce (ID_REUSED) by comparing [`crate::store::index::digest`]s, and that function reads
//! this field from a sealed record instead of hashing the record: a retry sealed in another
//! epoch is a different record but carries the same digest. The memory, disk and cluster
//! stores (its Lua included) need no other change; the disk store recomputes digests of held
//! envelopes on recovery through the same function.
//!
//! The nonce is synthetic (SIV-style): `HMAC-SHA256(siv_key, "nonce" ‖ AAD)[..12]` under a
//! key derived from the epoch key, with the AAD's nonce bytes zero. The AAD holds the dedupe
//! digest (a keyed 128-bit hash of mailbox and envelope), so the envelope is hashed once, for
//! the digest. A nonce repeats under one key only for the identical AAD (same mailbox, epoch
//! and digest: the same envelope), which then gives the identical record: the only thing
//! learnt is that two stored records are equal, which the relay knew at ingress. Two
//! different AADs colliding on 96 bits needs about 2^48 records under one epoch key.

use super::keyring::EpochKey;
use bytes::{Bytes, BytesMut};
use sealpost_core::DepositId;
use sealpost_core::batch::{OpenJob, SealJob};
use sealpost_core::engine::Engine;
use sealpost_core::suite::{NONCE_LEN, TAG_LEN};
use std::sync::Arc;

/// The first byte of a record sealed at rest.
pub const FORMAT: u8 = 0xA5;
/// Where the dedupe digest is.
const DIGEST_AT: usize = 1 + 1 + 8;
/// The dedupe digest's length.
pub const DIGEST_LEN: usize = 16;
/// Where the nonce is.
const NONCE_AT: usize = DIGEST_AT + DIGEST_LEN;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = NONCE_AT + NONCE_LEN;
/// What sealing adds to an envelope.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The AAD's label.
const LABEL: &[u8] = b"sealpost/1 at-rest";
/// The AAD's length.
const AAD_LEN: usize = LABEL.len() + 16 + HEADER_LEN;

/// An epoch: a time window of one shard. Every envelope of a mailbox stored in one window is
/// sealed under the epoch's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpochId {
    /// When the window begins, Unix seconds.
    pub start: u64,
    /// The shard (derived from the mailbox's deposit id).
    pub shard: u8,
}

/// Whether stored bytes are a record sealed at rest (else a plain envelope stored before
/// at-rest encryption was turned on).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.first() == Some(&FORMAT)
}

/// The dedupe digest a record carries, if `stored` is a whole record's header.
pub fn dedupe_digest(stored: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    if stored.len() < OVERHEAD || stored[0] != FORMAT {
        return None;
    }
    stored[DIGEST_AT..NONCE_AT].try_into().ok()
}

/// The epoch a record was sealed under, if `stored` is a whole record's header.
pub fn epoch_of(stored: &[u8]) -> Option<EpochId> {
    if stored.len() < OVERHEAD || stored[0] != FORMAT {
        return None;
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&stored[2..10]);
    Some(EpochId {
        start: u64::from_be_bytes(start),
        shard: stored[1],
    })
}

fn aad(deposit_id: &DepositId, header: &[u8]) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..LABEL.len()].copy_from_slice(LABEL);
    a[LABEL.len()..LABEL.len() + 16].copy_from_slice(deposit_id);
    a[LABEL.len() + 16..].copy_from_slice(header);
    a
}

/// One envelope to seal.
pub struct ToSeal<'a> {
    /// Its mailbox.
    pub deposit_id: &'a DepositId,
    /// Its epoch and that epoch's key.
    pub epoch: EpochId,
    /// The key.
    pub key: &'a Arc<EpochKey>,
    /// The envelope's dedupe digest ([`super::keyring::DedupeKey::envelope_digest`]).
    pub digest: [u8; DIGEST_LEN],
    /// The envelope as received.
    pub envelope: &'a [u8],
}

/// Seals a batch in one call of the batch engine; one record per item, in order.
pub fn seal_batch(engine: &Engine, items: &[ToSeal<'_>]) -> Vec<Bytes> {
    let lens: Vec<usize> = items.iter().map(|i| OVERHEAD + i.envelope.len()).collect();
    let mut buf = BytesMut::zeroed(lens.iter().sum());
    let mut aads = Vec::with_capacity(items.len());
    let mut nonces = Vec::with_capacity(items.len());
    for item in items {
        let mut header = [0u8; HEADER_LEN];
        header[0] = FORMAT;
        header[1] = item.epoch.shard;
        header[2..DIGEST_AT].copy_from_slice(&item.epoch.start.to_be_bytes());
        header[DIGEST_AT..NONCE_AT].copy_from_slice(&item.digest);
        // The nonce is not yet in the header the synthetic nonce is computed over: it covers
        // the epoch, the mailbox and the digest, which stands for the envelope.
        let nonce = item.key.synthetic_nonce(&aad(item.deposit_id, &header));
        header[NONCE_AT..].copy_from_slice(&nonce);
        aads.push(aad(item.deposit_id, &header));
        nonces.push((header, nonce));
    }
    {
        let mut rest: &mut [u8] = &mut buf[..];
        let mut jobs = Vec::with_capacity(items.len());
        for ((item, len), (aad, (header, nonce))) in
            items.iter().zip(&lens).zip(aads.iter().zip(&nonces))
        {
            let (this, tail) = rest.split_at_mut(*len);
            rest = tail;
            let (head, out) = this.split_at_mut(HEADER_LEN);
            head.copy_from_slice(header);
            jobs.push(SealJob {
                key: item.key.seal_key(),
                nonce: *nonce,
                aad,
                plaintext: item.envelope,
                out,
            });
        }
        engine
            .seal(&mut jobs)
            .expect("output buffers are sized from their plaintexts");
    }
    let mut all = buf.freeze();
    lens.iter().map(|l| all.split_to(*l)).collect()
}

/// Why a stored record did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Its epoch's key is gone (destroyed, or lost with a damaged keyring): the envelope can
    /// never be read again.
    KeyGone,
    /// The record is damaged (or was moved from another mailbox): its tag does not verify.
    Damaged,
}

/// One record to open: its mailbox, the record, and its epoch's key if the keyring has it.
pub struct ToOpen<'a> {
    /// Its mailbox.
    pub deposit_id: &'a DepositId,
    /// The stored record (starts with [`FORMAT`]; a whole header).
    pub stored: &'a Bytes,
    /// Its epoch's key, if alive.
    pub key: Option<&'a Arc<EpochKey>>,
}

/// Opens a batch in one call of the batch engine (tags checked in constant time); one
/// envelope or failure per item, in order.
pub fn open_batch(engine: &Engine, items: &[ToOpen<'_>]) -> Vec<Result<Bytes, OpenFailure>> {
    let lens: Vec<usize> = items
        .iter()
        .map(|i| i.stored.len().saturating_sub(OVERHEAD))
        .collect();
    let mut buf = BytesMut::zeroed(lens.iter().sum());
    // A record too short to hold a header is damaged (below); its AAD is never used.
    let aads: Vec<[u8; AAD_LEN]> = items
        .iter()
        .map(|i| match i.stored.get(..HEADER_LEN) {
            Some(header) if i.stored.len() >= OVERHEAD => aad(i.deposit_id, header),
            _ => [0; AAD_LEN],
        })
        .collect();
    let mut result: Vec<Option<Result<(), OpenFailure>>> = items
        .iter()
        .map(|i| match i.key {
            _ if i.stored.len() < OVERHEAD => Some(Err(OpenFailure::Damaged)),
            None => Some(Err(OpenFailure::KeyGone)),
            Some(_) => None,
        })
        .collect();
    {
        let mut rest: &mut [u8] = &mut buf[..];
        let mut jobs = Vec::with_capacity(items.len());
        let mut which = Vec::with_capacity(items.len());
        for (n, ((item, len), aad)) in items.iter().zip(&lens).zip(&aads).enumerate() {
            let (out, tail) = rest.split_at_mut(*len);
            rest = tail;
            let (Some(key), None) = (item.key, result[n]) else {
                continue;
            };
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&item.stored[NONCE_AT..HEADER_LEN]);
            jobs.push(OpenJob {
                key: key.seal_key(),
                nonce,
                aad,
                ciphertext: &item.stored[HEADER_LEN..],
                out,
            });
            which.push(n);
        }
        let mut ok = vec![false; jobs.len()];
        engine
            .open(&mut jobs, &mut ok)
            .expect("output buffers are sized from their ciphertexts");
        for (n, ok) in which.into_iter().zip(ok) {
            result[n] = Some(if ok {
                Ok(())
            } else {
                Err(OpenFailure::Damaged)
            });
        }
    }
    let mut all = buf.freeze();
    lens.iter()
        .zip(result)
        .map(|(len, r)| {
            let plain = all.split_to(*len);
            match r {
                Some(Ok(())) => Ok(plain),
                Some(Err(e)) => Err(e),
                None => Err(OpenFailure::Damaged),
            }
        })
        .collect()
}
