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
//!
//! Except after a primary dies: the client's slot-map refresh that follows the loss comes
//! before the replica is promoted, so the client moves the dead node's channels nowhere, and
//! nothing makes it look again (and `SSUBSCRIBE` answers Ok even for a channel whose node is
//! gone: it is only recorded). So after any lost connection the subscribing task replaces the
//! whole connection with a new one, once every primary that serves slots in `CLUSTER NODES`
//! answers and none is flagged failing (the failover is over), and subscribes to every channel
//! again there (found by `sealpost-loadtest chaos --store cluster`: without it subscriptions
//! stayed silent after most failovers).

use super::keys::{MailboxKeys, recipient_of};
use crate::store::ClaimEnd;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushInfo, PushKind, Value};
use sealpost_core::RecipientId;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The watched mailboxes, shared by the store, the push callback and the subscribing task.
#[derive(Default)]
pub struct Wakes {
    watched: Mutex<HashMap<RecipientId, watch::Sender<u64>>>,
    /// Subscriber claims held on this relay: (epoch, kicked) per mailbox.
    claims: Mutex<HashMap<RecipientId, Vec<Claim>>>,
    /// Set when a (re)subscription may have missed kicks: claims' epochs are read again.
    recheck: std::sync::atomic::AtomicBool,
    /// Set when the subscription connection lost a node: it is to be replaced (see `run`).
    replace: AtomicBool,
    /// Which subscription connection is current: pushes of replaced ones are ignored.
    generation: AtomicU64,
    changed: Notify,
}

/// Makes a subscription connection whose pushes are tagged with the given generation.
pub type Connector = Arc<
    dyn Fn(u64) -> Pin<Box<dyn Future<Output = redis::RedisResult<ClusterConnection>> + Send>>
        + Send
        + Sync,
>;

/// How the store makes its subscription connections: RESP3 to `urls`, pushes to `wakes`.
pub fn subscription_connector(urls: Vec<String>, wakes: Weak<Wakes>) -> Connector {
    Arc::new(move |generation| {
        let (urls, wakes) = (urls.clone(), wakes.clone());
        Box::pin(async move {
            ClusterClientBuilder::new(urls)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(Duration::from_secs(2))
                .push_sender(move |push: PushInfo| {
                    if let Some(w) = wakes.upgrade() {
                        w.on_push(generation, push);
                    }
                    Ok::<(), std::convert::Infallible>(())
                })
                .build()?
                .get_async_connection()
                .await
        })
    })
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

    /// The current subscription connection's generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Handles one push from the subscription connection of `generation`.
    pub fn on_push(&self, generation: u64, push: PushInfo) {
        if generation != self.generation() {
            // A replaced connection going away.
            return;
        }
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
                if push.kind == PushKind::Disconnection {
                    self.replace.store(true, Ordering::Relaxed);
                }
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

/// A new subscription connection of the next generation, once the cluster has a reachable
/// primary for every slot: a failover is over. The check comes first and the connection (which
/// learns the slot map as it connects) after, so that its map is the one checked.
async fn replacement(w: &Wakes, connect: &Connector) -> Option<ClusterConnection> {
    // The probe's pushes are never current: its going away must not look like a lost node.
    let mut probe = tokio::time::timeout(Duration::from_secs(5), connect(u64::MAX))
        .await
        .ok()?
        .ok()?;
    let nodes = redis::cmd("CLUSTER").arg("NODES").clone();
    let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let text = match tokio::time::timeout(Duration::from_secs(2), probe.route_command(nodes, any))
        .await
        .ok()?
        .ok()?
    {
        Value::BulkString(b) => String::from_utf8(b).ok()?,
        Value::VerbatimString { text, .. } => text,
        _ => return None,
    };
    for (host, port) in slot_owners(&text)? {
        let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        tokio::time::timeout(
            Duration::from_secs(1),
            probe.route_command(redis::cmd("PING"), at),
        )
        .await
        .ok()?
        .ok()?;
    }
    drop(probe);
    tokio::time::timeout(Duration::from_secs(5), connect(w.generation() + 1))
        .await
        .ok()?
        .ok()
}

/// The addresses of the primaries that serve slots, from `CLUSTER NODES`; `None` when one of
/// them is flagged failing (or the text cannot be read).
fn slot_owners(text: &str) -> Option<Vec<(String, u16)>> {
    let mut owners = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // <id> <ip:port@bus[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            return None;
        };
        if !flags.split(',').any(|x| x == "master") || f.len() <= 8 {
            continue;
        }
        if flags.split(',').any(|x| x == "fail" || x == "fail?") {
            return None;
        }
        let hostport = addr.split(['@', ',']).next()?;
        let (host, port) = hostport.rsplit_once(':')?;
        owners.push((host.to_owned(), port.parse().ok()?));
    }
    (!owners.is_empty()).then_some(owners)
}

/// Keeps `conn`'s subscriptions matching the watched mailboxes until the store is dropped,
/// replacing `conn` (made by `connect`) after it lost a node.
pub async fn run(wakes: Weak<Wakes>, mut conn: ClusterConnection, connect: Connector) {
    let mut subscribed: HashSet<RecipientId> = HashSet::new();
    loop {
        let Some(w) = wakes.upgrade() else { return };
        if w.replace.load(Ordering::Relaxed) {
            // Until a new connection reaches every primary (the failover is over), looked at
            // again each second.
            if let Some(fresh) = replacement(&w, &connect).await {
                w.generation.fetch_add(1, Ordering::Relaxed);
                w.replace.store(false, Ordering::Relaxed);
                conn = fresh;
                // Every watched channel is joined on the new connection; the `ssubscribe`
                // pushes wake every watcher to re-read from its cursor.
                subscribed.clear();
                tracing::info!("cluster store: subscription connection replaced after a lost node");
            }
        }
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
    fn slot_owners_are_read_from_cluster_nodes() {
        let ok = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                  b 127.0.0.1:7003@17003 slave a 0 1 4 connected\n\
                  c 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922\n\
                  d 127.0.0.1:7005@17005 master,fail - 0 1 6 disconnected\n";
        assert_eq!(
            slot_owners(ok),
            Some(vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)])
        );
        let failing = "a 127.0.0.1:7000@17000 master,fail? - 0 0 1 disconnected 0-5460\n";
        assert_eq!(slot_owners(failing), None);
        assert_eq!(slot_owners(""), None);
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
