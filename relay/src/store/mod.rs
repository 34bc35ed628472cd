//! Mailbox stores behind one async, batch-shaped trait.
//!
//! The trait is shaped for durable and distributed stores as much as for memory: appends come
//! as whole batches (one group commit or one round trip per batch) and complete only once the
//! batch is as durable as the store can make it, so the relay acknowledges deposits after
//! `append_batch` returns. The store owns the wake-up signal, because in a distributed
//! deployment the subscriber may sit on another relay than the depositor.

pub mod at_rest;
pub(crate) mod atomic_file;
pub mod checkpoint;
pub mod cluster;
pub mod disk;
pub mod evidence;
pub mod index;
pub mod memory;
mod open_error;
mod record;
mod rekey;
pub mod space;

use async_trait::async_trait;
use bytes::Bytes;
use sealpost_core::keys::{MailboxKeys, RecipientSecret};
use sealpost_core::suite::NONCE_LEN;
use sealpost_core::{AeadKey, DepositId, RecipientId, Suite};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// What the relay keeps about a mailbox. Keys are wiped on drop by their types.
#[derive(Debug)]
pub struct MailboxRecord {
    /// The recipient-side identifier.
    pub recipient_id: RecipientId,
    /// The sender-side identifier.
    pub deposit_id: DepositId,
    /// The suite of deposit tags and deliveries.
    pub suite: Suite,
    /// Verifies deposit tags.
    pub deposit_key: AeadKey,
    /// The secret the delivery and auth keys are derived from ([`MailboxRecord::keys`]).
    pub recipient_secret: RecipientSecret,
    /// When the mailbox was created.
    pub created_at: SystemTime,
}

impl MailboxRecord {
    /// Builds a record, deriving the delivery and auth keys.
    pub fn new(
        recipient_id: RecipientId,
        deposit_id: DepositId,
        suite: Suite,
        deposit_key: [u8; 32],
        recipient_secret: RecipientSecret,
    ) -> Self {
        Self {
            recipient_id,
            deposit_id,
            suite,
            deposit_key: AeadKey::new(suite, deposit_key),
            recipient_secret,
            created_at: SystemTime::now(),
        }
    }

    /// The delivery and auth keys, derived on demand (for a subscription or a delete), so that
    /// a million idle mailboxes do not each carry them.
    pub fn keys(&self) -> MailboxKeys {
        MailboxKeys::derive(self.suite, &self.recipient_secret)
    }
}

/// One verified envelope to store.
#[derive(Debug, Clone)]
pub struct Append {
    /// Its mailbox.
    pub deposit_id: DepositId,
    /// Its sender nonce (the idempotency key with `deposit_id`).
    pub nonce: [u8; NONCE_LEN],
    /// The envelope exactly as received.
    pub envelope: Bytes,
    /// Store it only if the store's clock is not yet past this instant; otherwise answer
    /// [`AppendOutcome::Late`] and store nothing. `None`: no deadline. The at-rest layer sets
    /// it on a store several relays share, so that every envelope of an epoch is stored by
    /// the epoch's end plus the settle grace *by the store's clock* (docs/AT-REST.md). The
    /// memory and disk stores, used by one process, ignore it: the at-rest layer's own count
    /// of running appends is exact there.
    pub not_after: Option<SystemTime>,
}

/// What became of one [`Append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this sequence number.
    Stored(u64),
    /// Already stored (or recently acknowledged) under the same nonce, byte for byte.
    Duplicate,
    /// A different envelope is (or was recently) stored under the same nonce: the sender
    /// reused a nonce. Not stored.
    IdReused,
    /// The mailbox does not exist (deleted since verification).
    UnknownMailbox,
    /// The mailbox's envelope or byte quota is reached.
    MailboxFull,
    /// The store's clock is past the append's [`Append::not_after`]: not stored. The at-rest
    /// layer seals it again under the current epoch; if one still reaches the relay, the
    /// sender is answered UNAVAILABLE and retries.
    Late,
}

/// The mailboxes' oldest held envelopes, as [`Store::held_heads`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldHeads {
    /// When the listing started, by the clock that stamps `stored_at` (for the cluster store
    /// the earliest of its primaries' clocks, read before each one's listing): every append
    /// that was stored before this is in the listing.
    pub started: SystemTime,
    /// When each mailbox's oldest held envelope was stored, for every mailbox holding any, by
    /// deposit id.
    pub heads: Vec<(DepositId, SystemTime)>,
}

/// A stored envelope, as fetched for delivery.
#[derive(Debug, Clone)]
pub struct StoredEnvelope {
    /// Its sequence number in the mailbox.
    pub seq: u64,
    /// The envelope as received.
    pub envelope: Bytes,
}

/// Counts an operator watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Mailboxes.
    pub mailboxes: u64,
    /// Envelopes held.
    pub envelopes: u64,
    /// Envelope bytes held.
    pub bytes: u64,
}

/// Quotas a store enforces on appends.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Envelopes one mailbox may hold.
    pub max_envelopes: u32,
    /// Envelope bytes one mailbox may hold.
    pub max_bytes: u64,
    /// Mailboxes the store holds at most.
    pub max_mailboxes: u64,
    /// Acknowledged nonces remembered per mailbox for duplicate detection.
    pub dedupe_window: usize,
}

/// A store failure. The relay answers UNAVAILABLE (STORAGE_FULL for
/// [`StoreError::StorageFull`]) and the client may retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A mailbox with this id exists already (an astronomically unlikely id collision).
    #[error("a mailbox with this id already exists")]
    Exists,
    /// The store holds as many mailboxes as it may.
    #[error("the relay holds its maximum of {0} mailboxes")]
    TooManyMailboxes(u64),
    /// The backing storage failed.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The store could not be opened.
    #[error("cannot open the store at {path}: {why}")]
    Open {
        /// The store directory.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
    /// Another process (another relay) has the store open.
    #[error(
        "data directory {path} is in use by another sealpost relay{}: stop that relay first, or give this one another data directory",
        pid.map_or(String::new(), |p| format!(" (pid {p})"))
    )]
    InUse {
        /// The store directory.
        path: std::path::PathBuf,
        /// The other relay's process id, if it recorded one.
        pid: Option<u32>,
    },
    /// A file of the store is damaged, so the store cannot be opened.
    #[error(
        "the store in {store} is damaged: {what} ({file}). Restore the data directory from a backup (deploy/README.md, \"Backup and restore\"), or move {store} aside to start with an empty store (its mailboxes and envelopes are then lost)"
    )]
    Damaged {
        /// The store directory.
        store: std::path::PathBuf,
        /// The damaged file (or the directory holding the damaged files).
        file: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The store's contents are damaged.
    #[error("the store at {path} is corrupt: {what}; restore the data directory from a backup")]
    Corrupt {
        /// The store directory.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The store holds encrypted secrets but no master key was given.
    #[error(
        "the store at {0} keeps mailbox secrets encrypted: give the master key (--master-key-file or SEALPOST_MASTER_KEY)"
    )]
    MasterKeyRequired(std::path::PathBuf),
    /// The disk holding the store is below its free-space reserve: new envelopes and
    /// mailboxes are refused (STORAGE_FULL) until space is freed.
    #[error(
        "the disk holding {path} has {free} bytes free, below the reserve of {reserve} (min_free_disk_bytes): refusing new envelopes and mailboxes until space is freed"
    )]
    StorageFull {
        /// The store directory.
        path: std::path::PathBuf,
        /// Bytes free.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// The Valkey cluster cannot be used (cluster store).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// Sealing or opening envelopes at rest failed ([`at_rest`]).
    #[error(transparent)]
    AtRest(#[from] at_rest::AtRestError),
    /// The master key does not decrypt the stored secrets.
    #[error("the master key does not decrypt the mailbox secrets in {0}: wrong key?")]
    WrongMasterKey(std::path::PathBuf),
}

/// Whether a store takes new envelopes and mailboxes, for readiness probes and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// The free space against the reserve; `None` for a store without a disk.
    pub space: Option<space::Space>,
    /// Why the store refuses writes for good (until a restart), if it does.
    pub failed: Option<String>,
    /// Envelopes acknowledged to senders that the store did not recover at start-up (this
    /// start's and earlier ones', until an operator removes the record).
    pub recovery_shortfall: u64,
    /// When (Unix seconds) a store failure stopped the previous run, if one did.
    pub previous_failure_at: Option<u64>,
    /// Why the store cannot take deposits for now, if it cannot: a transient state (the
    /// cluster store's Valkey nodes unreachable or not confirming durability) that clears by
    /// itself once the backend is back. Unlike `failed`, the relay keeps running through it.
    pub unavailable: Option<Unavailable>,
}

/// A store that cannot take deposits for now ([`StoreHealth::unavailable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// What is wrong, in a sentence (no mailbox ids).
    pub why: String,
    /// True when the store cannot be reached at all, so the relay serves nothing (no
    /// delivery, no ACK either): `/servingz` then answers 503 too, so that a load balancer
    /// sends clients to relays that do reach it. False when only part of it is affected (one
    /// shard without a replica, say), which every relay of the deployment shares.
    pub serves_nothing: bool,
}

impl StoreHealth {
    /// `Ok` if the store takes deposits now; otherwise a sentence saying why not.
    pub fn accepting(&self) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(format!("store failed: {why}"));
        }
        if let Some(u) = &self.unavailable {
            return Err(format!("store unavailable: {}", u.why));
        }
        match self.space {
            Some(s) if s.low() => Err(format!(
                "disk nearly full: {} bytes free, below the reserve of {} (min_free_disk_bytes); refusing deposits",
                s.free.unwrap_or(0),
                s.reserve
            )),
            _ => Ok(()),
        }
    }
}

/// Why a [`SubscriberClaim`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimEnd {
    /// A newer subscription for the mailbox, on some relay, took over.
    Replaced,
    /// The mailbox was deleted (through some relay).
    Deleted,
}

/// A subscriber's hold on a mailbox's one subscription across every relay that shares the
/// store ([`Store::claim_subscriber`]). Dropping it releases what the store keeps for it.
pub struct SubscriberClaim {
    /// This claim's epoch: later claims have higher ones.
    pub epoch: u64,
    /// Set once the claim ends: a newer subscription for the mailbox, on any relay, took
    /// over, or the mailbox was deleted.
    pub kicked: watch::Receiver<Option<ClaimEnd>>,
    /// Whatever the store keeps alive while the claim lives (for the cluster store, the
    /// mailbox's channel subscription), released when the claim is dropped.
    _hold: Box<dyn Send + Sync>,
}

impl SubscriberClaim {
    /// A claim with this epoch and end signal, keeping `hold` alive until it is dropped.
    pub fn new(
        epoch: u64,
        kicked: watch::Receiver<Option<ClaimEnd>>,
        hold: impl Send + Sync + 'static,
    ) -> Self {
        Self {
            epoch,
            kicked,
            _hold: Box::new(hold),
        }
    }
}

impl std::fmt::Debug for SubscriberClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberClaim")
            .field("epoch", &self.epoch)
            .field("kicked", &*self.kicked.borrow())
            .finish_non_exhaustive()
    }
}

/// What [`Store::claim_subscriber`] answers.
#[derive(Debug)]
pub enum Claim {
    /// Only this relay serves the store's mailboxes: the relay's own registry of
    /// subscriptions is all it takes to keep one subscriber per mailbox.
    Unshared,
    /// The subscription is this relay's until the claim's `kicked` turns true.
    Held(SubscriberClaim),
    /// The mailbox does not exist (deleted since it was looked up).
    UnknownMailbox,
}

/// A mailbox store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The deposit id that a new mailbox with this recipient id must have: the store derives
    /// it with a keyed PRF, so that one map serves both ids and senders cannot link them.
    fn deposit_id_for(&self, recipient_id: &RecipientId) -> DepositId;

    /// Adds a mailbox (its deposit id from [`Store::deposit_id_for`]).
    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError>;

    /// Looks up mailboxes by deposit id, one answer per id, in order.
    async fn lookup_deposit(
        &self,
        ids: &[DepositId],
    ) -> Result<Vec<Option<Arc<MailboxRecord>>>, StoreError>;

    /// Looks up a mailbox by recipient id.
    async fn mailbox(
        &self,
        recipient_id: &RecipientId,
    ) -> Result<Option<Arc<MailboxRecord>>, StoreError>;

    /// Removes a mailbox and its envelopes; `false` if it did not exist.
    async fn delete_mailbox(&self, recipient_id: &RecipientId) -> Result<bool, StoreError>;

    /// Stores a batch, returning once it is durable, one outcome per item in order.
    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError>;

    /// Up to `max` envelopes with `seq > after`, ascending.
    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError>;

    /// Deletes every envelope with `seq <= upto`; returns how many were deleted.
    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError>;

    /// Envelopes waiting in a mailbox.
    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError>;

    /// A signal carrying the mailbox's highest stored sequence number, updated on every
    /// append; `None` if the mailbox does not exist.
    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>>;

    /// Claims the mailbox's one subscription for a new subscriber on this relay, ending every
    /// older one on every relay that shares the store. A store that only one relay uses
    /// answers [`Claim::Unshared`] (the default): the relay's registry does the job there.
    async fn claim_subscriber(&self, recipient_id: &RecipientId) -> Result<Claim, StoreError> {
        let _ = recipient_id;
        Ok(Claim::Unshared)
    }

    /// Deletes envelopes stored before `cutoff`; returns how many.
    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError>;

    /// When each mailbox's oldest held envelope was stored, for every mailbox holding any
    /// (by deposit id), and when the listing started; `None` if the store cannot list them
    /// (or not reliably this time: the cluster store while its slots move). The at-rest
    /// layer ([`at_rest`]) uses it to find the epochs no envelope needs any more.
    async fn held_heads(&self) -> Result<Option<HeldHeads>, StoreError> {
        Ok(None)
    }

    /// Current totals.
    async fn stats(&self) -> StoreStats;

    /// Whether the store takes new envelopes now (measured at the call). A store without a
    /// disk and without failure modes of its own is always healthy.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}
