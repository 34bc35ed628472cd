//! The durable store: an embedded fjall database in the relay's data directory.
//!
//! Keyspaces (all keys big-endian so that a mailbox's entries sort by sequence number):
//!
//! | keyspace    | key                   | value                                                    |
//! |-------------|-----------------------|----------------------------------------------------------|
//! | `mailboxes` | recipient_id          | record (below)                                           |
//! | `meta`      | recipient_id          | next sequence number (u64), written with every append    |
//! | `meta`      | `prf-key`             | the 16-byte key of the deposit-id PRF (see `IdPrf`)      |
//! | `envelopes` | recipient_id ‖ seq    | stored_at (ms, u64) ‖ nonce (12) ‖ the envelope          |
//! | `removed`   | recipient_id ‖ seq    | nonce (12) ‖ digest (16): the dedupe window of removed envelopes (digest absent in stores written before it was kept) |
//!
//! Beside fjall's files the store directory holds `checkpoint` (each mailbox's highest durable
//! sequence number, to detect a recovery shortfall: see `checkpoint`), `owner.pid` (the
//! process holding the store, for the "in use" error), and the evidence one run leaves for the
//! next (`failed`, `shortfall`: see `evidence`).
//!
//! A record is `version (1) | flags (1) | deposit_id (16) | suite (1) | created_at ms (8) |
//! secrets`, where secrets is `deposit_key (32) ‖ recipient_secret (32)` in the clear (flags 0)
//! or, with a master key (flags 1), `nonce (12) ‖ ChaCha20-Poly1305 ciphertext (64) ‖ tag (16)`
//! under `HKDF-SHA256(master, "sealpost/1 store secrets")` with AAD `"sealpost/1 record" ‖
//! recipient_id`.
//!
//! Durability: an append batch is one fjall write batch and one `persist(SyncAll)` (one fsync
//! group for the whole batch), and only then are its envelopes acknowledged and deliverable.
//! Mailbox creation and deletion are persisted the same way before they are answered. Acks and
//! expiry take effect in the index at once and reach disk with the background flush every
//! 100 ms (one batch and one fsync for all of them): an ack lost to a crash means a redelivery
//! with the same sequence number, never a lost envelope. Removed
//! envelopes are single-deleted (weak tombstones), which compaction drops together with the
//! value, so a drained queue's space comes back.

use super::checkpoint::{self, Shortfall};
use super::evidence;
use super::index::{Digest, Held, IdPrf, Index, Mailbox, Removal, digest};
use super::record::{self, FLAG_SEALED, RecordError, secrets_key};
use super::space::{FreeSpace, SpaceGuard, Statvfs};
use super::{
    Append, AppendOutcome, HeldHeads, MailboxRecord, Quotas, Store, StoreError, StoreHealth,
    StoreStats, StoredEnvelope,
};
use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use sealpost_core::{AeadKey, DepositId, RecipientId};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// Options for opening the disk store.
#[derive(Clone)]
pub struct DiskOptions {
    /// Encrypts mailbox secrets at rest when given.
    pub master_key: Option<Zeroizing<[u8; 32]>>,
    /// Bytes of freshly stored envelopes kept in memory as well, so that a waiting subscriber
    /// gets them without a read from disk (the common case: recipients online). Older
    /// envelopes, and everything after a restart, are read from disk.
    pub tail_bytes: u64,
    /// Bytes kept free on the store's filesystem: below this, new envelopes and mailboxes
    /// are refused with [`StoreError::StorageFull`] (0: no reserve).
    pub min_free_bytes: u64,
    /// Where the free space is measured; `None` measures the store's filesystem (`statvfs`).
    /// Tests give their own to simulate a full disk.
    pub free_space: Option<Arc<dyn FreeSpace>>,
}

/// Default for [`DiskOptions::tail_bytes`]: 64 MiB.
pub const DEFAULT_TAIL_BYTES: u64 = 64 << 20;

/// Default for [`DiskOptions::min_free_bytes`]: 256 MiB, room for the store to flush its
/// memtables and compact (which is how acknowledged envelopes give their space back).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            master_key: None,
            tail_bytes: DEFAULT_TAIL_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            free_space: None,
        }
    }
}

struct Db {
    db: Database,
    mailboxes: Keyspace,
    meta: Keyspace,
    envelopes: Keyspace,
    removed: Keyspace,
    /// Removals (acks, expiry) waiting for the background flush.
    pending: Mutex<PendingRemovals>,
}

/// Acknowledged and expired envelopes not yet deleted on disk. The index has already dropped
/// them, so nothing delivers them again in this process; a crash before the flush means a
/// redelivery with the same sequence number — the at-least-once contract an immediate write
/// without fsync gave too — and taking them off the request path removes one journal commit
/// per ACK.
#[derive(Default)]
struct PendingRemovals {
    /// (envelope key, nonce ‖ digest), in removal order: the dedupe window's entry.
    removed: Vec<([u8; 24], Vec<u8>)>,
    /// Dedupe-window keys that fell out of the window.
    evicted: Vec<[u8; 24]>,
}

impl Db {
    /// Writes the pending removals as one batch; whether there were any.
    fn flush_removals(&self) -> fjall::Result<bool> {
        let p = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if p.removed.is_empty() && p.evicted.is_empty() {
            return Ok(false);
        }
        let mut b = self.db.batch();
        for (k, entry) in p.removed {
            b.remove_weak(&self.envelopes, k.to_vec());
            b.insert(&self.removed, k.to_vec(), entry);
        }
        for k in &p.evicted {
            b.remove_weak(&self.removed, k.to_vec());
        }
        b.commit()?;
        Ok(true)
    }

    fn reclaim(&self) -> fjall::Result<()> {
        for ks in [&self.envelopes, &self.removed, &self.meta, &self.mailboxes] {
            ks.rotate_memtable_and_wait()?;
        }
        for ks in [&self.envelopes, &self.removed] {
            ks.major_compact()?;
        }
        self.db.persist(PersistMode::SyncAll)
    }
}

/// How long dropping a store that was not closed ([`DiskStore::close`]) waits for its
/// memtables to reach tables.
const CLOSE_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Stops the background flusher and persists once more when the last handle goes.
struct FlushGuard {
    db: Arc<Db>,
    stop: Arc<AtomicBool>,
    /// Set by [`DiskStore::close`], which has done all of this within its own time limit.
    closed: Arc<AtomicBool>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let _ = self.db.flush_removals();
        let _ = self.db.db.persist(PersistMode::SyncAll);
        // A clean stop flushes the memtables into tables, so the next start reads tables
        // instead of replaying the whole journal (much faster with many mailboxes). fjall
        // waits for that flush without a limit, and a flush that fails (disk full, directory
        // gone) never ends, so wait on another thread and give up after a while: the journal
        // is persisted above, and the next start replays it.
        let db = self.db.clone();
        let (done, wait) = std::sync::mpsc::channel();
        let flusher = std::thread::Builder::new()
            .name("sealpost-store-close".into())
            .spawn(move || {
                for ks in [&db.mailboxes, &db.meta, &db.envelopes, &db.removed] {
                    let _ = ks.rotate_memtable_and_wait();
                }
                let _ = done.send(());
            });
        if flusher.is_ok() && wait.recv_timeout(CLOSE_FLUSH_LIMIT).is_err() {
            tracing::warn!(
                "store tables not flushed within {} s at close; the next start replays the journal",
                CLOSE_FLUSH_LIMIT.as_secs()
            );
        }
    }
}

/// The durable store. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct DiskStore {
    dir: PathBuf,
    quotas: Quotas,
    db: Arc<Db>,
    index: Arc<Mutex<Index>>,
    secrets_key: Option<AeadKey>,
    tail_bytes: u64,
    /// Set, with the first failure, after a write failed: from then on the store refuses
    /// writes (fail-stop), since fjall refuses them too ("poisoned") and memory and disk may
    /// disagree; readiness reports it and the relay exits so that its supervisor restarts it,
    /// and the restart recovers from disk. Reads go on meanwhile.
    failed: Arc<OnceLock<String>>,
    /// The free-space reserve.
    space: SpaceGuard,
    /// Set by the test hook `inject_write_failure` (feature `test-hooks`): makes every write
    /// fail as if the disk had. Never set otherwise.
    write_fault: Arc<AtomicBool>,
    /// Set once [`DiskStore::close`] ran.
    closed: Arc<AtomicBool>,
    /// Set when deposits or deletes changed the high-water marks since the last checkpoint.
    checkpoint_dirty: Arc<AtomicBool>,
    /// The acknowledged envelopes found missing at this start or recorded by earlier ones
    /// (`evidence`), reported until an operator removes the record.
    shortfall: Shortfall,
    /// The store failure that stopped the previous run, from its marker (`evidence`).
    previous_failure: Option<evidence::PreviousFailure>,
    /// Held while the checkpoint is written, so that the flusher and a close write one after
    /// the other, each from a fresh snapshot of the index.
    checkpoint_lock: Arc<Mutex<()>>,
    stop: Arc<AtomicBool>,
    prf: IdPrf,
    _guard: Arc<FlushGuard>,
}

/// The `meta` key of the deposit-id PRF key (recipient ids are 16 bytes, so it cannot clash).
const PRF_KEY: &[u8] = b"prf-key";

fn env_key(rid: &RecipientId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(rid);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl DiskStore {
    /// Opens (or creates) the store in `dir` and recovers every mailbox and envelope.
    pub fn open(dir: &Path, quotas: Quotas, opts: DiskOptions) -> Result<Self, StoreError> {
        let open_err = |e: fjall::Error| super::open_error::explain(dir, e);
        super::rekey::finish(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            why: format!("cannot finish an interrupted master-key rewrite: {e}"),
        })?;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            why: e.to_string(),
        })?;
        // A copy restored without fjall's empty `lock` file (some backup tools skip empty
        // files) would fail to open with a bare "No such file"; the file only carries the lock.
        let lock = dir.join("lock");
        if dir.join("version").exists() && !lock.exists() {
            std::fs::File::create(&lock).map_err(|e| StoreError::Open {
                path: dir.to_owned(),
                why: format!("cannot create {}: {e}", lock.display()),
            })?;
        }
        let db = std::panic::catch_unwind(|| Database::builder(dir).open())
            .map_err(|_| StoreError::Damaged {
                store: dir.to_owned(),
                file: dir.to_owned(),
                what: "the storage library failed while reading its files".into(),
            })?
            .map_err(open_err)?;
        super::open_error::note_owner(dir);
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(open_err)
        };
        let db = Db {
            mailboxes: ks("mailboxes")?,
            meta: ks("meta")?,
            envelopes: ks("envelopes")?,
            removed: ks("removed")?,
            pending: Mutex::new(PendingRemovals::default()),
            db,
        };
        let secrets_key = opts.master_key.as_ref().map(|m| secrets_key(m));
        let prf = Self::load_prf(&db).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            why: e,
        })?;
        let db = Arc::new(db);
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let store = Self {
            dir: dir.to_owned(),
            quotas,
            _guard: Arc::new(FlushGuard {
                db: db.clone(),
                stop: stop.clone(),
                closed: closed.clone(),
            }),
            closed,
            db,
            index: Arc::new(Mutex::new(Index::new(prf.clone(), 0))),
            prf,
            secrets_key,
            tail_bytes: opts.tail_bytes,
            failed: Arc::new(OnceLock::new()),
            space: SpaceGuard::new(
                opts.free_space
                    .clone()
                    .unwrap_or_else(|| Arc::new(Statvfs::new(dir))),
                opts.min_free_bytes,
            ),
            write_fault: Arc::new(AtomicBool::new(false)),
            checkpoint_dirty: Arc::new(AtomicBool::new(false)),
            shortfall: Shortfall::default(),
            previous_failure: None,
            checkpoint_lock: Arc::new(Mutex::new(())),
            stop,
        };
        let mut store = store;
        let recovered = store.recover()?;
        if !recovered.clear.is_empty() {
            // A master key given to a store whose mailboxes were created without one: seal
            // their secrets now, in a fresh copy of the store (see `rekey`), and open that.
            let clear = recovered.clear.len();
            let key = store.secrets_key.clone();
            store.rekey(key.as_ref())?;
            tracing::info!(
                records = clear,
                "encrypted the mailbox secrets that were stored in the clear under the master key"
            );
            return Self::open(dir, quotas, opts);
        }
        // Evidence for the operator, handled here (after a re-key's re-open) so that it is
        // counted and reported once per start.
        for name in [
            checkpoint::FILE,
            evidence::FAILED_FILE,
            evidence::SHORTFALL_FILE,
        ] {
            super::atomic_file::remove_leftovers(dir, name);
        }
        let (shortfall, recorded) = store.record_shortfall(recovered.shortfall);
        store.shortfall = shortfall;
        store.previous_failure = take_previous_failure(dir);
        // From here on the checkpoint describes this store, unless a shortfall it shows could
        // not be recorded: then it stays, and the next start finds the shortfall again.
        if recorded && let Err(e) = store.write_checkpoint() {
            tracing::warn!(error = %e, "cannot write the store checkpoint");
        }
        // What recovery replayed from the journal sits in memtables; flush it in the background
        // so that memory goes back and the next start is quick.
        for ks in [&store.db.mailboxes, &store.db.meta] {
            let _ = ks.rotate_memtable();
        }
        store.start_flusher();
        Ok(store)
    }

    /// Whether mailbox secrets are encrypted at rest.
    pub fn secrets_encrypted(&self) -> bool {
        self.secrets_key.is_some()
    }

    /// Creates many mailboxes with one write batch and one fsync (bulk import, and the
    /// many-mailboxes benchmark). Stops at the first refusal; the ones before it are kept.
    pub fn create_many(&self, records: Vec<MailboxRecord>) -> Result<(), StoreError> {
        self.check()?;
        self.check_space()?;
        let mut b = self.db.db.batch();
        let mut result = Ok(());
        let mut created = Vec::new();
        for r in records {
            let value = self.encode_record(&r)?;
            let rid = r.recipient_id;
            if let Err(e) = self.lock().create(r, &self.quotas) {
                result = Err(e);
                break;
            }
            b.insert(&self.db.mailboxes, rid.to_vec(), value);
            created.push(rid);
        }
        let written = self.fault().and_then(|()| {
            b.commit().map_err(|e| self.fail(e))?;
            self.db
                .db
                .persist(PersistMode::SyncAll)
                .map_err(|e| self.fail(e))
        });
        if let Err(e) = written {
            // Not stored: the index (and the mailbox gauge) must not list them.
            let mut g = self.lock();
            for rid in &created {
                g.delete(rid);
            }
            return Err(e);
        }
        result
    }

    /// Current totals, without awaiting.
    pub fn stats_now(&self) -> StoreStats {
        self.lock().stats()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.dir.clone(),
            what: what.into(),
        }
    }

    fn encode_record(&self, r: &MailboxRecord) -> Result<Vec<u8>, StoreError> {
        self.encode_record_under(r, self.secrets_key.as_ref())
    }

    /// Encodes a record with its secrets sealed under `key`, or in the clear without one.
    fn encode_record_under(
        &self,
        r: &MailboxRecord,
        key: Option<&AeadKey>,
    ) -> Result<Vec<u8>, StoreError> {
        record::encode(r, key).map_err(backend)
    }

    fn decode_record(&self, rid: &[u8], v: &[u8]) -> Result<MailboxRecord, StoreError> {
        record::decode(rid, v, self.secrets_key.as_ref()).map_err(|e| match e {
            RecordError::Corrupt(what) => self.corrupt(what),
            RecordError::MasterKeyRequired => StoreError::MasterKeyRequired(self.dir.clone()),
            RecordError::WrongMasterKey => StoreError::WrongMasterKey(self.dir.clone()),
            RecordError::Backend(why) => StoreError::Backend(why),
        })
    }

    /// The relay's deposit-id PRF key, made and persisted on first open.
    fn load_prf(db: &Db) -> Result<IdPrf, String> {
        if let Some(v) = db.meta.get(PRF_KEY).map_err(|e| e.to_string())? {
            let key: [u8; 16] = v[..].try_into().map_err(|_| {
                format!(
                    "meta entry {:?} has {} bytes, expected 16",
                    "prf-key",
                    v.len()
                )
            })?;
            return Ok(IdPrf::new(key));
        }
        let prf = IdPrf::random().map_err(|e| e.to_string())?;
        db.meta
            .insert(PRF_KEY, prf.key().to_vec())
            .map_err(|e| e.to_string())?;
        db.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| e.to_string())?;
        Ok(prf)
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let db = &self.db;
        let mut index = Index::new(self.prf.clone(), db.mailboxes.approximate_len());
        let mut mailboxes = std::collections::HashMap::new();
        let mut clear = Vec::new();
        for kv in db.mailboxes.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| self.corrupt(format!("reading mailboxes: {e}")))?;
            let rec = self.decode_record(&k, &v)?;
            if self.secrets_key.is_some() && v.get(1).is_some_and(|f| f & FLAG_SEALED == 0) {
                clear.push(rec.recipient_id);
            }
            mailboxes.insert(rec.recipient_id, Mailbox::new(Arc::new(rec), 1));
        }
        for kv in db.meta.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| self.corrupt(format!("reading meta: {e}")))?;
            if &k[..] == PRF_KEY {
                continue;
            }
            let rid: RecipientId = k[..]
                .try_into()
                .map_err(|_| self.corrupt("meta keyspace: bad key"))?;
            let next: [u8; 8] = v[..]
                .try_into()
                .map_err(|_| self.corrupt("meta keyspace: bad value"))?;
            if let Some(m) = mailboxes.get_mut(&rid) {
                m.next_seq = m.next_seq.max(u64::from_be_bytes(next));
            }
        }
        let mut orphans = Vec::new();
        for kv in db.envelopes.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| self.corrupt(format!("reading envelopes: {e}")))?;
            if k.len() != 24 || v.len() < 20 {
                return Err(self.corrupt(format!(
                    "envelopes keyspace: entry with a {}-byte key and a {}-byte value",
                    k.len(),
                    v.len()
                )));
            }
            let rid: RecipientId = k[..16].try_into().expect("16 bytes");
            let seq = u64::from_be_bytes(k[16..24].try_into().expect("8 bytes"));
            let Some(m) = mailboxes.get_mut(&rid) else {
                orphans.push(k);
                continue;
            };
            // The digest is recomputed rather than stored: one SHA-256 pass over what
            // recovery reads anyway, and no change to the envelope records (a record sealed
            // at rest carries its own, which `digest` reads).
            m.restore_held(
                Held {
                    seq,
                    nonce: v[8..20].try_into().expect("12 bytes"),
                    stored_at: UNIX_EPOCH
                        + Duration::from_millis(u64::from_be_bytes(
                            v[..8].try_into().expect("8 bytes"),
                        )),
                    len: (v.len() - 20) as u32,
                    body: None,
                    durable: true,
                },
                digest(&v[20..]),
            );
        }
        let mut evicted = Vec::new();
        for kv in db.removed.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| self.corrupt(format!("reading removed: {e}")))?;
            if k.len() != 24 || (v.len() != 12 && v.len() != 28) {
                return Err(self.corrupt("removed keyspace: malformed entry"));
            }
            let removed_digest: Option<Digest> = v.get(12..28).and_then(|d| d.try_into().ok());
            let rid: RecipientId = k[..16].try_into().expect("16 bytes");
            let seq = u64::from_be_bytes(k[16..24].try_into().expect("8 bytes"));
            match mailboxes.get_mut(&rid) {
                Some(m) => {
                    for s in m.restore_removed(
                        seq,
                        v[..12].try_into().expect("12 bytes"),
                        removed_digest,
                        self.quotas.dedupe_window,
                    ) {
                        evicted.push(env_key(&rid, s));
                    }
                }
                None => evicted.push(env_key(&rid, seq)),
            }
        }
        for m in mailboxes.values_mut() {
            m.set_durable_high(m.next_seq - 1);
        }
        let shortfall = self.compare_with_checkpoint(&mailboxes);
        for (_, m) in mailboxes {
            index.insert(m);
        }
        // Tidy what a crash between a delete's steps may have left.
        if !orphans.is_empty() || !evicted.is_empty() {
            let mut b = db.db.batch();
            for k in orphans {
                b.remove(&db.envelopes, k);
            }
            for k in evicted {
                b.remove(&db.removed, k.to_vec());
            }
            b.commit().map_err(backend)?;
            db.db.persist(PersistMode::SyncAll).map_err(backend)?;
        }
        index.set_body_limit(self.tail_bytes);
        *self.lock() = index;
        Ok(Recovered { shortfall, clear })
    }

    /// Re-encrypts every mailbox's secrets under a new master key and returns how many
    /// records; afterwards only the new key opens the store. For the `rotate-master-key`
    /// command, on a store no relay has open (the handle must be the only one: it is
    /// consumed). The store is copied into a fresh database beside it and swapped in (see
    /// `rekey`), so no copy under the old key is left in the store's files; this needs free
    /// space for a copy of the store.
    pub fn rotate_master_key(self, new: &Zeroizing<[u8; 32]>) -> Result<u64, StoreError> {
        self.rekey(Some(&secrets_key(new)))
    }

    /// Copies the store into `rekey::new_dir` with every record's secrets under `key`,
    /// closes this handle and swaps the copy in.
    fn rekey(self, key: Option<&AeadKey>) -> Result<u64, StoreError> {
        self.check()?;
        let to = super::rekey::new_dir(&self.dir);
        let io = |e: std::io::Error| StoreError::Backend(format!("rewriting the store: {e}"));
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(io)?;
        }
        super::rekey::create_new_dir(&self.dir).map_err(io)?;
        let n = self.copy_into(&to, key)?;
        // The store's own small files go along: the checkpoint and the evidence for the operator.
        for name in [
            checkpoint::FILE,
            evidence::FAILED_FILE,
            evidence::SHORTFALL_FILE,
        ] {
            if let Err(e) = std::fs::copy(self.dir.join(name), to.join(name))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io(e));
            }
        }
        let dir = self.dir.clone();
        self.closed.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the last handle closes the database; it must be closed before the swap, or
        // its background work would write into the new copy's path. Wait for the background
        // flusher (it stops within 100 ms) to let go; another handle is a caller's mistake.
        let t0 = std::time::Instant::now();
        while Arc::strong_count(&self._guard) > 1 || Arc::strong_count(&self.db) > 2 {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(StoreError::Backend(
                    "the store is still in use elsewhere in this process; cannot swap in the rewritten copy".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(self);
        super::rekey::swap_in(&dir).map_err(io)?;
        Ok(n)
    }

    /// Writes a new database at `to` holding this store's contents, the mailbox records with
    /// their secrets under `key`; returns how many records.
    fn copy_into(&self, to: &Path, key: Option<&AeadKey>) -> Result<u64, StoreError> {
        let err = |e: fjall::Error| StoreError::Backend(format!("writing {}: {e}", to.display()));
        let new = Database::builder(to).open().map_err(err)?;
        let ks = |name: &str| {
            new.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(err)
        };
        let (mailboxes, meta, envelopes, removed) = (
            ks("mailboxes")?,
            ks("meta")?,
            ks("envelopes")?,
            ks("removed")?,
        );
        let rids = self.lock().recipient_ids();
        let mut n = 0u64;
        for chunk in rids.chunks(10_000) {
            let mut b = new.batch();
            for rid in chunk {
                if let Some(rec) = self.lock().mailbox(rid) {
                    b.insert(
                        &mailboxes,
                        rid.to_vec(),
                        self.encode_record_under(&rec, key)?,
                    );
                    n += 1;
                }
            }
            b.commit().map_err(err)?;
        }
        for (from, into) in [
            (&self.db.meta, &meta),
            (&self.db.envelopes, &envelopes),
            (&self.db.removed, &removed),
        ] {
            let mut b = new.batch();
            let mut bytes = 0usize;
            for kv in from.iter() {
                let (k, v) = kv.into_inner().map_err(backend)?;
                bytes += k.len() + v.len();
                b.insert(into, k, v);
                // Bounded batches: a store may be far larger than memory.
                if bytes > 16 << 20 {
                    b.commit().map_err(err)?;
                    b = new.batch();
                    bytes = 0;
                }
            }
            b.commit().map_err(err)?;
        }
        for k in [&mailboxes, &meta, &envelopes, &removed] {
            k.rotate_memtable_and_wait().map_err(err)?;
        }
        new.persist(PersistMode::SyncAll).map_err(err)?;
        Ok(n)
    }

    /// Compares the recovered mailboxes with the checkpoint and reports a shortfall loudly
    /// (here in the log; `health()` carries it to `sealpost_store_recovery_shortfall_envelopes`).
    fn compare_with_checkpoint(
        &self,
        mailboxes: &std::collections::HashMap<RecipientId, Mailbox>,
    ) -> Shortfall {
        let cp = match checkpoint::read(&self.dir) {
            Ok(Some(cp)) => cp,
            Ok(None) => return Shortfall::default(),
            Err(e) => {
                tracing::warn!(
                    "{e}: cannot check whether the store recovered every acknowledged envelope"
                );
                return Shortfall::default();
            }
        };
        let s = checkpoint::compare(&cp, |rid| mailboxes.get(rid).map(|m| m.next_seq - 1));
        if s.envelopes > 0 {
            tracing::error!(
                missing_envelopes = s.envelopes,
                mailboxes_affected = s.mailboxes,
                store = %self.dir.display(),
                "the store recovered fewer envelopes than it had acknowledged to senders: its \
                 journal or tables lost data (a truncated or damaged file, a disk that lied about \
                 a flush). Some of the missing envelopes may have been delivered before the loss. \
                 Restore from a backup if you have a newer one; otherwise tell the affected \
                 senders' users that messages may be lost"
            );
        }
        if s.mailboxes_missing > 0 {
            tracing::warn!(
                mailboxes_missing = s.mailboxes_missing,
                store = %self.dir.display(),
                "mailboxes in the store checkpoint were not recovered: deleted in the last seconds \
                 before the stop, or lost with the store's data"
            );
        }
        s
    }

    /// The acknowledged envelopes found missing at start-up, at this start and at earlier
    /// ones, until an operator removes the record (`DIR/shortfall`).
    pub fn recovery_shortfall(&self) -> Shortfall {
        self.shortfall
    }

    /// The store failure that stopped the previous run (its marker is removed once read).
    pub fn previous_failure(&self) -> Option<&evidence::PreviousFailure> {
        self.previous_failure.as_ref()
    }

    /// Adds what this start found missing to the record of earlier starts and reports the
    /// total; whether the record is up to date (if not, the checkpoint must stay as it is).
    fn record_shortfall(&self, found: Shortfall) -> (Shortfall, bool) {
        let record = self.dir.join(evidence::SHORTFALL_FILE);
        if found.envelopes > 0 {
            return match evidence::add_shortfall(&self.dir, found) {
                Ok(total) => {
                    tracing::error!(
                        record = %record.display(),
                        "the shortfall is recorded in the file named here; the relay reports \
                         it at every start (log and sealpost_store_recovery_shortfall_envelopes) \
                         until you remove that file"
                    );
                    (total, true)
                }
                Err(e) => {
                    tracing::error!(
                        "{e}: the shortfall is not recorded; the store checkpoint is not \
                         rewritten at this start, so that a restart before new deposits finds \
                         it again"
                    );
                    (found, false)
                }
            };
        }
        match evidence::read_shortfall(&self.dir) {
            Ok(Some(total)) if total.envelopes > 0 => {
                tracing::error!(
                    missing_envelopes = total.envelopes,
                    mailboxes_affected = total.mailboxes,
                    record = %record.display(),
                    "an earlier start of this store recovered fewer envelopes than it had \
                     acknowledged to senders (see the log of that start); remove the record \
                     once dealt with to stop this report"
                );
                (total, true)
            }
            Ok(_) => (found, true),
            Err(e) => {
                tracing::warn!("{e}: cannot tell whether earlier starts found a shortfall");
                (found, true)
            }
        }
    }

    /// Writes the checkpoint of every mailbox's highest durable sequence number.
    fn write_checkpoint(&self) -> std::io::Result<()> {
        write_checkpoint(&self.dir, &self.index, &self.checkpoint_lock)
    }

    fn start_flusher(&self) {
        let (db, stop, failed) = (self.db.clone(), self.stop.clone(), self.failed.clone());
        let (dir, index, dirty, cp_lock) = (
            self.dir.clone(),
            self.index.clone(),
            self.checkpoint_dirty.clone(),
            self.checkpoint_lock.clone(),
        );
        std::thread::Builder::new()
            .name("sealpost-store-flush".into())
            .spawn(move || {
                let mut since_compaction = 0u32;
                let mut removals = false;
                let mut tick = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    tick = tick.wrapping_add(1);
                    // Every 5 s after deposits or deletes: the checkpoint of acknowledged
                    // deposits (one snapshot of the index and one small file write).
                    if tick.is_multiple_of(50)
                        && dirty.swap(false, Ordering::Relaxed)
                        && let Err(e) = write_checkpoint(&dir, &index, &cp_lock)
                    {
                        dirty.store(true, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot write the store checkpoint");
                    }
                    match db.flush_removals() {
                        Ok(false) => {}
                        Ok(true) => {
                            removals = true;
                            if let Err(e) = db.db.persist(PersistMode::SyncAll) {
                                note_failure(&failed, &dir, &e);
                            }
                        }
                        Err(e) => note_failure(&failed, &dir, &e),
                    }
                    since_compaction += 1;
                    // Every 30 s after removals: flush memtables (which frees the journals) and
                    // compact, so that acknowledged and expired envelopes give their space back.
                    if removals && since_compaction >= 300 {
                        since_compaction = 0;
                        removals = false;
                        let _ = db.reclaim();
                    }
                }
            })
            .ok();
    }

    /// Writes pending acknowledgements and persists the journal (a clean stop calls this so
    /// that nothing acknowledged is redelivered after the restart).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.fault()?;
        self.db.flush_removals().map_err(|e| self.fail(e))?;
        self.db
            .db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.fail(e))
    }

    /// Closes the store within `within`: writes pending acknowledgements and persists the
    /// journal, then flushes the memtables into tables (so that the next start need not
    /// replay the journal) for as long as the time allows. An error if the final flush
    /// failed or did not finish in time (acknowledgements since the last flush may then be
    /// redelivered after the restart; stored envelopes are safe, each append batch was
    /// persisted before it was acknowledged). Tables not flushed in time are only a warning:
    /// the next start replays the journal. Runs the work on a thread of its own and waits
    /// for it at most `within`, since a failing disk can block a flush indefinitely.
    pub fn close(&self, within: Duration) -> Result<(), StoreError> {
        let deadline = std::time::Instant::now() + within;
        self.closed.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        enum Step {
            Flushed(Result<(), StoreError>),
            Tables,
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let me = self.clone();
        std::thread::Builder::new()
            .name("sealpost-store-close".into())
            .spawn(move || {
                let flushed = me.flush();
                // The checkpoint only serves to detect a recovery shortfall at the next start:
                // failing to write it loses nothing acknowledged, so it is no failed flush.
                if flushed.is_ok()
                    && let Err(e) = me.write_checkpoint()
                {
                    tracing::warn!(
                        error = %e,
                        "cannot write the store checkpoint at close: nothing is lost, but the \
                         next start compares what it recovers with the previous checkpoint, so \
                         it may miss a shortfall in the deposits of the last seconds"
                    );
                }
                let ok = flushed.is_ok();
                let _ = tx.send(Step::Flushed(flushed));
                if ok {
                    for ks in [
                        &me.db.mailboxes,
                        &me.db.meta,
                        &me.db.envelopes,
                        &me.db.removed,
                    ] {
                        let _ = ks.rotate_memtable_and_wait();
                    }
                    let _ = tx.send(Step::Tables);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the closing thread: {e}")))?;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left()) {
            Ok(Step::Flushed(r)) => r?,
            Ok(Step::Tables) | Err(_) => {
                return Err(StoreError::Backend(format!(
                    "the final flush of {} did not finish within the shutdown timeout",
                    self.dir.display()
                )));
            }
        }
        if rx.recv_timeout(left()).is_err() {
            tracing::warn!(
                "store tables not flushed within the shutdown timeout; the next start replays the journal"
            );
        }
        Ok(())
    }

    /// Test hook (cargo feature `test-hooks`, on only in the tests): from now on every write
    /// fails as a failing disk's would (and the store goes into its failed state at the
    /// first one).
    #[cfg(feature = "test-hooks")]
    pub fn inject_write_failure(&self) {
        self.write_fault.store(true, Ordering::Relaxed);
    }

    fn fault(&self) -> Result<(), StoreError> {
        if self.write_fault.load(Ordering::Relaxed) {
            return Err(self.fail("injected write failure (test hook)"));
        }
        Ok(())
    }

    /// Refuses new envelopes and mailboxes while the disk is below its reserve.
    fn check_space(&self) -> Result<(), StoreError> {
        if self.space.reserve() == 0 {
            // No reserve: spare the deposit path the statvfs call.
            return Ok(());
        }
        let s = self.space.check();
        if s.low() {
            return Err(StoreError::StorageFull {
                path: self.dir.clone(),
                free: s.free.unwrap_or(0),
                reserve: s.reserve,
            });
        }
        Ok(())
    }

    /// Flushes memtables and compacts now, giving back the space of removed envelopes (the
    /// relay does this on its own every 30 s after removals).
    pub fn reclaim_space(&self) -> Result<(), StoreError> {
        self.db.reclaim().map_err(backend)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(why) => Err(StoreError::Backend(format!(
                "an earlier write to the store failed ({why}); the relay must restart to recover from disk"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        note_failure(&self.failed, &self.dir, &e);
        StoreError::Backend(format!(
            "store write failed, refusing further writes until restart: {e}"
        ))
    }

    fn write_removal(&self, r: &Removal) -> Result<(), StoreError> {
        if r.removed.is_empty() && r.evicted.is_empty() {
            return Ok(());
        }
        let mut p = self.db.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.removed.extend(r.removed.iter().map(|x| {
            let mut entry = x.nonce.to_vec();
            entry.extend_from_slice(x.digest.as_ref().map_or(&[][..], |d| &d[..]));
            (env_key(&x.recipient_id, x.seq), entry)
        }));
        p.evicted
            .extend(r.evicted.iter().map(|(rid, seq)| env_key(rid, *seq)));
        Ok(())
    }

    fn append_blocking(&self, batch: Vec<Append>) -> Result<Vec<AppendOutcome>, StoreError> {
        self.check()?;
        self.check_space()?;
        let digests: Vec<Digest> = batch.iter().map(|a| digest(&a.envelope)).collect();
        let (out, stored) = self
            .lock()
            .append(&batch, &digests, &self.quotas, true, false);
        if stored.is_empty() {
            return Ok(out);
        }
        let db = &self.db;
        let mut b = db.db.batch();
        let mut next: std::collections::HashMap<RecipientId, u64> =
            std::collections::HashMap::new();
        for s in &stored {
            let env = &batch[s.item].envelope;
            let mut v = Vec::with_capacity(20 + env.len());
            v.extend_from_slice(&millis(s.stored_at).to_be_bytes());
            v.extend_from_slice(&s.nonce);
            v.extend_from_slice(env);
            b.insert(&db.envelopes, env_key(&s.recipient_id, s.seq).to_vec(), v);
            next.insert(s.recipient_id, s.seq + 1);
        }
        for (rid, n) in &next {
            b.insert(&db.meta, rid.to_vec(), n.to_be_bytes().to_vec());
        }
        let written = self.fault().and_then(|()| {
            b.commit().map_err(|e| self.fail(e))?;
            db.db
                .persist(PersistMode::SyncAll)
                .map_err(|e| self.fail(e))
        });
        if let Err(e) = written {
            // Not stored: the sender gets an error, so the index must not count them.
            self.lock().unappend(&stored);
            return Err(e);
        }
        let mut g = self.lock();
        g.mark_durable(&stored);
        g.notify(&stored);
        self.checkpoint_dirty.store(true, Ordering::Relaxed);
        Ok(out)
    }

    fn delete_blocking(&self, rid: RecipientId) -> Result<bool, StoreError> {
        self.check()?;
        self.fault()?;
        let Some(_m) = self.lock().delete(&rid) else {
            return Ok(false);
        };
        let db = &self.db;
        let mut b = db.db.batch();
        b.remove(&db.mailboxes, rid.to_vec());
        b.remove(&db.meta, rid.to_vec());
        for ks in [&db.envelopes, &db.removed] {
            for kv in ks.prefix(rid) {
                let k = kv.key().map_err(|e| self.fail(e))?;
                b.remove(ks, k);
            }
        }
        b.commit().map_err(|e| self.fail(e))?;
        db.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.fail(e))?;
        self.checkpoint_dirty.store(true, Ordering::Relaxed);
        Ok(true)
    }

    fn fetch_blocking(
        &self,
        rid: RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let seqs = self.lock().pending_after(&rid, after, max);
        let mut out = Vec::with_capacity(seqs.len());
        for (seq, body) in seqs {
            if let Some(envelope) = body {
                out.push(StoredEnvelope { seq, envelope });
                continue;
            }
            // Stop at the first envelope the index lists but the database does not return, rather
            // than skip it: delivering a later one would let the recipient's cumulative ACK
            // cover an envelope it never saw. If it really was acknowledged or expired, the index
            // no longer lists it on the next fetch.
            let Some(v) = self.db.envelopes.get(env_key(&rid, seq)).map_err(backend)? else {
                break;
            };
            let v = Bytes::from(v);
            if v.len() < 20 {
                return Err(self.corrupt(format!("envelope {seq} of a mailbox is truncated")));
            }
            out.push(StoredEnvelope {
                seq,
                envelope: v.slice(20..),
            });
        }
        Ok(out)
    }
}

/// The deposit ids of the store's mailboxes (for benchmarks that need to address them).
pub fn deposit_ids(store: &DiskStore) -> Vec<DepositId> {
    store.lock().deposit_ids()
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

#[async_trait]
impl Store for DiskStore {
    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError> {
        self.check()?;
        self.check_space()?;
        let value = self.encode_record(&record)?;
        let rid = record.recipient_id;
        self.lock().create(record, &self.quotas)?;
        let s = self.clone();
        blocking(move || {
            let written = s.fault().and_then(|()| {
                s.db.mailboxes
                    .insert(rid.to_vec(), value)
                    .map_err(|e| s.fail(e))?;
                s.db.db.persist(PersistMode::SyncAll).map_err(|e| s.fail(e))
            });
            if written.is_err() {
                // Not stored: the index (and the mailbox gauge) must not list it.
                s.lock().delete(&rid);
            }
            written
        })
        .await
    }

    fn deposit_id_for(&self, recipient_id: &RecipientId) -> DepositId {
        self.prf.deposit_id(recipient_id)
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
        let (s, rid) = (self.clone(), *recipient_id);
        blocking(move || s.delete_blocking(rid)).await
    }

    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        let (s, batch) = (self.clone(), batch.to_vec());
        blocking(move || s.append_blocking(batch)).await
    }

    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        // The in-memory tail usually has all of it: no disk read, no hand-off to a thread.
        let seqs = self.lock().pending_after(recipient_id, after, max);
        if seqs.iter().all(|(_, b)| b.is_some()) {
            return Ok(seqs
                .into_iter()
                .filter_map(|(seq, body)| body.map(|envelope| StoredEnvelope { seq, envelope }))
                .collect());
        }
        let (s, rid) = (self.clone(), *recipient_id);
        blocking(move || s.fetch_blocking(rid, after, max)).await
    }

    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        let r = self
            .lock()
            .ack(recipient_id, upto, self.quotas.dedupe_window);
        let n = r.removed.len() as u64;
        self.write_removal(&r)?;
        Ok(n)
    }

    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError> {
        Ok(self.lock().pending(recipient_id))
    }

    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        self.lock().watch(recipient_id)
    }

    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        self.check()?;
        let r = self.lock().expire(cutoff, self.quotas.dedupe_window);
        let n = r.removed.len() as u64;
        self.write_removal(&r)?;
        Ok(n)
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

    fn health(&self) -> StoreHealth {
        StoreHealth {
            space: Some(self.space.check()),
            failed: self.failed.get().cloned(),
            recovery_shortfall: self.shortfall.envelopes,
            previous_failure_at: self.previous_failure.as_ref().map(|f| f.at_unix_secs),
            unavailable: None,
        }
    }
}

/// What recovery found besides the index.
struct Recovered {
    /// Compared with the checkpoint.
    shortfall: Shortfall,
    /// Mailboxes whose secrets are in the clear although a master key was given.
    clear: Vec<RecipientId>,
}

/// Writes the checkpoint from a snapshot of the index's high-water marks, taken under `lock`
/// so that of two writers the later one writes the newer snapshot.
fn write_checkpoint(dir: &Path, index: &Mutex<Index>, lock: &Mutex<()>) -> std::io::Result<()> {
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    let marks = index
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .high_water_marks();
    checkpoint::write(dir, &marks)
}

/// Records the first write failure (the store's failed state), logs it once and leaves the
/// marker for the next start (`evidence`): the relay exits at once, usually before a scrape
/// would see the failed gauge.
fn note_failure(failed: &OnceLock<String>, dir: &Path, e: &dyn std::fmt::Display) {
    let why = e.to_string();
    if failed.set(why.clone()).is_ok() {
        tracing::error!(
            error = %why,
            "a write to the store failed: refusing further writes; the relay exits so that it \
             restarts and recovers from disk"
        );
        if let Err(e) = evidence::record_failure(dir, &why) {
            tracing::warn!(
                error = %e,
                "cannot leave the store-failure marker for the next start (the disk may be \
                 failing); sealpost_store_previous_failure_timestamp_seconds will not show this \
                 failure"
            );
        }
    }
}

/// Reads, logs and removes the marker of a store failure that stopped the previous run.
fn take_previous_failure(dir: &Path) -> Option<evidence::PreviousFailure> {
    let f = evidence::read_failure(dir)?;
    tracing::error!(
        failed_at_unix_secs = f.at_unix_secs,
        error = %f.reason,
        "the previous run of this relay stopped because a store write failed; it recovered \
         from disk now. Check the data volume (space, I/O errors) if it happens again"
    );
    if let Err(e) = evidence::clear_failure(dir) {
        tracing::warn!(error = %e, "cannot remove the store-failure marker; the next start reports it again");
    }
    Some(f)
}
