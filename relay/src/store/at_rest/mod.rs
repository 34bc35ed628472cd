//! Crypto-shredding at rest: [`AtRest`] wraps any [`Store`] and seals every envelope before
//! the inner store sees it, under the key of its *epoch* (a time window of one shard of the
//! mailboxes), so that the stored bytes share nothing with the bytes that arrived. Once no
//! envelope of an epoch is held any more (all acknowledged, expired or deleted), the sweep
//! destroys the epoch's key; what is left of those envelopes anywhere (free blocks, old
//! tables, journals, backups, Valkey's AOF and RDB files) can then neither be read nor
//! matched to traffic. docs/AT-REST.md describes the design and what it does and does not
//! promise.
//!
//! - `record`: the sealed record's format, batch sealing and opening (the batch engine).
//! - `keyring`: epoch keys, wrapped under the master key; `slots`: the keyring file;
//!   `valkey`: the cluster store's keyring.
//! - `sweep`: which epochs are closed.

pub mod keyring;
pub mod record;
pub mod slots;
pub mod sweep;
pub mod valkey;

use super::{
    Append, AppendOutcome, Claim, HeldHeads, MailboxRecord, Store, StoreError, StoreHealth,
    StoreStats, StoredEnvelope,
};
use async_trait::async_trait;
use keyring::{Keyring, KeyringError};
use record::{EpochId, ToOpen, ToSeal};
use sealpost_core::engine::Engine;
use sealpost_core::{DepositId, RecipientId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sweep::{Rule, Use};
use tokio::sync::watch;

/// Shards of the mailboxes: a mailbox whose recipient stays offline keeps only its shard's
/// epoch keys alive, not every key of the window.
pub const SHARDS: u8 = 64;

/// The default epoch window: one hour.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// The default settle grace of a store several relays share ([`AtRestOptions::shared`]):
/// envelopes sealed under an epoch are still stored this long after its window ended.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(120);

use crate::metrics::{
    AT_REST_DESTROYED as METRIC_DESTROYED, AT_REST_KEYS as METRIC_KEYS,
    AT_REST_RESEALED as METRIC_RESEALED, AT_REST_UNREADABLE as METRIC_UNREADABLE,
};

/// Why the at-rest layer failed.
#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    /// The keyring failed.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// A stored record's tag does not verify.
    #[error(
        "envelope {seq} of a mailbox is damaged at rest (its seal does not verify); restore the store from a backup if this repeats"
    )]
    Damaged {
        /// Its sequence number.
        seq: u64,
    },
}

/// How [`AtRest`] works.
#[derive(Debug, Clone)]
pub struct AtRestOptions {
    /// The length of an epoch's time window (at least one second).
    pub window: Duration,
    /// Seals new envelopes. When false, envelopes are stored as received and the layer only
    /// opens (and shreds) what was sealed earlier: at-rest encryption turned off on a store
    /// that still holds sealed envelopes.
    pub seal_new: bool,
    /// The relay's retention: an epoch whose window ended longer ago than this (plus one
    /// window) has its key destroyed even if the inner store cannot list its mailboxes'
    /// oldest envelopes ([`Store::held_heads`]), since expiry has removed its envelopes.
    pub retention: Duration,
    /// The batch engine that seals and opens.
    pub engine: Engine,
    /// `Some(settle)` when other relays append to the same store and keyring (the cluster
    /// store): this process's own appends are then not all there are, so every append
    /// carries the deadline `window end + settle`, which the store enforces by its clock
    /// ([`Append::not_after`]), and the sweep counts an epoch's last envelope as stored by
    /// that deadline ([`sweep::Rule::Shared`]). `None` (the memory and disk stores): only this
    /// process appends, and its count of running appends is exact. Set by
    /// `Relay::open` for the cluster store (docs/AT-REST.md, "Several relays").
    pub shared: Option<Duration>,
}

impl AtRestOptions {
    /// Defaults: one-hour windows, sealing, a week's retention, the fastest engine.
    pub fn new() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            seal_new: true,
            retention: Duration::from_secs(7 * 24 * 3600),
            engine: Engine::detect(),
            shared: None,
        }
    }
}

impl Default for AtRestOptions {
    fn default() -> Self {
        Self::new()
    }
}

struct Uses {
    by_epoch: HashMap<EpochId, Use>,
    /// No new envelope goes into a window starting before this (Unix seconds): raised past
    /// each epoch the sweep destroys, so that a clock stepping back never reuses one.
    floor: u64,
}

/// A store whose envelopes are sealed at rest under epoch keys.
pub struct AtRest<S> {
    inner: S,
    keyring: Keyring,
    opts: AtRestOptions,
    uses: Mutex<Uses>,
    /// How the sweep learns when an epoch's last envelope was stored.
    rule: Rule,
    /// When the sweep last listed the mailboxes' heads ([`Rule::list_every`]).
    listed_at: Mutex<Option<Instant>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The shard of a mailbox. Deposit ids are PRF outputs, so any byte is uniform.
pub fn shard_of(deposit_id: &DepositId) -> u8 {
    deposit_id[15] % SHARDS
}

/// Decrements the in-flight count of a batch's epochs when the append ends, however it ends.
struct InFlight<'a> {
    uses: &'a Mutex<Uses>,
    epochs: Vec<EpochId>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = SystemTime::now();
        let mut u = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        for e in &self.epochs {
            if let Some(x) = u.by_epoch.get_mut(e) {
                x.in_flight = x.in_flight.saturating_sub(1);
                x.last_return = x.last_return.max(now);
            }
        }
    }
}

impl<S: Store> AtRest<S> {
    /// Wraps `inner`, with the epoch keys in `keyring`.
    pub fn new(inner: S, keyring: Keyring, opts: AtRestOptions) -> Self {
        metrics::gauge!(METRIC_KEYS).set(keyring.len() as f64);
        // Locally, epochs found in the keyring had their appends return before this.
        let rule = match opts.shared {
            Some(settle) => Rule::Shared { settle },
            None => Rule::Local {
                opened_at: SystemTime::now(),
            },
        };
        Self {
            inner,
            keyring,
            opts,
            uses: Mutex::new(Uses {
                by_epoch: HashMap::new(),
                floor: 0,
            }),
            rule,
            listed_at: Mutex::new(None),
        }
    }

    /// The inner store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The epoch keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn uses(&self) -> std::sync::MutexGuard<'_, Uses> {
        self.uses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window_secs(&self) -> u64 {
        self.opts.window.as_secs().max(1)
    }

    /// Picks each item's epoch and marks the epochs in flight, under one lock with the
    /// clock read, so that the sweep either sees them in flight or has already raised the
    /// floor past them.
    fn begin(&self, batch: &[Append]) -> (Vec<(EpochId, u64)>, InFlight<'_>) {
        let w = self.window_secs();
        let mut u = self.uses();
        let now = unix(SystemTime::now()).max(u.floor);
        let start = now - now % w;
        let epochs: Vec<(EpochId, u64)> = batch
            .iter()
            .map(|a| {
                (
                    EpochId {
                        start,
                        shard: shard_of(&a.deposit_id),
                    },
                    start + w,
                )
            })
            .collect();
        let mut distinct: Vec<EpochId> = epochs.iter().map(|(e, _)| *e).collect();
        distinct.sort();
        distinct.dedup();
        for e in &distinct {
            let x = u.by_epoch.entry(*e).or_insert(Use {
                in_flight: 0,
                last_return: UNIX_EPOCH,
            });
            x.in_flight += 1;
        }
        drop(u);
        (
            epochs,
            InFlight {
                uses: &self.uses,
                epochs: distinct,
            },
        )
    }

    /// Seals `batch` under the current epoch and appends it to the inner store; the outcomes
    /// and the end of the epoch's window (Unix seconds).
    async fn seal_and_append(
        &self,
        batch: &[Append],
    ) -> Result<(Vec<AppendOutcome>, u64), StoreError> {
        let (epochs, in_flight) = self.begin(batch);
        let mut keys = HashMap::new();
        for (e, end) in &epochs {
            if !keys.contains_key(e) {
                let k = self
                    .keyring
                    .get_or_make(*e, *end)
                    .await
                    .map_err(|e| StoreError::AtRest(e.into()))?;
                keys.insert(*e, k);
            }
        }
        metrics::gauge!(METRIC_KEYS).set(self.keyring.len() as f64);
        // Duplicate detection uses the long-lived dedupe key, not the epoch key: a retry
        // landing in the next window (or at another relay of the cluster) must still be
        // answered DUPLICATE.
        let dedupe = self.keyring.dedupe();
        let items: Vec<ToSeal<'_>> = batch
            .iter()
            .zip(&epochs)
            .map(|(a, (e, _))| ToSeal {
                deposit_id: &a.deposit_id,
                epoch: *e,
                key: &keys[e],
                digest: dedupe.envelope_digest(&a.deposit_id, &a.envelope),
                envelope: &a.envelope,
            })
            .collect();
        let records = record::seal_batch(&self.opts.engine, &items);
        let sealed: Vec<Append> = batch
            .iter()
            .zip(records)
            .zip(&epochs)
            .map(|((a, envelope), (_, end))| Append {
                deposit_id: a.deposit_id,
                nonce: dedupe.nonce_tag(&a.deposit_id, &a.nonce),
                envelope,
                not_after: self.rule.not_after(*end),
            })
            .collect();
        let out = self.inner.append_batch(&sealed).await;
        drop(in_flight);
        let end = epochs.first().map_or(0, |(_, end)| *end);
        Ok((out?, end))
    }

    /// Whether the sweep may list the mailboxes' heads now ([`Rule::list_every`]); if so,
    /// counts it as listed.
    fn may_list(&self) -> bool {
        let every = self.rule.list_every(self.opts.window);
        let mut last = self.listed_at.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Destroys the key of every closed epoch; returns how many it destroyed. The relay runs
    /// it on its own ([`spawn_sweeper`]); tests call it to shred at once.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let live = self.keyring.epochs();
        let candidates: Vec<sweep::Candidate> = {
            let u = self.uses();
            live.iter()
                .filter_map(|&(epoch, end)| self.rule.candidate(epoch, end, u.by_epoch.get(&epoch)))
                .collect()
        };
        let expire_after = self
            .rule
            .expire_after(self.opts.retention, self.opts.window);
        // Listing every mailbox's head is what a sweep costs (on the cluster store a read of
        // every mailbox stream): only when it can close something, and on a shared store not
        // at every sweep.
        let listing = if sweep::worth_listing(&candidates, now, expire_after) && self.may_list() {
            match self.inner.held_heads().await {
                Ok(heads) => heads.map(|h| sweep::Listing::new(&h)),
                // The hard bound still applies (a cluster node down must not keep keys past
                // it); the listing is tried again at a later sweep.
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the at-rest sweep could not list the mailboxes' oldest envelopes; only the retention bound closes epochs this time"
                    );
                    None
                }
            }
        } else {
            None
        };
        let closed = sweep::closed(&candidates, listing.as_ref(), now, expire_after);
        if closed.is_empty() {
            self.keyring.settle().await;
            metrics::gauge!(METRIC_KEYS).set(live.len() as f64);
            return Ok(0);
        }
        // Recheck under the lock that nothing began appending to them since, and raise the
        // floor past them before their keys go.
        let doomed: Vec<EpochId> = {
            let mut u = self.uses();
            let doomed: Vec<sweep::Candidate> = closed
                .into_iter()
                .filter(|c| self.rule.still_closed(c, u.by_epoch.get(&c.epoch)))
                .collect();
            for c in &doomed {
                u.floor = u.floor.max(c.end);
            }
            doomed.into_iter().map(|c| c.epoch).collect()
        };
        let mut destroyed = 0;
        for epoch in doomed {
            self.keyring
                .destroy(epoch)
                .await
                .map_err(|e| StoreError::AtRest(e.into()))?;
            self.uses().by_epoch.remove(&epoch);
            destroyed += 1;
        }
        self.keyring.settle().await;
        if destroyed > 0 {
            metrics::counter!(METRIC_DESTROYED).increment(destroyed as u64);
            tracing::info!(
                destroyed,
                live = self.keyring.len(),
                "destroyed the keys of closed at-rest epochs"
            );
        }
        metrics::gauge!(METRIC_KEYS).set(self.keyring.len() as f64);
        Ok(destroyed)
    }
}

/// Runs [`AtRest::sweep`] every quarter window (at least every 30 s, at most every 100 ms)
/// until the store is dropped.
pub fn spawn_sweeper<S: Store>(store: &Arc<AtRest<S>>) {
    let every = (store.opts.window / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let weak: Weak<AtRest<S>> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else {
                return;
            };
            if let Err(e) = s.sweep().await {
                tracing::warn!(error = %e, "at-rest sweep failed; it is retried");
            }
        }
    });
}

#[async_trait]
impl<S: Store> Store for AtRest<S> {
    fn deposit_id_for(&self, recipient_id: &RecipientId) -> DepositId {
        self.inner.deposit_id_for(recipient_id)
    }

    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError> {
        self.inner.create_mailbox(record).await
    }

    async fn lookup_deposit(
        &self,
        ids: &[DepositId],
    ) -> Result<Vec<Option<Arc<MailboxRecord>>>, StoreError> {
        self.inner.lookup_deposit(ids).await
    }

    async fn mailbox(
        &self,
        recipient_id: &RecipientId,
    ) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        self.inner.mailbox(recipient_id).await
    }

    async fn delete_mailbox(&self, recipient_id: &RecipientId) -> Result<bool, StoreError> {
        self.inner.delete_mailbox(recipient_id).await
    }

    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        if !self.opts.seal_new || batch.is_empty() {
            return self.inner.append_batch(batch).await;
        }
        let (mut out, end) = self.seal_and_append(batch).await?;
        let late: Vec<usize> = (0..out.len())
            .filter(|&i| out[i] == AppendOutcome::Late)
            .collect();
        if late.is_empty() {
            return Ok(out);
        }
        // A shared store's clock is past the epoch's deadline: this relay's clock is behind
        // the store's (or the batch waited past the grace). No new envelope goes into that
        // window any more, and the refused ones are sealed again under the next, once: they
        // were not stored, and the dedupe key makes the second try idempotent all the same.
        {
            let mut u = self.uses();
            u.floor = u.floor.max(end);
        }
        metrics::counter!(METRIC_RESEALED).increment(late.len() as u64);
        tracing::warn!(
            envelopes = late.len(),
            "the store refused envelopes sealed under an at-rest epoch past its settle grace (this relay's clock may be behind the store's); sealed again under the next epoch"
        );
        let again: Vec<Append> = late.iter().map(|&i| batch[i].clone()).collect();
        let (retried, _) = self.seal_and_append(&again).await?;
        for (i, o) in late.into_iter().zip(retried) {
            out[i] = o;
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let mut got = self.inner.fetch(recipient_id, after, max).await?;
        if !got.iter().any(|e| record::is_sealed(&e.envelope)) {
            return Ok(got);
        }
        let did = self.inner.deposit_id_for(recipient_id);
        let sealed: Vec<usize> = (0..got.len())
            .filter(|&i| record::is_sealed(&got[i].envelope))
            .collect();
        let mut keys: Vec<Option<Arc<keyring::EpochKey>>> = Vec::with_capacity(sealed.len());
        for &i in &sealed {
            keys.push(match record::epoch_of(&got[i].envelope) {
                Some(e) => self
                    .keyring
                    .find(e)
                    .await
                    .map_err(|e| StoreError::AtRest(e.into()))?,
                None => None,
            });
        }
        let opened = {
            let items: Vec<ToOpen<'_>> = sealed
                .iter()
                .zip(&keys)
                .map(|(&i, k)| ToOpen {
                    deposit_id: &did,
                    stored: &got[i].envelope,
                    key: k.as_ref(),
                })
                .collect();
            record::open_batch(&self.opts.engine, &items)
        };
        let mut gone = Vec::new();
        for (&i, r) in sealed.iter().zip(opened) {
            match r {
                Ok(envelope) => got[i].envelope = envelope,
                Err(record::OpenFailure::KeyGone) => gone.push(got[i].seq),
                Err(record::OpenFailure::Damaged) => {
                    return Err(StoreError::AtRest(AtRestError::Damaged { seq: got[i].seq }));
                }
            }
        }
        if !gone.is_empty() {
            // Only a lost keyring (or a bug) gets here: the sweep destroys a key only once no
            // envelope of its epoch is held. Such an envelope can never be read again, so it
            // is treated as expired: skipped here, removed by the recipient's next ACK or by
            // expiry.
            metrics::counter!(METRIC_UNREADABLE).increment(gone.len() as u64);
            tracing::warn!(
                envelopes = gone.len(),
                "envelopes sealed under an at-rest epoch key that no longer exists were skipped: they cannot be read"
            );
            got.retain(|e| !gone.contains(&e.seq));
        }
        Ok(got)
    }

    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        self.inner.ack(recipient_id, upto).await
    }

    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError> {
        self.inner.pending(recipient_id).await
    }

    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        self.inner.watch(recipient_id)
    }

    async fn claim_subscriber(&self, recipient_id: &RecipientId) -> Result<Claim, StoreError> {
        self.inner.claim_subscriber(recipient_id).await
    }

    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        self.inner.expire(cutoff).await
    }

    async fn stats(&self) -> StoreStats {
        self.inner.stats().await
    }

    async fn held_heads(&self) -> Result<Option<HeldHeads>, StoreError> {
        self.inner.held_heads().await
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests;
