//! The in-memory mailbox index both stores share: sequence numbers, quotas, the dedupe window,
//! expiry order and wake-up signals. The memory store also keeps envelope bodies here; the disk
//! store keeps only their metadata and reads bodies from disk.

use super::{Append, AppendOutcome, MailboxRecord, Quotas, StoreError, StoreStats};
use bytes::Bytes;
use sealpost_core::suite::NONCE_LEN;
use sealpost_core::{DepositId, RecipientId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// A deposit nonce.
pub type Nonce = [u8; NONCE_LEN];

/// The first 16 bytes of an envelope's SHA-256: tells a byte-identical retry (DUPLICATE) from
/// a different envelope under a reused (deposit_id, nonce) (ID_REUSED). 128 bits are far
/// beyond what a sender could collide by accident, and a sender colliding on purpose only
/// gets its own second envelope dropped.
pub type Digest = [u8; 16];

/// The [`Digest`] of an envelope. A record sealed at rest carries its own (a keyed digest of
/// the envelope it holds, see `at_rest::record`): hashing the record would give a retry that
/// is sealed under another epoch key another digest. A plain envelope never looks sealed (it
/// starts with its version, 1, checked at ingress).
pub fn digest(envelope: &[u8]) -> Digest {
    if let Some(d) = super::at_rest::record::dedupe_digest(envelope) {
        return d;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, envelope);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// One held envelope.
pub struct Held {
    /// Sequence number.
    pub seq: u64,
    /// Sender nonce.
    pub nonce: Nonce,
    /// When it was stored.
    pub stored_at: SystemTime,
    /// Envelope length.
    pub len: u32,
    /// The envelope, when the index keeps bodies (memory store).
    pub body: Option<Bytes>,
    /// Whether the store has made it durable; only durable envelopes are delivered, so a
    /// recipient never sees an envelope whose sender could still get an error for it.
    pub durable: bool,
}

/// One mailbox's state. An idle mailbox (nothing held, no dedupe entries, no subscriber) is
/// just its record and next sequence number; the rest is allocated when it is first used.
pub struct Mailbox {
    /// Keys and identifiers.
    pub record: Arc<MailboxRecord>,
    /// The next sequence number to assign.
    pub next_seq: u64,
    active: Option<Box<Active>>,
}

#[derive(Default)]
struct Active {
    /// Held envelopes, ascending by sequence number (and so by time).
    queue: VecDeque<Held>,
    /// Bytes held.
    bytes: u64,
    /// Nonces of held envelopes and of the most recently removed ones, with their envelopes'
    /// digests (`None` for entries recovered from a store written before digests were kept).
    seen: HashMap<Nonce, Option<Digest>>,
    /// Removed envelopes' (seq, nonce), oldest first, at most the dedupe window.
    removed: VecDeque<(u64, Nonce)>,
    /// The wake-up signal, created on the first `watch`.
    notify: Option<watch::Sender<u64>>,
    /// The highest sequence number made durable (acknowledged to its sender): what the disk
    /// store's checkpoint records.
    durable_high: u64,
}

impl Mailbox {
    /// A mailbox with nothing held.
    pub fn new(record: Arc<MailboxRecord>, next_seq: u64) -> Self {
        Self {
            record,
            next_seq,
            active: None,
        }
    }

    fn active_mut(&mut self) -> &mut Active {
        self.active.get_or_insert_with(Default::default)
    }

    /// Envelopes held.
    pub fn held(&self) -> usize {
        self.active.as_ref().map_or(0, |a| a.queue.len())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.bytes)
    }

    /// What a new envelope under `nonce` with `digest` is: `None` if the nonce is new here,
    /// else a duplicate (same envelope, or one whose digest is unknown) or a reused id.
    fn seen(&self, nonce: &Nonce, digest: &Digest) -> Option<AppendOutcome> {
        let known = self.active.as_ref()?.seen.get(nonce)?;
        Some(match known {
            Some(d) if d != digest => AppendOutcome::IdReused,
            _ => AppendOutcome::Duplicate,
        })
    }

    /// The digest remembered for a nonce.
    fn digest_of(&self, nonce: &Nonce) -> Option<Digest> {
        self.active.as_ref()?.seen.get(nonce).copied().flatten()
    }

    /// Records, after recovery, that everything up to `high` was durable.
    pub fn set_durable_high(&mut self, high: u64) {
        if high > 0 {
            let a = self.active_mut();
            a.durable_high = a.durable_high.max(high);
        }
    }

    /// Restores a held envelope (recovery), in ascending order.
    pub fn restore_held(&mut self, h: Held, digest: Digest) {
        self.next_seq = self.next_seq.max(h.seq + 1);
        let a = self.active_mut();
        a.bytes += h.len as u64;
        a.seen.insert(h.nonce, Some(digest));
        a.queue.push_back(h);
    }

    /// Restores a removed nonce (recovery), oldest first; returns the sequence numbers that
    /// fell out of the window.
    pub fn restore_removed(
        &mut self,
        seq: u64,
        nonce: Nonce,
        digest: Option<Digest>,
        window: usize,
    ) -> Vec<u64> {
        self.next_seq = self.next_seq.max(seq + 1);
        self.active_mut().seen.insert(nonce, digest);
        self.forget(seq, nonce, window)
    }

    /// Remembers a removed envelope's nonce; returns the sequence numbers that fell out of the
    /// dedupe window.
    fn forget(&mut self, seq: u64, nonce: Nonce, window: usize) -> Vec<u64> {
        let a = self.active_mut();
        a.removed.push_back((seq, nonce));
        let mut evicted = Vec::new();
        while a.removed.len() > window {
            if let Some((old_seq, old)) = a.removed.pop_front() {
                a.seen.remove(&old);
                evicted.push(old_seq);
            }
        }
        evicted
    }

    fn front(&self) -> Option<&Held> {
        self.active.as_ref().and_then(|a| a.queue.front())
    }

    /// Removes the oldest held envelope; returns it with its digest (which the dedupe window
    /// keeps).
    fn pop_front(
        &mut self,
        window: usize,
        evicted: &mut Vec<(RecipientId, u64)>,
    ) -> Option<(Held, Option<Digest>)> {
        let a = self.active.as_mut()?;
        let h = a.queue.pop_front()?;
        a.bytes -= h.len as u64;
        let digest = self.digest_of(&h.nonce);
        let rid = self.record.recipient_id;
        evicted.extend(
            self.forget(h.seq, h.nonce, window)
                .into_iter()
                .map(|s| (rid, s)),
        );
        Some((h, digest))
    }
}

/// Hashes a 16-byte identifier by its first eight bytes. Recipient and deposit ids come from the
/// operating system's CSPRNG, so they are uniformly random already, and an id a client sends
/// can only be looked up, never inserted: there is nothing for a keyed hash to protect here,
/// and SipHash costs a measurable share of recovering a million mailboxes.
#[derive(Clone, Copy, Default)]
pub struct IdHash;

/// The hasher [`IdHash`] builds.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Arrays hash their length first (8 bytes, via write_usize) and then their bytes.
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
    }

    fn write_usize(&mut self, _len: usize) {}
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// Derives a mailbox's deposit id from its recipient id with a keyed PRF (SipHash-1-3, 128-bit
/// output) under a key only the relay holds. Senders see only deposit ids and cannot link them
/// to recipient ids; the relay needs one map, keyed by deposit id, instead of two — at a million
/// mailboxes that is about 66 bytes per mailbox less.
#[derive(Clone)]
pub struct IdPrf {
    key: [u8; 16],
}

impl IdPrf {
    /// A PRF under `key`.
    pub fn new(key: [u8; 16]) -> Self {
        Self { key }
    }

    /// A PRF under a fresh random key.
    pub fn random() -> Result<Self, StoreError> {
        sealpost_core::random::array()
            .map(Self::new)
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// The key, for a durable store to keep.
    pub fn key(&self) -> [u8; 16] {
        self.key
    }

    /// The deposit id of the mailbox whose recipient id is `rid`.
    pub fn deposit_id(&self, rid: &RecipientId) -> DepositId {
        use std::hash::Hasher;
        let mut h = siphasher::sip128::SipHasher13::new_with_key(&self.key);
        h.write(rid);
        siphasher::sip128::Hasher128::finish128(&h).as_bytes()
    }
}

/// Everything indexed.
pub struct Index {
    /// Mailboxes by deposit id.
    mailboxes: HashMap<DepositId, Mailbox, IdHash>,
    prf: IdPrf,
    totals: Totals,
    /// The most bytes of envelope bodies kept in memory.
    body_limit: u64,
}

/// What every mailbox holds, together.
#[derive(Default)]
struct Totals {
    envelopes: u64,
    bytes: u64,
    /// Bytes of envelope bodies kept in memory.
    body_bytes: u64,
}

impl Totals {
    /// Accounts for a held envelope leaving the index.
    fn remove(&mut self, h: &Held) {
        self.envelopes -= 1;
        self.bytes -= h.len as u64;
        if h.body.is_some() {
            self.body_bytes -= h.len as u64;
        }
    }
}

/// An envelope newly stored by [`Index::append`], for the disk store to write.
pub struct Stored {
    /// Its mailbox.
    pub recipient_id: RecipientId,
    /// Its sequence number.
    pub seq: u64,
    /// Its nonce.
    pub nonce: Nonce,
    /// When.
    pub stored_at: SystemTime,
    /// Index into the append batch.
    pub item: usize,
}

/// What an ack or expiry removed, for the disk store to delete.
#[derive(Default)]
pub struct Removal {
    /// Envelopes removed.
    pub removed: Vec<Removed>,
    /// Dedupe-window entries that fell out of the window: (mailbox, seq).
    pub evicted: Vec<(RecipientId, u64)>,
}

/// One envelope removed by an ack or expiry.
pub struct Removed {
    /// Mailbox.
    pub recipient_id: RecipientId,
    /// Sequence number.
    pub seq: u64,
    /// Nonce (goes to the dedupe window).
    pub nonce: Nonce,
    /// The envelope's digest (goes to the dedupe window with the nonce).
    pub digest: Option<Digest>,
}

impl Index {
    /// An empty index with room for `n` mailboxes, deriving deposit ids with `prf`.
    pub fn new(prf: IdPrf, n: usize) -> Self {
        Self {
            mailboxes: HashMap::with_capacity_and_hasher(n, IdHash),
            prf,
            totals: Totals::default(),
            body_limit: u64::MAX,
        }
    }

    /// Keeps at most `limit` bytes of envelope bodies in memory (the disk store's tail of fresh
    /// envelopes, so waiting subscribers get them without a read); the rest of `append`'s
    /// bodies are left to the caller's storage.
    pub fn set_body_limit(&mut self, limit: u64) {
        self.body_limit = limit;
    }

    /// Bytes of envelope bodies kept in memory.
    pub fn body_bytes(&self) -> u64 {
        self.totals.body_bytes
    }

    /// The deposit id a new mailbox with recipient id `rid` gets.
    pub fn deposit_id_for(&self, rid: &RecipientId) -> DepositId {
        self.prf.deposit_id(rid)
    }

    fn get(&self, rid: &RecipientId) -> Option<&Mailbox> {
        self.mailboxes
            .get(&self.prf.deposit_id(rid))
            .filter(|m| m.record.recipient_id == *rid)
    }

    /// The mailbox with recipient id `rid`, mutably.
    pub fn get_mut(&mut self, rid: &RecipientId) -> Option<&mut Mailbox> {
        let did = self.prf.deposit_id(rid);
        self.mailboxes
            .get_mut(&did)
            .filter(|m| m.record.recipient_id == *rid)
    }

    /// Every mailbox's recipient id.
    pub fn recipient_ids(&self) -> Vec<RecipientId> {
        self.mailboxes
            .values()
            .map(|m| m.record.recipient_id)
            .collect()
    }

    /// Every mailbox's deposit id.
    pub fn deposit_ids(&self) -> Vec<DepositId> {
        self.mailboxes.keys().copied().collect()
    }

    /// Adds a mailbox.
    pub fn create(
        &mut self,
        record: MailboxRecord,
        quotas: &Quotas,
    ) -> Result<Arc<MailboxRecord>, StoreError> {
        if self.mailboxes.len() as u64 >= quotas.max_mailboxes {
            return Err(StoreError::TooManyMailboxes(quotas.max_mailboxes));
        }
        if record.deposit_id != self.prf.deposit_id(&record.recipient_id) {
            return Err(StoreError::Backend(
                "deposit id not derived from the recipient id".into(),
            ));
        }
        if self.mailboxes.contains_key(&record.deposit_id) {
            return Err(StoreError::Exists);
        }
        let rec = Arc::new(record);
        self.insert(Mailbox::new(rec.clone(), 1));
        Ok(rec)
    }

    /// Inserts a recovered mailbox.
    pub fn insert(&mut self, m: Mailbox) {
        self.totals.envelopes += m.held() as u64;
        self.totals.bytes += m.bytes();
        self.mailboxes.insert(m.record.deposit_id, m);
    }

    /// Mailbox records by deposit id.
    pub fn lookup_deposit(&self, ids: &[DepositId]) -> Vec<Option<Arc<MailboxRecord>>> {
        ids.iter()
            .map(|d| self.mailboxes.get(d).map(|m| m.record.clone()))
            .collect()
    }

    /// A mailbox record by recipient id.
    pub fn mailbox(&self, recipient_id: &RecipientId) -> Option<Arc<MailboxRecord>> {
        self.get(recipient_id).map(|m| m.record.clone())
    }

    /// Removes a mailbox; returns it.
    pub fn delete(&mut self, recipient_id: &RecipientId) -> Option<Mailbox> {
        let did = self.prf.deposit_id(recipient_id);
        if self.mailboxes.get(&did)?.record.recipient_id != *recipient_id {
            return None;
        }
        let m = self.mailboxes.remove(&did)?;
        if let Some(a) = &m.active {
            a.queue.iter().for_each(|h| self.totals.remove(h));
        }
        Some(m)
    }

    /// Applies a batch (`digests[i]` is `digest(&batch[i].envelope)`, computed by the caller
    /// outside its lock): outcomes per item, and what was newly stored. `keep_bodies` keeps the
    /// envelopes in memory, up to the body limit. With `durable` they are deliverable at once (memory store);
    /// otherwise the caller calls [`Index::mark_durable`] once they are on disk.
    pub fn append(
        &mut self,
        batch: &[Append],
        digests: &[Digest],
        quotas: &Quotas,
        keep_bodies: bool,
        durable: bool,
    ) -> (Vec<AppendOutcome>, Vec<Stored>) {
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(batch.len());
        let mut stored = Vec::new();
        for ((item, a), digest) in batch.iter().enumerate().zip(digests) {
            let Some(m) = self.mailboxes.get_mut(&a.deposit_id) else {
                out.push(AppendOutcome::UnknownMailbox);
                continue;
            };
            if let Some(known) = m.seen(&a.nonce, digest) {
                out.push(known);
                continue;
            }
            let len = a.envelope.len() as u64;
            if m.held() as u64 >= quotas.max_envelopes as u64 || m.bytes() + len > quotas.max_bytes
            {
                out.push(AppendOutcome::MailboxFull);
                continue;
            }
            let seq = m.next_seq;
            m.next_seq += 1;
            if durable {
                let a = m.active_mut();
                a.durable_high = a.durable_high.max(seq);
            }
            let keep = keep_bodies && self.totals.body_bytes + len <= self.body_limit;
            if keep {
                self.totals.body_bytes += len;
            }
            let act = m.active_mut();
            act.seen.insert(a.nonce, Some(*digest));
            act.bytes += len;
            act.queue.push_back(Held {
                seq,
                nonce: a.nonce,
                stored_at: now,
                len: len as u32,
                body: keep.then(|| a.envelope.clone()),
                durable,
            });
            self.totals.envelopes += 1;
            self.totals.bytes += len;
            let rid = m.record.recipient_id;
            stored.push(Stored {
                recipient_id: rid,
                seq,
                nonce: a.nonce,
                stored_at: now,
                item,
            });
            out.push(AppendOutcome::Stored(seq));
        }
        (out, stored)
    }

    /// Marks newly stored envelopes deliverable.
    pub fn mark_durable(&mut self, stored: &[Stored]) {
        for s in stored {
            if let Some(m) = self.get_mut(&s.recipient_id) {
                // Recent appends sit at the back of the queue.
                if let Some(a) = m.active.as_mut() {
                    a.durable_high = a.durable_high.max(s.seq);
                    if let Some(h) = a.queue.iter_mut().rev().find(|h| h.seq == s.seq) {
                        h.durable = true;
                    }
                }
            }
        }
    }

    /// Takes back envelopes [`Index::append`] added whose write then failed, so that the
    /// totals (and the gauges drawn from them) count only what the store holds, the nonces
    /// may be deposited again, and nothing undeliverable blocks the queue. Their sequence
    /// numbers are not reused: a gap is harmless, a reused number is not.
    pub fn unappend(&mut self, stored: &[Stored]) {
        for s in stored {
            let did = self.prf.deposit_id(&s.recipient_id);
            let Some(m) = self.mailboxes.get_mut(&did) else {
                continue;
            };
            let Some(a) = m.active.as_mut() else {
                continue;
            };
            let Some(at) = a.queue.iter().rposition(|h| h.seq == s.seq && !h.durable) else {
                continue;
            };
            if let Some(h) = a.queue.remove(at) {
                a.bytes -= h.len as u64;
                a.seen.remove(&h.nonce);
                self.totals.remove(&h);
            }
        }
    }

    /// Wakes the subscribers of the mailboxes in `stored`.
    pub fn notify(&self, stored: &[Stored]) {
        let mut last: Option<RecipientId> = None;
        for s in stored {
            if last == Some(s.recipient_id) {
                continue;
            }
            last = Some(s.recipient_id);
            if let Some(m) = self.get(&s.recipient_id)
                && let Some(n) = m.active.as_ref().and_then(|a| a.notify.as_ref())
            {
                n.send_replace(m.next_seq - 1);
            }
        }
    }

    /// Held envelopes with `seq > after`, at most `max`: (seq, body if kept).
    pub fn pending_after(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Vec<(u64, Option<Bytes>)> {
        let Some(a) = self.get(recipient_id).and_then(|m| m.active.as_ref()) else {
            return Vec::new();
        };
        let start = a.queue.partition_point(|h| h.seq <= after);
        // Stop at the first envelope not yet durable: later ones wait for it, so that sequence
        // numbers go out in order and a cumulative ACK never covers an undelivered envelope.
        a.queue
            .range(start..)
            .take(max)
            .take_while(|h| h.durable)
            .map(|h| (h.seq, h.body.clone()))
            .collect()
    }

    /// Removes every held envelope with `seq <= upto`.
    pub fn ack(&mut self, recipient_id: &RecipientId, upto: u64, window: usize) -> Removal {
        let mut r = Removal::default();
        let did = self.prf.deposit_id(recipient_id);
        let Some(m) = self
            .mailboxes
            .get_mut(&did)
            .filter(|m| m.record.recipient_id == *recipient_id)
        else {
            return r;
        };
        while m.front().is_some_and(|h| h.seq <= upto && h.durable) {
            if let Some((h, digest)) = m.pop_front(window, &mut r.evicted) {
                r.removed.push(Removed {
                    recipient_id: *recipient_id,
                    seq: h.seq,
                    nonce: h.nonce,
                    digest,
                });
                self.totals.remove(&h);
            }
        }
        r
    }

    /// Removes every envelope stored before `cutoff`.
    pub fn expire(&mut self, cutoff: SystemTime, window: usize) -> Removal {
        let mut r = Removal::default();
        for m in self.mailboxes.values_mut() {
            let rid = m.record.recipient_id;
            while m.front().is_some_and(|h| h.stored_at < cutoff && h.durable) {
                if let Some((h, digest)) = m.pop_front(window, &mut r.evicted) {
                    r.removed.push(Removed {
                        recipient_id: rid,
                        seq: h.seq,
                        nonce: h.nonce,
                        digest,
                    });
                    self.totals.remove(&h);
                }
            }
        }
        r
    }

    /// When each mailbox's oldest held envelope was stored, for the mailboxes holding any,
    /// by deposit id: what the at-rest layer's sweep needs to tell which epochs are closed
    /// (a mailbox's envelopes are held in the order they were stored).
    pub fn held_heads(&self) -> Vec<(DepositId, SystemTime)> {
        self.mailboxes
            .iter()
            .filter_map(|(did, m)| m.front().map(|h| (*did, h.stored_at)))
            .collect()
    }

    /// Envelopes held in a mailbox.
    pub fn pending(&self, recipient_id: &RecipientId) -> u64 {
        self.get(recipient_id).map_or(0, |m| m.held() as u64)
    }

    /// The wake-up signal of a mailbox.
    pub fn watch(&mut self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        let m = self.get_mut(recipient_id)?;
        let high = m.next_seq - 1;
        let a = m.active_mut();
        Some(match &a.notify {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(high);
                a.notify = Some(tx);
                rx
            }
        })
    }

    /// Each mailbox's highest durable sequence number, for the mailboxes that have had any
    /// (the disk store's checkpoint).
    pub fn high_water_marks(&self) -> Vec<(RecipientId, u64)> {
        self.mailboxes
            .values()
            .filter_map(|m| {
                let high = m.active.as_ref()?.durable_high;
                (high > 0).then_some((m.record.recipient_id, high))
            })
            .collect()
    }

    /// Totals.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            mailboxes: self.mailboxes.len() as u64,
            envelopes: self.totals.envelopes,
            bytes: self.totals.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::Suite;
    use sealpost_core::keys::RecipientSecret;

    #[test]
    fn the_body_tail_stays_within_its_limit_and_empties_on_ack() {
        let prf = IdPrf::new([7; 16]);
        let mut index = Index::new(prf.clone(), 1);
        let quotas = Quotas {
            max_envelopes: 100,
            max_bytes: 1 << 20,
            max_mailboxes: 10,
            dedupe_window: 16,
        };
        let rid = [1u8; 16];
        let did = prf.deposit_id(&rid);
        let rec = MailboxRecord::new(
            rid,
            did,
            Suite::ChaCha20Poly1305,
            [2; 32],
            RecipientSecret([3; 32]),
        );
        index.create(rec, &quotas).unwrap();
        index.set_body_limit(250);
        let batch: Vec<Append> = (0..3u8)
            .map(|i| Append {
                deposit_id: did,
                nonce: [i; 12],
                envelope: Bytes::from(vec![i; 100]),
                not_after: None,
            })
            .collect();
        let digests: Vec<Digest> = batch.iter().map(|a| digest(&a.envelope)).collect();
        let (_, stored) = index.append(&batch, &digests, &quotas, true, false);
        assert_eq!(stored.len(), 3);
        // Two bodies fit under 250 bytes; the third is left to the store's disk.
        assert_eq!(index.body_bytes(), 200);
        index.mark_durable(&stored);
        let kept: Vec<bool> = index
            .pending_after(&rid, 0, 10)
            .iter()
            .map(|(_, b)| b.is_some())
            .collect();
        assert_eq!(kept, [true, true, false]);
        index.ack(&rid, 2, 16);
        assert_eq!(index.body_bytes(), 0);
        assert_eq!(index.stats().envelopes, 1);
        index.delete(&rid).unwrap();
        assert_eq!((index.stats().envelopes, index.body_bytes()), (0, 0));
    }
}
