//! A volatile store in memory, for tests and benchmarks. Nothing survives a restart.

use super::index::{IdPrf, Index, digest};
use super::{
    Append, AppendOutcome, HeldHeads, MailboxRecord, Quotas, Store, StoreError, StoreStats,
    StoredEnvelope,
};
use async_trait::async_trait;
use sealpost_core::{DepositId, RecipientId};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;

/// The in-memory store.
pub struct MemoryStore {
    quotas: Quotas,
    inner: Mutex<Index>,
}

impl MemoryStore {
    /// An empty store enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            inner: Mutex::new(Index::new(
                IdPrf::random().expect("the OS random source works at start-up"),
                0,
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves counts possibly stale but the maps intact;
        // keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError> {
        self.lock().create(record, &self.quotas).map(|_| ())
    }

    fn deposit_id_for(&self, recipient_id: &RecipientId) -> DepositId {
        self.lock().deposit_id_for(recipient_id)
    }

    async fn lookup_deposit(
        &self,
        ids: &[DepositId],
    ) -> Result<Vec<Option<Arc<MailboxRecord>>>, StoreError> {
        Ok(self.lock().lookup_deposit(ids))
    }

    async fn mailbox(
        &self,
        recipient_id: &RecipientId,
    ) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        Ok(self.lock().mailbox(recipient_id))
    }

    async fn delete_mailbox(&self, recipient_id: &RecipientId) -> Result<bool, StoreError> {
        Ok(self.lock().delete(recipient_id).is_some())
    }

    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        let digests: Vec<_> = batch.iter().map(|a| digest(&a.envelope)).collect();
        let mut g = self.lock();
        let (out, stored) = g.append(batch, &digests, &self.quotas, true, true);
        g.notify(&stored);
        Ok(out)
    }

    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        Ok(self
            .lock()
            .pending_after(recipient_id, after, max)
            .into_iter()
            .filter_map(|(seq, body)| body.map(|envelope| StoredEnvelope { seq, envelope }))
            .collect())
    }

    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .ack(recipient_id, upto, self.quotas.dedupe_window)
            .removed
            .len() as u64)
    }

    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError> {
        Ok(self.lock().pending(recipient_id))
    }

    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        self.lock().watch(recipient_id)
    }

    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .expire(cutoff, self.quotas.dedupe_window)
            .removed
            .len() as u64)
    }

    async fn held_heads(&self) -> Result<Option<HeldHeads>, StoreError> {
        // The clock before the lock: an append that returned before it is in the listing.
        let started = SystemTime::now();
        Ok(Some(HeldHeads {
            started,
            heads: self.lock().held_heads(),
        }))
    }

    async fn stats(&self) -> StoreStats {
        self.lock().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sealpost_core::Suite;
    use sealpost_core::keys::RecipientSecret;

    fn quotas() -> Quotas {
        Quotas {
            max_envelopes: 3,
            max_bytes: 1000,
            max_mailboxes: 2,
            dedupe_window: 2,
        }
    }

    fn rec(s: &MemoryStore, i: u8) -> MailboxRecord {
        MailboxRecord::new(
            [i; 16],
            s.deposit_id_for(&[i; 16]),
            Suite::ChaCha20Poly1305,
            [1; 32],
            RecipientSecret([2; 32]),
        )
    }

    fn app(s: &MemoryStore, i: u8, nonce: u8, len: usize) -> Append {
        Append {
            deposit_id: s.deposit_id_for(&[i; 16]),
            nonce: [nonce; 12],
            envelope: Bytes::from(vec![nonce; len]),
            not_after: None,
        }
    }

    #[tokio::test]
    async fn append_dedupe_quota_ack_expire() {
        let s = MemoryStore::new(quotas());
        s.create_mailbox(rec(&s, 1)).await.unwrap();
        let mut w = s.watch(&[1; 16]).unwrap();
        let out = s
            .append_batch(&[
                app(&s, 1, 1, 10),
                app(&s, 1, 1, 10),
                app(&s, 2, 5, 10),
                app(&s, 1, 2, 10),
                app(&s, 1, 3, 10),
                app(&s, 1, 4, 10),
            ])
            .await
            .unwrap();
        use AppendOutcome::*;
        assert_eq!(
            out,
            vec![
                Stored(1),
                Duplicate,
                UnknownMailbox,
                Stored(2),
                Stored(3),
                MailboxFull
            ]
        );
        assert!(w.has_changed().unwrap());
        assert_eq!(*w.borrow_and_update(), 3);
        assert_eq!(s.fetch(&[1; 16], 1, 10).await.unwrap().len(), 2);
        assert_eq!(s.ack(&[1; 16], 2).await.unwrap(), 2);
        assert_eq!(s.stats().await.envelopes, 1);
        // Acknowledged nonces stay duplicates within the window.
        assert_eq!(
            s.append_batch(&[app(&s, 1, 1, 10)]).await.unwrap(),
            vec![Duplicate]
        );
        assert_eq!(
            s.append_batch(&[app(&s, 1, 9, 995)]).await.unwrap(),
            vec![MailboxFull]
        );
        assert_eq!(
            s.expire(SystemTime::now() + std::time::Duration::from_secs(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.stats().await,
            StoreStats {
                mailboxes: 1,
                envelopes: 0,
                bytes: 0
            }
        );
        // Window of 2: nonce 1 (removed first) has been forgotten by now.
        assert_eq!(
            s.append_batch(&[app(&s, 1, 1, 10)]).await.unwrap(),
            vec![Stored(4)]
        );
    }

    #[tokio::test]
    async fn a_reused_nonce_with_other_content_is_not_a_duplicate() {
        use AppendOutcome::*;
        let s = MemoryStore::new(quotas());
        s.create_mailbox(rec(&s, 1)).await.unwrap();
        let first = app(&s, 1, 1, 10);
        let mut other = first.clone();
        other.envelope = Bytes::from(vec![0xEE; 10]);
        // Within one batch as well as across batches.
        assert_eq!(
            s.append_batch(&[first.clone(), other.clone(), first.clone()])
                .await
                .unwrap(),
            vec![Stored(1), IdReused, Duplicate]
        );
        // After the ack the dedupe window still tells them apart.
        assert_eq!(s.ack(&[1; 16], 1).await.unwrap(), 1);
        assert_eq!(
            s.append_batch(&[other, first]).await.unwrap(),
            vec![IdReused, Duplicate]
        );
        assert_eq!(s.stats().await.envelopes, 0, "nothing stored twice");
    }

    #[tokio::test]
    async fn mailbox_limit_and_delete() {
        let s = MemoryStore::new(quotas());
        s.create_mailbox(rec(&s, 1)).await.unwrap();
        assert!(matches!(
            s.create_mailbox(rec(&s, 1)).await,
            Err(StoreError::Exists)
        ));
        s.create_mailbox(rec(&s, 2)).await.unwrap();
        assert!(matches!(
            s.create_mailbox(rec(&s, 3)).await,
            Err(StoreError::TooManyMailboxes(2))
        ));
        s.append_batch(&[app(&s, 1, 1, 10)]).await.unwrap();
        assert!(s.delete_mailbox(&[1; 16]).await.unwrap());
        assert!(!s.delete_mailbox(&[1; 16]).await.unwrap());
        assert_eq!(
            s.stats().await,
            StoreStats {
                mailboxes: 1,
                envelopes: 0,
                bytes: 0
            }
        );
        assert!(
            s.lookup_deposit(&[s.deposit_id_for(&[1; 16])])
                .await
                .unwrap()[0]
                .is_none()
        );
    }
}
