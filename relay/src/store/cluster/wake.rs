//! Cross-relay wake-ups: a subscriber on this relay learns of a deposit made through any relay
//! from the mailbox's sharded pub/sub channel (SSUBSCRIBE), never by polling.
//!
//! One cluster connection (RESP3) carries every channel this relay watches. Pushes are handled
//! inline by the client's push callback, which only updates a `watch` channel, so nothing
//! queues. Subscribing and unsubscribing is done by one task that reconciles the set of
//! channels it is subscribed to with the set of mailboxes someone watches, whenever that set
//! changes: a `Notify`, not a queue, so it is bounded by the number of watched mailboxes.
//!
//! A wake-up can be lost while a node fails over or a connection is re-established; the client
//! resubscribes by itself and reports it (an `ssubscribe` push), and the store then wakes every
//! watcher, whose subscription re-reads from its cursor: a lost wake-up costs one fetch.

use super::keys::{MailboxKeys, recipient_of};
use crate::store::ClaimEnd;
use redis::{PushInfo, PushKind, Value};
use sealpost_core::RecipientId;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// The watched mailboxes, shared by the store, the push callback and the subscribing task.
#[derive(Default)]
pub struct Wakes {
    watched: Mutex<HashMap<RecipientId, watch::Sender<u64>>>,
    /// Subscriber claims held on this relay: (epoch, kicked) per mailbox.
    claims: Mutex<HashMap<RecipientId, Vec<Claim>>>,
    /// Set when a (re)subscription may have missed kicks: claims' epochs are read again.
    recheck: std::sync::atomic::AtomicBool,
    changed: Notify,
}

/// A claim's epoch and the signal that ends it.
type Claim = (u64, watch::Sender<Option<ClaimEnd>>);

/// The message `sp_delete` publishes on a deleted mailbox's channel: every claim on it ends.
const DELETED: &[u8] = b"d";

/// A kick message on a mailbox channel: `k<epoch>` (deposits publish bare numbers).
fn kick_epoch(msg: &[u8]) -> Option<u64> {
    std::str::from_utf8(msg.strip_prefix(b"k")?)
        .ok()?
        .parse()
        .ok()
}

impl Wakes {
    fn lock(&self) -> MutexGuard<'_, HashMap<RecipientId, watch::Sender<u64>>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver woken on every deposit into `rid`; subscribes the relay to the mailbox's
    /// channel if no one here watched it yet.
    pub fn watch(&self, rid: &RecipientId) -> watch::Receiver<u64> {
        let mut g = self.lock();
        if let Some(tx) = g.get(rid) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(0);
        g.insert(*rid, tx);
        drop(g);
        self.changed.notify_one();
        rx
    }

    /// Records this relay's claim `epoch` on `rid`; the receiver is set once a newer claim
    /// (on any relay) or the mailbox's deletion ends it.
    pub fn claim(&self, rid: &RecipientId, epoch: u64) -> watch::Receiver<Option<ClaimEnd>> {
        let (tx, rx) = watch::channel(None);
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*rid)
            .or_default()
            .push((epoch, tx));
        rx
    }

    /// Ends this relay's claims on `rid` older than `epoch` (for this reason), forgetting
    /// released ones.
    pub fn kick_before(&self, rid: &RecipientId, epoch: u64, why: ClaimEnd) {
        let mut g = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(rid) {
            v.retain(|(e, tx)| {
                if *e < epoch {
                    tx.send_replace(Some(why));
                    return false;
                }
                !tx.is_closed()
            });
            if v.is_empty() {
                g.remove(rid);
            }
        }
    }

    /// Forgets the claims on `rid` that nobody holds any more.
    fn release(&self, rid: &RecipientId) {
        let mut g = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(rid) {
            v.retain(|(_, tx)| !tx.is_closed());
            if v.is_empty() {
                g.remove(rid);
            }
        }
    }

    /// Mailboxes with claims on this relay.
    pub fn claimed(&self) -> Vec<RecipientId> {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Handles one push from the subscription connection.
    pub fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(msg))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return;
                };
                if let (Some(rid), Some(epoch)) = (recipient_of(ch), kick_epoch(msg)) {
                    self.kick_before(&rid, epoch, ClaimEnd::Replaced);
                    return;
                }
                if msg.as_slice() == DELETED {
                    if let Some(rid) = recipient_of(ch) {
                        self.kick_before(&rid, u64::MAX, ClaimEnd::Deleted);
                    }
                    return;
                }
                let (Some(rid), Some(seq)) = (
                    recipient_of(ch),
                    std::str::from_utf8(msg)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok()),
                ) else {
                    return;
                };
                if let Some(tx) = self.lock().get(&rid) {
                    tx.send_if_modified(|high| {
                        let newer = seq > *high;
                        *high = (*high).max(seq);
                        newer
                    });
                }
            }
            // A (re)subscription or a lost connection: wake everyone to re-read from their
            // cursors, since deposits in between may have published to no one.
            PushKind::SSubscribe | PushKind::Disconnection => {
                for tx in self.lock().values() {
                    tx.send_modify(|_| {});
                }
                // A kick may have been missed too: the task reads the epochs again.
                self.recheck
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.changed.notify_one();
            }
            _ => {}
        }
    }

    /// The channels to subscribe to and to leave, forgetting mailboxes no one watches now.
    fn reconcile(&self, subscribed: &HashSet<RecipientId>) -> (Vec<RecipientId>, Vec<RecipientId>) {
        let mut g = self.lock();
        g.retain(|_, tx| tx.receiver_count() > 0);
        let join = g
            .keys()
            .filter(|r| !subscribed.contains(*r))
            .copied()
            .collect();
        let leave = subscribed
            .iter()
            .filter(|r| !g.contains_key(*r))
            .copied()
            .collect();
        (join, leave)
    }

    /// Asks the subscribing task to look again (a watcher went away).
    pub fn nudge(&self) {
        self.changed.notify_one();
    }
}

/// What a subscriber claim keeps while it lives: the mailbox's channel subscription (kicks
/// arrive on it). Dropping it forgets the claim, so that a relay's claims stay as many as its
/// live subscriptions.
pub struct ClaimHold {
    wakes: std::sync::Weak<Wakes>,
    rid: RecipientId,
    _wake: watch::Receiver<u64>,
}

impl ClaimHold {
    /// Holds `wake` (the mailbox's wake-up signal) for the claim on `rid`.
    pub fn new(
        wakes: &std::sync::Arc<Wakes>,
        rid: RecipientId,
        wake: watch::Receiver<u64>,
    ) -> Self {
        Self {
            wakes: std::sync::Arc::downgrade(wakes),
            rid,
            _wake: wake,
        }
    }
}

impl Drop for ClaimHold {
    fn drop(&mut self) {
        if let Some(w) = self.wakes.upgrade() {
            // The claim's receiver went with it (it is dropped before its hold).
            w.release(&self.rid);
        }
    }
}

/// Ends the claims whose mailbox has a newer epoch (or is gone).
async fn recheck_claims(w: &Wakes, conn: &mut redis::cluster_async::ClusterConnection) {
    for rid in w.claimed() {
        let epoch: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(&MailboxKeys::new(&rid).keys[0])
            .arg("sub")
            .query_async(conn)
            .await;
        match epoch {
            Ok(Some(e)) => w.kick_before(&rid, e, ClaimEnd::Replaced),
            // The mailbox is gone: every claim on it is over.
            Ok(None) => w.kick_before(&rid, u64::MAX, ClaimEnd::Deleted),
            Err(_) => w.recheck.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Keeps `conn`'s subscriptions matching the watched mailboxes until the store is dropped.
pub async fn run(wakes: std::sync::Weak<Wakes>, mut conn: redis::cluster_async::ClusterConnection) {
    let mut subscribed: HashSet<RecipientId> = HashSet::new();
    loop {
        let Some(w) = wakes.upgrade() else { return };
        let (join, leave) = w.reconcile(&subscribed);
        let notified = w.changed.notified();
        tokio::pin!(notified);
        // Register interest before working, so a change during the work is not missed.
        notified.as_mut().enable();
        let mut recheck = w.recheck.swap(false, std::sync::atomic::Ordering::Relaxed);
        for rid in join {
            match conn.ssubscribe(MailboxKeys::new(&rid).channel()).await {
                Ok(()) => {
                    subscribed.insert(rid);
                    recheck = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster store: SSUBSCRIBE failed; retrying");
                }
            }
        }
        for rid in leave {
            if conn
                .sunsubscribe(MailboxKeys::new(&rid).channel())
                .await
                .is_ok()
            {
                subscribed.remove(&rid);
            }
        }
        // Kicks published before a channel was subscribed reached no one here: compare the
        // claims with the mailboxes' current epochs.
        if recheck {
            recheck_claims(&w, &mut conn).await;
        }
        // A failed subscription is retried after a pause; otherwise wait for a change, and
        // look now and then for watchers that went away without a nudge. (`w` is held for
        // at most that second: the store's drop ends this task at the next look.)
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SubscriberClaim;
    use std::sync::Arc;

    fn claim(w: &Arc<Wakes>, rid: RecipientId, epoch: u64) -> SubscriberClaim {
        let kicked = w.claim(&rid, epoch);
        SubscriberClaim::new(epoch, kicked, ClaimHold::new(w, rid, w.watch(&rid)))
    }

    #[test]
    fn a_kick_ends_older_claims_only_and_a_dropped_claim_is_forgotten() {
        let w = Arc::new(Wakes::default());
        let rid = [1; 16];
        let old = claim(&w, rid, 1);
        let new = claim(&w, rid, 2);
        let other = claim(&w, [2; 16], 1);
        w.kick_before(&rid, 2, ClaimEnd::Replaced);
        assert_eq!(*old.kicked.borrow(), Some(ClaimEnd::Replaced));
        assert_eq!(*new.kicked.borrow(), None);
        assert_eq!(*other.kicked.borrow(), None);
        // Claims that end without a kick (the subscriber left) do not stay behind.
        drop(old);
        drop(new);
        assert_eq!(w.claimed(), vec![[2; 16]]);
        drop(other);
        assert!(w.claimed().is_empty());
    }
}
