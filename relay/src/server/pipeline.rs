//! The deposit pipeline: shards that own disjoint sets of mailboxes, each verifying and
//! storing whatever its queue holds as one batch.
//!
//! A deposit stream parses its envelopes and hands each shard the ones for its mailboxes; the
//! shard takes every piece of work queued at that moment (from all streams, up to the batch
//! limit), verifies the tags together, and stores them with one `append_batch`: for the disk
//! store, one commit and one fsync for everything that arrived during the previous one. A lone
//! envelope is processed as soon as the shard is free, never held for a batch that is not
//! coming; under load batches grow by themselves while the store is busy. Queues are bounded:
//! a full shard queue stops the stream handler, which stops reading, which lets QUIC flow
//! control hold back the sender.
//!
//! A mailbox always maps to the same shard, so one stream's envelopes for a mailbox are
//! stored in the order they were sent.

use super::limits::{Buckets, Rate};
use crate::metrics as m;
use crate::store::{Append, AppendOutcome, MailboxRecord, Store, StoreError};
use sealpost_core::DepositId;
use sealpost_core::engine::Engine;
use sealpost_core::envelope::Envelope;
use sealpost_core::status::DepositStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Work items queued per shard (each is one stream's envelopes for that shard).
pub(crate) const SHARD_QUEUE: usize = 64;

/// One stream batch's envelopes for one shard and where their statuses go.
struct Work {
    envelopes: Vec<Envelope>,
    reply: oneshot::Sender<Answered>,
    /// This work's share of the relay-wide byte budget, given back when the shard is done
    /// with it (the store keeps what it keeps under its own quotas).
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The statuses of some envelopes, in the order they were submitted, and for those that
/// are `RATE_LIMITED`, the longest of their waits.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    /// One per envelope.
    pub statuses: Vec<DepositStatus>,
    /// Milliseconds until every rate-limited envelope here would be accepted if sent at once
    /// (for up to a burst's worth per mailbox; beyond that, senders must pace).
    pub retry_after_ms: Option<u32>,
}

impl Answered {
    /// The same status for `n` envelopes.
    pub(crate) fn all(status: DepositStatus, n: usize) -> Self {
        Self {
            statuses: vec![status; n],
            retry_after_ms: None,
        }
    }
}

/// The shards' queues.
pub(crate) struct Pipeline {
    shards: Vec<mpsc::Sender<Work>>,
    /// Envelope bytes queued at or being processed by the shards, relay-wide. The queues
    /// are bounded in work items; this bounds them in bytes, whatever the envelope sizes and
    /// however many streams are depositing.
    budget: Arc<tokio::sync::Semaphore>,
    budget_bytes: usize,
}

/// The statuses of one submitted piece of work, when the shard has them.
pub(crate) struct Pending(Option<oneshot::Receiver<Answered>>);

impl Pending {
    /// The statuses, in the order the envelopes were submitted; `UNAVAILABLE` for all `n`
    /// if the shard is gone.
    pub(crate) async fn statuses(self, n: usize) -> Answered {
        match self.0 {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Answered::all(DepositStatus::Unavailable, n)),
            None => Answered::all(DepositStatus::Unavailable, n),
        }
    }
}

impl Pipeline {
    /// Starts `shards` shard tasks over `store`, each batching up to `max_batch` envelopes
    /// and accepting verified deposits at `rate` per mailbox, with at most `budget_bytes` of
    /// envelopes queued over all shards.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        shards: usize,
        max_batch: usize,
        engine: Engine,
        rate: Rate,
        budget_bytes: usize,
    ) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(SHARD_QUEUE);
                tokio::spawn(shard(store.clone(), rx, max_batch, engine, rate));
                tx
            })
            .collect();
        let budget_bytes = budget_bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            shards,
            budget: Arc::new(tokio::sync::Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }

    /// Envelope bytes queued at or being processed by the shards now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }

    /// Work items waiting in each shard's queue.
    pub(crate) fn queue_depths(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards.iter().map(|s| s.max_capacity() - s.capacity())
    }

    /// Number of shards.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns a mailbox. Deposit ids are keyed-PRF outputs, so their first
    /// bytes spread mailboxes evenly.
    pub(crate) fn shard_of(&self, env: &Envelope) -> usize {
        let id = env.deposit_id();
        let h = u64::from_le_bytes(id[..8].try_into().expect("deposit ids are 16 bytes"));
        (h % self.shards.len() as u64) as usize
    }

    /// Queues envelopes (all owned by `shard`), waiting while the shard's queue is full.
    pub(crate) async fn submit(&self, shard: usize, envelopes: Vec<Envelope>) -> Pending {
        // Waiting here stops the stream reading, so QUIC flow control holds back its sender.
        // A batch larger than the whole budget takes all of it (and runs alone).
        let bytes: usize = envelopes.iter().map(|e| e.as_bytes().len()).sum();
        let want = u32::try_from(bytes.clamp(1, self.budget_bytes)).unwrap_or(u32::MAX);
        let budget = self.budget.clone().acquire_many_owned(want).await.ok();
        let (reply, rx) = oneshot::channel();
        let work = Work {
            envelopes,
            reply,
            _budget: budget,
        };
        match self.shards[shard].send(work).await {
            Ok(()) => Pending(Some(rx)),
            Err(_) => Pending(None),
        }
    }
}

async fn shard(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Work>,
    max_batch: usize,
    engine: Engine,
    rate: Rate,
) {
    // Each shard owns its mailboxes, so their buckets need no lock.
    let mut buckets: Buckets<DepositId> = Buckets::new(rate);
    let mut works: Vec<Work> = Vec::with_capacity(SHARD_QUEUE);
    let mut envelopes: Vec<Envelope> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        let mut n = first.envelopes.len();
        works.push(first);
        // Everything already queued joins this batch; nothing waits for more.
        while n < max_batch {
            match rx.try_recv() {
                Ok(w) => {
                    n += w.envelopes.len();
                    works.push(w);
                }
                Err(_) => break,
            }
        }
        envelopes.clear();
        let mut counts = Vec::with_capacity(works.len());
        for w in &mut works {
            counts.push(w.envelopes.len());
            envelopes.append(&mut w.envelopes);
        }
        let (statuses, waits) = process(store.as_ref(), engine, &mut buckets, &envelopes).await;
        // One metrics update per status per batch: a labelled key costs an allocation.
        // Counted beside DepositStatus::ALL, so a new status needs no change here; no
        // indexing and no allocation.
        let mut by_status = [0u64; DepositStatus::ALL.len()];
        for s in &statuses {
            for (k, n) in DepositStatus::ALL.iter().zip(by_status.iter_mut()) {
                if k == s {
                    *n += 1;
                }
            }
        }
        for (&s, &n) in DepositStatus::ALL.iter().zip(&by_status) {
            if n > 0 {
                metrics::counter!(m::DEPOSITS, "status" => m::status_label(s)).increment(n);
            }
        }
        let mut statuses = statuses.into_iter();
        let mut at = 0;
        for (w, n) in works.drain(..).zip(counts) {
            let mine: Vec<DepositStatus> = statuses.by_ref().take(n).collect();
            // Only batches with a rate-limited envelope carry waits at all.
            let retry_after_ms = waits
                .get(at..at + n)
                .and_then(|w| w.iter().copied().flatten().max());
            at += n;
            // A stream that went away no longer wants its answer; the envelopes stay stored.
            let _ = w.reply.send(Answered {
                statuses: mine,
                retry_after_ms,
            });
        }
    }
}

/// The wait a rate-limited envelope is told, in whole milliseconds (rounded up, so that a
/// client retrying at once after it finds a token).
fn wait_ms(wait: std::time::Duration) -> u32 {
    u32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}

/// Verifies and stores a batch of parsed envelopes; the status of each, in order, and
/// (empty unless some envelope was rate-limited) the wait for each rate-limited one.
async fn process(
    store: &dyn Store,
    engine: Engine,
    buckets: &mut Buckets<DepositId>,
    envelopes: &[Envelope],
) -> (Vec<DepositStatus>, Vec<Option<u32>>) {
    let mut statuses = vec![DepositStatus::Ok; envelopes.len()];
    let mut waits: Vec<Option<u32>> = Vec::new();
    if envelopes.is_empty() {
        return (statuses, waits);
    }
    metrics::histogram!(m::BATCH_SIZE).record(envelopes.len() as f64);
    metrics::counter!(m::BYTES_IN)
        .increment(envelopes.iter().map(|e| e.as_bytes().len() as u64).sum());
    let ids: Vec<_> = envelopes.iter().map(|e| *e.deposit_id()).collect();
    let records = match store.lookup_deposit(&ids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "mailbox lookup failed");
            return (vec![DepositStatus::Unavailable; envelopes.len()], waits);
        }
    };
    // Keep the envelopes whose mailbox exists and uses the envelope's suite.
    let mut candidates: Vec<(usize, &Envelope, &MailboxRecord)> =
        Vec::with_capacity(envelopes.len());
    for (i, (env, rec)) in envelopes.iter().zip(records.iter()).enumerate() {
        match rec {
            None => statuses[i] = DepositStatus::UnknownMailbox,
            Some(r) if r.suite != env.suite() => statuses[i] = DepositStatus::Unsupported,
            Some(r) => candidates.push((i, env, r)),
        }
    }
    let jobs: Vec<_> = candidates
        .iter()
        .map(|(_, e, r)| e.verify_job(&r.deposit_key))
        .collect();
    let mut ok = vec![false; jobs.len()];
    let t0 = std::time::Instant::now();
    let verified = engine.verify(&jobs, &mut ok);
    metrics::histogram!(m::BATCH_VERIFY).record(t0.elapsed().as_secs_f64());
    if verified.is_err() {
        // Shapes are built right above; treat an impossible mismatch as a relay fault.
        for (i, _, _) in &candidates {
            statuses[*i] = DepositStatus::Unavailable;
        }
        return (statuses, waits);
    }
    let mut appends = Vec::with_capacity(candidates.len());
    let mut slots = Vec::with_capacity(candidates.len());
    let now = Instant::now();
    // Envelopes refused so far in this batch, per mailbox: the k-th is told when k tokens
    // will be there, so that a client resending all of them after the longest wait finds room
    // for all (up to the burst), not for one at a time.
    let mut refused: HashMap<DepositId, u32> = HashMap::new();
    for ((i, env, _), good) in candidates.iter().zip(ok) {
        // Only envelopes with a valid tag spend the mailbox's rate: a forger cannot use up
        // a mailbox's allowance by sending garbage under its deposit id.
        if good && buckets.try_take(*env.deposit_id(), now).is_err() {
            statuses[*i] = DepositStatus::RateLimited;
            let k = refused.entry(*env.deposit_id()).or_insert(0);
            *k += 1;
            if waits.is_empty() {
                waits = vec![None; envelopes.len()];
            }
            waits[*i] = Some(wait_ms(buckets.wait_for(*env.deposit_id(), *k, now)));
        } else if good {
            appends.push(Append {
                deposit_id: *env.deposit_id(),
                nonce: *env.nonce(),
                envelope: env.as_bytes().clone(),
                not_after: None,
            });
            slots.push(*i);
        } else {
            statuses[*i] = DepositStatus::BadTag;
        }
    }
    if appends.is_empty() {
        return (statuses, waits);
    }
    let t0 = std::time::Instant::now();
    let appended = store.append_batch(&appends).await;
    metrics::histogram!(m::STORE_COMMIT).record(t0.elapsed().as_secs_f64());
    match appended {
        Ok(outcomes) => {
            for (i, o) in slots.iter().zip(outcomes) {
                statuses[*i] = match o {
                    AppendOutcome::Stored(_) => DepositStatus::Ok,
                    AppendOutcome::Duplicate => DepositStatus::Duplicate,
                    AppendOutcome::IdReused => DepositStatus::IdReused,
                    AppendOutcome::UnknownMailbox => DepositStatus::UnknownMailbox,
                    AppendOutcome::MailboxFull => DepositStatus::MailboxFull,
                    // Refused by a shared store as sealed under an epoch that closed (the
                    // at-rest layer reseals once; only a clock far off gets here): not
                    // stored, and a retry is sealed under the current epoch.
                    AppendOutcome::Late => DepositStatus::Unavailable,
                };
            }
        }
        // The store logs when it starts refusing for want of space; not once per batch.
        Err(StoreError::StorageFull { .. }) => {
            for i in slots {
                statuses[i] = DepositStatus::StorageFull;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "append failed");
            for i in slots {
                statuses[i] = DepositStatus::Unavailable;
            }
        }
    }
    (statuses, waits)
}
