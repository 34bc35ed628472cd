//! A volatile store in memory, for tests and benchmarks. Nothing survives a restart.

use super::{
    Append, AppendOutcome, MailboxRecord, Quotas, Store, StoreError, StoreStats, StoredEnvelope,
};
use async_trait::async_trait;
use bytes::Bytes;
use sealpost_core::suite::NONCE_LEN;
use sealpost_core::{DepositId, RecipientId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;

type Nonce = [u8; NONCE_LEN];

struct Held {
    seq: u64,
    nonce: Nonce,
    stored_at: SystemTime,
    envelope: Bytes,
}

struct Mailbox {
    record: Arc<MailboxRecord>,
    next_seq: u64,
    queue: VecDeque<Held>,
    bytes: u64,
    /// Nonces of held envelopes and of the most recently removed ones.
    seen: HashSet<Nonce>,
    /// Removed envelopes' nonces, oldest first, at most `dedupe_window`.
    removed: VecDeque<Nonce>,
    /// Created on the first `watch`, so idle mailboxes carry no channel.
    notify: Option<watch::Sender<u64>>,
}

impl Mailbox {
    fn forget(&mut self, nonce: Nonce, window: usize) {
        self.removed.push_back(nonce);
        while self.removed.len() > window {
            if let Some(old) = self.removed.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn pop_front(&mut self, window: usize) {
        if let Some(h) = self.queue.pop_front() {
            self.bytes -= h.envelope.len() as u64;
            self.forget(h.nonce, window);
        }
    }
}

#[derive(Default)]
struct Inner {
    by_recipient: HashMap<RecipientId, Mailbox>,
    by_deposit: HashMap<DepositId, RecipientId>,
    envelopes: u64,
    bytes: u64,
}

/// The in-memory store.
pub struct MemoryStore {
    quotas: Quotas,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counts possibly stale but the maps intact;
        // keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.by_recipient.len() as u64 >= self.quotas.max_mailboxes {
            return Err(StoreError::TooManyMailboxes(self.quotas.max_mailboxes));
        }
        if g.by_recipient.contains_key(&record.recipient_id)
            || g.by_deposit.contains_key(&record.deposit_id)
        {
            return Err(StoreError::Exists);
        }
        g.by_deposit.insert(record.deposit_id, record.recipient_id);
        g.by_recipient.insert(
            record.recipient_id,
            Mailbox {
                record: Arc::new(record),
                next_seq: 1,
                queue: VecDeque::new(),
                bytes: 0,
                seen: HashSet::new(),
                removed: VecDeque::new(),
                notify: None,
            },
        );
        Ok(())
    }

    async fn lookup_deposit(
        &self,
        ids: &[DepositId],
    ) -> Result<Vec<Option<Arc<MailboxRecord>>>, StoreError> {
        let g = self.lock();
        Ok(ids
            .iter()
            .map(|d| {
                g.by_deposit
                    .get(d)
                    .and_then(|r| g.by_recipient.get(r))
                    .map(|m| m.record.clone())
            })
            .collect())
    }

    async fn mailbox(
        &self,
        recipient_id: &RecipientId,
    ) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        Ok(self
            .lock()
            .by_recipient
            .get(recipient_id)
            .map(|m| m.record.clone()))
    }

    async fn delete_mailbox(&self, recipient_id: &RecipientId) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.by_recipient.remove(recipient_id) {
            Some(m) => {
                g.by_deposit.remove(&m.record.deposit_id);
                g.envelopes -= m.queue.len() as u64;
                g.bytes -= m.bytes;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        let q = self.quotas;
        let now = SystemTime::now();
        let mut g = self.lock();
        let inner = &mut *g;
        let mut out = Vec::with_capacity(batch.len());
        let mut touched: Vec<RecipientId> = Vec::new();
        for a in batch {
            let Some(rid) = inner.by_deposit.get(&a.deposit_id) else {
                out.push(AppendOutcome::UnknownMailbox);
                continue;
            };
            let Some(m) = inner.by_recipient.get_mut(rid) else {
                out.push(AppendOutcome::UnknownMailbox);
                continue;
            };
            if m.seen.contains(&a.nonce) {
                out.push(AppendOutcome::Duplicate);
                continue;
            }
            let len = a.envelope.len() as u64;
            if m.queue.len() as u64 >= q.max_envelopes as u64 || m.bytes + len > q.max_bytes {
                out.push(AppendOutcome::MailboxFull);
                continue;
            }
            let seq = m.next_seq;
            m.next_seq += 1;
            m.seen.insert(a.nonce);
            m.bytes += len;
            m.queue.push_back(Held {
                seq,
                nonce: a.nonce,
                stored_at: now,
                envelope: a.envelope.clone(),
            });
            inner.envelopes += 1;
            inner.bytes += len;
            if m.notify.is_some() && touched.last() != Some(rid) {
                touched.push(*rid);
            }
            out.push(AppendOutcome::Stored(seq));
        }
        for rid in touched {
            if let Some(m) = inner.by_recipient.get(&rid) {
                if let Some(n) = &m.notify {
                    n.send_replace(m.next_seq - 1);
                }
            }
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let g = self.lock();
        let Some(m) = g.by_recipient.get(recipient_id) else {
            return Ok(Vec::new());
        };
        // Sequence numbers in the queue ascend, so skip to the first one after `after`.
        let start = m.queue.partition_point(|h| h.seq <= after);
        Ok(m.queue
            .range(start..)
            .take(max)
            .map(|h| StoredEnvelope {
                seq: h.seq,
                envelope: h.envelope.clone(),
            })
            .collect())
    }

    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        let window = self.quotas.dedupe_window;
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(m) = inner.by_recipient.get_mut(recipient_id) else {
            return Ok(0);
        };
        let mut n = 0u64;
        let before = m.bytes;
        while m.queue.front().is_some_and(|h| h.seq <= upto) {
            m.pop_front(window);
            n += 1;
        }
        inner.envelopes -= n;
        inner.bytes -= before - m.bytes;
        Ok(n)
    }

    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .by_recipient
            .get(recipient_id)
            .map_or(0, |m| m.queue.len() as u64))
    }

    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        let mut g = self.lock();
        let m = g.by_recipient.get_mut(recipient_id)?;
        let high = m.next_seq - 1;
        Some(match &m.notify {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(high);
                m.notify = Some(tx);
                rx
            }
        })
    }

    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        let window = self.quotas.dedupe_window;
        let mut g = self.lock();
        let inner = &mut *g;
        let mut total = 0u64;
        let mut bytes = 0u64;
        for m in inner.by_recipient.values_mut() {
            let before = m.bytes;
            while m.queue.front().is_some_and(|h| h.stored_at < cutoff) {
                m.pop_front(window);
                total += 1;
            }
            bytes += before - m.bytes;
        }
        inner.envelopes -= total;
        inner.bytes -= bytes;
        Ok(total)
    }

    async fn stats(&self) -> StoreStats {
        let g = self.lock();
        StoreStats {
            mailboxes: g.by_recipient.len() as u64,
            envelopes: g.envelopes,
            bytes: g.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn rec(i: u8) -> MailboxRecord {
        MailboxRecord::new(
            [i; 16],
            [i + 100; 16],
            Suite::ChaCha20Poly1305,
            [1; 32],
            RecipientSecret([2; 32]),
        )
    }

    fn app(i: u8, nonce: u8, len: usize) -> Append {
        Append {
            deposit_id: [i + 100; 16],
            nonce: [nonce; 12],
            envelope: Bytes::from(vec![nonce; len]),
        }
    }

    #[tokio::test]
    async fn append_dedupe_quota_ack_expire() {
        let s = MemoryStore::new(quotas());
        s.create_mailbox(rec(1)).await.unwrap();
        let mut w = s.watch(&[1; 16]).unwrap();
        let out = s
            .append_batch(&[
                app(1, 1, 10),
                app(1, 1, 10),
                app(2, 5, 10),
                app(1, 2, 10),
                app(1, 3, 10),
                app(1, 4, 10),
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
            s.append_batch(&[app(1, 1, 10)]).await.unwrap(),
            vec![Duplicate]
        );
        assert_eq!(
            s.append_batch(&[app(1, 9, 995)]).await.unwrap(),
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
            s.append_batch(&[app(1, 1, 10)]).await.unwrap(),
            vec![Stored(4)]
        );
    }

    #[tokio::test]
    async fn mailbox_limit_and_delete() {
        let s = MemoryStore::new(quotas());
        s.create_mailbox(rec(1)).await.unwrap();
        assert!(matches!(
            s.create_mailbox(rec(1)).await,
            Err(StoreError::Exists)
        ));
        s.create_mailbox(rec(2)).await.unwrap();
        assert!(matches!(
            s.create_mailbox(rec(3)).await,
            Err(StoreError::TooManyMailboxes(2))
        ));
        s.append_batch(&[app(1, 1, 10)]).await.unwrap();
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
        assert!(s.lookup_deposit(&[[101; 16]]).await.unwrap()[0].is_none());
    }
}
