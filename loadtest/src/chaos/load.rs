//! The load of a chaos run: depositors that keep sending (new envelopes, and again those whose
//! attempt got no answer or UNAVAILABLE, byte for byte), and one recipient per mailbox that
//! verifies and acknowledges what is delivered. Both ride out relay kills through the client
//! library: a deposit is sent again on a new connection, to another relay if there is one,
//! and a subscription resumes from its acknowledged position.

use super::ledger::{Key, Outcome, Shared, lock};
use crate::message::{self, Stamp};
use bytes::Bytes;
use sealpost_client::{Client, Mailbox};
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::Invitation;
use sealpost_core::padding::SizeClasses;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Pause before an envelope is sent again after UNAVAILABLE or no answer: the store or relay
/// is recovering, and a tight loop would only add load.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Longest wait for one attempt's answer (the client library itself keeps trying to reach a
/// relay for 10 s): beyond it the attempt counts as unanswered and is made again.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(20);

/// How long a subscription keeps trying to reach a relay again before the recipient starts a
/// new one.
const RESUME_PATIENCE: Duration = Duration::from_secs(20);

/// Unacknowledged deliveries per subscription.
const WINDOW: u32 = 64;

/// Envelopes pending at most (sent, neither stored nor refused): while a store is failing
/// over, deposits to its mailboxes pile up; beyond this the depositors only send again.
pub const MAX_PENDING: usize = 20_000;

/// What every depositor needs.
pub struct DepositPlan {
    /// One invitation per mailbox.
    pub invitations: Vec<Invitation>,
    /// The relays' size classes.
    pub sizes: SizeClasses,
    /// This run's id, in every message.
    pub run_id: u64,
    /// Content length that fills the body size.
    pub content_len: usize,
}

/// One depositor: sends until `draining` is set, then only what is pending, and returns when
/// nothing is pending.
pub async fn depositor(
    client: Arc<Client>,
    plan: Arc<DepositPlan>,
    ledger: Shared,
    draining: Arc<AtomicBool>,
) {
    let engine = Engine::ring();
    loop {
        let (retry, new) = {
            let mut l = lock(&ledger);
            match l.take_retry() {
                Some(r) => (Some(r), None),
                None if !draining.load(Ordering::Relaxed) => (None, l.next_new(MAX_PENDING)),
                None => (None, None),
            }
        };
        let (key, env) = match (retry, new) {
            (Some(r), _) => r,
            (None, Some(key)) => match seal(&engine, &plan, key) {
                Some(env) => {
                    lock(&ledger).sending(key, env.clone());
                    (key, env)
                }
                // Sealing needs only memory and randomness: nothing to carry on with.
                None => return,
            },
            (None, None) => {
                if draining.load(Ordering::Relaxed) && lock(&ledger).pending() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let sent_s = lock(&ledger).now_s();
        let outcome = match tokio::time::timeout(ATTEMPT_LIMIT, client.deposit(env)).await {
            Ok(Ok(status)) => Outcome::of(status),
            Ok(Err(_)) | Err(_) => Outcome::Unanswered,
        };
        lock(&ledger).answered(key, sent_s, outcome, RETRY_PAUSE);
        if outcome.retried() {
            // This depositor's relay or the store is in trouble; the others may carry on.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// The envelope of `key`: its stamp in a message of the plan's length, sealed to its mailbox.
fn seal(engine: &Engine, plan: &DepositPlan, key: Key) -> Option<Bytes> {
    let (mailbox, seq) = key;
    let content = message::build(
        plan.run_id,
        Stamp {
            mailbox,
            seq,
            sent_us: 0,
        },
        plan.content_len,
    );
    e2e::seal_for_invitation(
        engine,
        &plan.invitations[mailbox as usize],
        &plan.sizes,
        &content,
    )
    .ok()
}

/// The recipient of mailbox `index`: subscribes (resuming across relay kills), verifies and
/// acknowledges each delivery; when a subscription ends for good it starts another. Runs until
/// aborted.
pub async fn recipient(
    client: Arc<Client>,
    mailbox: Arc<Mailbox>,
    index: u32,
    run_id: u64,
    content_len: usize,
    ledger: Shared,
) {
    let access = mailbox.access();
    loop {
        // A request that reconnects by itself: a connection lost to a killed relay is
        // replaced before subscribing again.
        let _ = tokio::time::timeout(RESUME_PATIENCE, client.info()).await;
        if let Ok(mut sub) = client
            .subscribe_resuming(&access, WINDOW, RESUME_PATIENCE)
            .await
        {
            while let Ok(Some(d)) = sub.next().await {
                let stamp = mailbox
                    .open(&d)
                    .ok()
                    .and_then(|c| message::check(run_id, &c, content_len));
                lock(&ledger).delivered(index, d.seq, stamp);
                if sub.ack(d.seq).await.is_err() {
                    break;
                }
            }
        }
        lock(&ledger).resubscribed += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// After the live subscriptions stopped short: a new subscription to mailbox `index` on a new
/// connection reads what the store holds (until nothing comes for `quiet`), to tell an
/// acknowledged envelope that is stored but was never pushed from one that is gone. Returns how
/// many envelopes it delivered that had not been delivered before.
pub async fn sweep(
    client: &Client,
    mailbox: &Mailbox,
    index: u32,
    run_id: u64,
    content_len: usize,
    ledger: &Shared,
    quiet: Duration,
) -> u64 {
    let mut found = 0;
    let Ok(mut sub) = client.subscribe(&mailbox.access(), WINDOW).await else {
        return 0;
    };
    while let Ok(Ok(Some(d))) = tokio::time::timeout(quiet, sub.next()).await {
        let stamp = mailbox
            .open(&d)
            .ok()
            .and_then(|c| message::check(run_id, &c, content_len));
        if lock(ledger).delivered(index, d.seq, stamp) {
            found += 1;
        }
        if sub.ack(d.seq).await.is_err() {
            break;
        }
    }
    sub.finish();
    found
}
