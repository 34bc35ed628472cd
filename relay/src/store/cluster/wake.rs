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
use redis::{PushInfo, PushKind, Value};
use sealpost_core::RecipientId;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// The watched mailboxes, shared by the store, the push callback and the subscribing task.
#[derive(Default)]
pub struct Wakes {
    watched: Mutex<HashMap<RecipientId, watch::Sender<u64>>>,
    changed: Notify,
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

    /// Handles one push from the subscription connection.
    pub fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(msg))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return;
                };
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
        for rid in join {
            match conn.ssubscribe(MailboxKeys::new(&rid).channel()).await {
                Ok(()) => {
                    subscribed.insert(rid);
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
        // A failed subscription is retried after a pause; otherwise wait for a change, and
        // look now and then for watchers that went away without a nudge. (`w` is held for
        // at most that second: the store's drop ends this task at the next look.)
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
