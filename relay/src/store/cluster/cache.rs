//! Mailbox records by deposit id, kept for a while on each relay, so that a deposit into a
//! mailbox seen recently costs no lookup round trips (the deposit-id key, then the record)
//! and no unsealing of its secrets.
//!
//! Why a cache is safe here although other relays may delete the mailbox meanwhile: a record
//! never changes while its mailbox lives (it is written once by `sp_create`), and a deposit id
//! can only ever name one recipient id (it is a keyed PRF of it, `keys.rs`). The only change a
//! cached record can miss is a deletion, and every operation that acts on the mailbox finds
//! that out atomically on the server: `sp_deposit` answers "no such mailbox", `sp_claim` 0, a
//! fetch nothing. A stale hit therefore costs a tag verification, never a wrong answer. The
//! time limit bounds how long a deleted mailbox's keys stay in the memory of relays that did
//! not delete it; the size limit bounds the memory.

use crate::store::MailboxRecord;
use sealpost_core::DepositId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Records kept at most.
const CAPACITY: usize = 32_768;
/// How long a record is kept after it was read from the cluster.
const TTL: Duration = Duration::from_secs(30);

/// The cache (see the module documentation).
#[derive(Default)]
pub struct RecordCache {
    map: Mutex<HashMap<DepositId, (Arc<MailboxRecord>, Instant)>>,
}

impl RecordCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<DepositId, (Arc<MailboxRecord>, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of the mailbox with deposit id `id`, if read within [`TTL`].
    pub fn get(&self, id: &DepositId) -> Option<Arc<MailboxRecord>> {
        let mut map = self.lock();
        match map.get(id) {
            Some((rec, at)) if at.elapsed() < TTL => Some(rec.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Keeps `rec` (just read from the cluster). When full, records past their time go first;
    /// if none are, everything goes (the next deposits read their records again).
    pub fn insert(&self, rec: Arc<MailboxRecord>) {
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.retain(|_, (_, at)| at.elapsed() < TTL);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(rec.deposit_id, (rec, Instant::now()));
    }

    /// Forgets the mailbox with deposit id `id` (deleted through this relay).
    pub fn forget(&self, id: &DepositId) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::Suite;
    use sealpost_core::keys::RecipientSecret;

    /// A record whose deposit id is `n` in its first bytes.
    fn record(n: u64) -> Arc<MailboxRecord> {
        let mut rec = MailboxRecord::new(
            [1; 16],
            [0; 16],
            Suite::ChaCha20Poly1305,
            [2; 32],
            RecipientSecret([3; 32]),
        );
        rec.deposit_id[..8].copy_from_slice(&n.to_le_bytes());
        Arc::new(rec)
    }

    #[test]
    fn keeps_forgets_and_stays_bounded() {
        let c = RecordCache::default();
        let r = record(1);
        assert!(c.get(&r.deposit_id).is_none());
        c.insert(r.clone());
        assert_eq!(
            c.get(&r.deposit_id).map(|x| x.deposit_id),
            Some(r.deposit_id)
        );
        c.forget(&r.deposit_id);
        assert!(c.get(&r.deposit_id).is_none());
        for i in 0..=CAPACITY as u64 {
            c.insert(record(i));
        }
        assert!(c.lock().len() <= CAPACITY);
    }
}
