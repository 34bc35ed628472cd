use super::keyring::{Keyring, KeyringError};
use super::slots::SlotFile;
use super::*;
use crate::store::Quotas;
use crate::store::disk::{DiskOptions, DiskStore};
use crate::store::memory::MemoryStore;
use bytes::Bytes;
use sealpost_core::Suite;
use sealpost_core::keys::RecipientSecret;
use std::path::Path;
use std::time::Instant;

const MASTER: [u8; 32] = [7; 32];

fn quotas() -> Quotas {
    Quotas {
        max_envelopes: 100,
        max_bytes: 1 << 20,
        max_mailboxes: 16,
        dedupe_window: 4,
    }
}

async fn open(dir: &Path, window: Duration) -> AtRest<MemoryStore> {
    let keyring = Keyring::open(
        &MASTER,
        Box::new(SlotFile::open(&dir.join("keys")).unwrap()),
    )
    .await
    .unwrap();
    let mut opts = AtRestOptions::new();
    opts.window = window;
    AtRest::new(MemoryStore::new(quotas()), keyring, opts)
}

async fn mailbox<S: Store>(s: &AtRest<S>, i: u8) -> DepositId {
    let did = s.deposit_id_for(&[i; 16]);
    s.create_mailbox(MailboxRecord::new(
        [i; 16],
        did,
        Suite::ChaCha20Poly1305,
        [1; 32],
        RecipientSecret([2; 32]),
    ))
    .await
    .unwrap();
    did
}

fn envelope(fill: u8) -> Bytes {
    // Distinct 32-byte windows throughout, so that the scan below means something.
    Bytes::from(
        (0..1060u32)
            .map(|i| (i as u8) ^ fill ^ (i >> 8) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn app(did: DepositId, nonce: u8, fill: u8) -> Append {
    Append {
        deposit_id: did,
        nonce: [nonce; 12],
        envelope: envelope(fill),
        not_after: None,
    }
}

fn shares_a_window(haystack: &[u8], envelope: &[u8]) -> bool {
    envelope
        .windows(32)
        .any(|w| haystack.windows(32).any(|h| h == w))
}

#[tokio::test]
async fn the_inner_store_sees_only_sealed_records_and_fetch_gives_the_envelopes_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    let b = mailbox(&s, 2).await;
    let batch = [app(a, 1, 1), app(b, 2, 2), app(a, 3, 3)];
    let out = s.append_batch(&batch).await.unwrap();
    assert_eq!(
        out,
        [
            AppendOutcome::Stored(1),
            AppendOutcome::Stored(1),
            AppendOutcome::Stored(2)
        ]
    );
    let raw = s.inner().fetch(&[1; 16], 0, 10).await.unwrap();
    assert_eq!(raw.len(), 2);
    for r in &raw {
        assert!(record::is_sealed(&r.envelope));
        assert_eq!(r.envelope.len(), 1060 + record::OVERHEAD);
        for e in &batch {
            assert!(!shares_a_window(&r.envelope, &e.envelope));
        }
    }
    let got = s.fetch(&[1; 16], 0, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].envelope, batch[0].envelope);
    assert_eq!(got[1].envelope, batch[2].envelope);
    assert_eq!(
        s.fetch(&[2; 16], 0, 10).await.unwrap()[0].envelope,
        batch[1].envelope
    );
    // One key per shard used in this window, and it survives a restart of the keyring.
    let shards: std::collections::HashSet<u8> = [shard_of(&a), shard_of(&b)].into();
    assert_eq!(s.keyring().len(), shards.len());
    let again = Keyring::open(
        &MASTER,
        Box::new(SlotFile::open(&dir.path().join("keys")).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(again.len(), shards.len());
}

/// The duplicate check still tells a byte-identical retry from another envelope under the
/// same sender nonce, while the envelope is held and after it was acknowledged.
#[tokio::test]
async fn retries_are_duplicates_and_reused_nonces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    assert_eq!(
        s.append_batch(&[app(a, 1, 1)]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 1, 9)]).await.unwrap(),
        [AppendOutcome::Duplicate, AppendOutcome::IdReused]
    );
    s.ack(&[1; 16], 1).await.unwrap();
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 1, 9)]).await.unwrap(),
        [AppendOutcome::Duplicate, AppendOutcome::IdReused]
    );
}

#[tokio::test]
async fn a_record_opens_only_in_its_own_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    let b = mailbox(&s, 2).await;
    s.append_batch(&[app(a, 1, 1)]).await.unwrap();
    let raw = s.inner().fetch(&[1; 16], 0, 1).await.unwrap();
    let epoch = record::epoch_of(&raw[0].envelope).unwrap();
    let key = s.keyring().get(&epoch).unwrap();
    let engine = Engine::detect();
    let open = |did: &DepositId| {
        record::open_batch(
            &engine,
            &[record::ToOpen {
                deposit_id: did,
                stored: &raw[0].envelope,
                key: Some(&key),
            }],
        )
        .remove(0)
    };
    assert_eq!(open(&a).unwrap(), envelope(1));
    assert_eq!(open(&b), Err(record::OpenFailure::Damaged));
}

/// Once the window is over and the mailboxes are drained, the sweep destroys the key: the
/// keyring file no longer holds it, and what the inner store may still hold of the records
/// (here: nothing; on a disk: free blocks) can no longer be opened.
#[tokio::test]
async fn a_drained_epoch_loses_its_key_and_a_held_one_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Duration::from_secs(1)).await;
    let a = mailbox(&s, 1).await;
    // A second mailbox in the same shard keeps the epoch open while it holds an envelope.
    let mut i = 2;
    let b = loop {
        let did = s.deposit_id_for(&[i; 16]);
        if shard_of(&did) == shard_of(&a) {
            break mailbox(&s, i).await;
        }
        i += 1;
    };
    s.append_batch(&[app(a, 1, 1), app(b, 2, 2)]).await.unwrap();
    let raw = s.inner().fetch(&[1; 16], 0, 1).await.unwrap();
    let epoch = record::epoch_of(&raw[0].envelope).unwrap();
    // The dedupe key's slot, then the epoch's.
    let keyfile = std::fs::read(dir.path().join("keys")).unwrap();
    assert_eq!(keyfile.len(), 2 * slots::SLOT_LEN);
    s.ack(&[1; 16], 1).await.unwrap();
    // Wait for the window to end (wall time is the signal here), then sweep: `b` still holds
    // an envelope of the epoch.
    let deadline = Instant::now() + Duration::from_secs(5);
    while unix(SystemTime::now()) < epoch.start + 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.sweep().await.unwrap(), 0);
    assert!(s.keyring().get(&epoch).is_some());
    s.ack(&[i; 16], 1).await.unwrap();
    assert_eq!(s.sweep().await.unwrap(), 1);
    assert!(s.keyring().get(&epoch).is_none());
    let keyfile_after = std::fs::read(dir.path().join("keys")).unwrap();
    assert_eq!(keyfile_after[..slots::SLOT_LEN], keyfile[..slots::SLOT_LEN]);
    assert_eq!(keyfile_after[slots::SLOT_LEN..], [0u8; slots::SLOT_LEN]);
    assert_ne!(keyfile, keyfile_after);
    // A record of the destroyed epoch (a copy left somewhere) no longer opens.
    let r = record::open_batch(
        &Engine::detect(),
        &[record::ToOpen {
            deposit_id: &a,
            stored: &raw[0].envelope,
            key: s.keyring().get(&epoch).as_ref(),
        }],
    );
    assert_eq!(r[0], Err(record::OpenFailure::KeyGone));
    // New deposits go on in a new epoch.
    assert_eq!(
        s.append_batch(&[app(a, 3, 3)]).await.unwrap(),
        [AppendOutcome::Stored(2)]
    );
    assert_eq!(
        s.fetch(&[1; 16], 0, 5).await.unwrap()[0].envelope,
        envelope(3)
    );
}

#[tokio::test]
async fn another_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    s.append_batch(&[app(a, 1, 1)]).await.unwrap();
    let e = Keyring::open(
        &[8; 32],
        Box::new(SlotFile::open(&dir.path().join("keys")).unwrap()),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(e, KeyringError::WrongMasterKey { count: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("wrong master key"), "{e}");
}

/// Envelopes stored before at-rest encryption was turned on are passed through as they are.
#[tokio::test]
async fn plain_envelopes_from_before_are_delivered_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    let mut plain = app(a, 1, 1);
    let mut bytes = plain.envelope.to_vec();
    bytes[0] = 1;
    plain.envelope = Bytes::from(bytes);
    s.inner().append_batch(&[plain.clone()]).await.unwrap();
    s.append_batch(&[app(a, 2, 2)]).await.unwrap();
    let got = s.fetch(&[1; 16], 0, 5).await.unwrap();
    assert_eq!(got[0].envelope, plain.envelope);
    assert_eq!(got[1].envelope, envelope(2));
}

/// rotate-master-key re-wraps the keyring in place: the new key opens it, the old one no
/// longer does, and running it again changes nothing.
#[tokio::test]
async fn a_master_key_rotation_rewraps_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    let a = mailbox(&s, 1).await;
    s.append_batch(&[app(a, 1, 1)]).await.unwrap();
    let path = dir.path().join("keys");
    let new = [8u8; 32];
    // One epoch key and the dedupe key.
    assert_eq!(slots::rotate_master_key(&path, &MASTER, &new).unwrap(), 2);
    assert_eq!(slots::rotate_master_key(&path, &MASTER, &new).unwrap(), 0);
    let k = Keyring::open(&new, Box::new(SlotFile::open(&path).unwrap()))
        .await
        .unwrap();
    assert_eq!(k.len(), 1);
    let old = Keyring::open(&MASTER, Box::new(SlotFile::open(&path).unwrap())).await;
    assert!(matches!(old, Err(KeyringError::WrongMasterKey { .. })));
}

/// A stored record cut short (a damaged disk) is reported as damaged, never a panic.
#[test]
fn a_truncated_record_is_damaged_not_a_panic() {
    let key = Arc::new(keyring::EpochKey::from_root(&[3; 32]));
    let did = [4u8; 16];
    for len in [
        1,
        5,
        record::HEADER_LEN,
        record::OVERHEAD - 1,
        record::OVERHEAD,
    ] {
        let mut b = vec![0u8; len];
        b[0] = record::FORMAT;
        let stored = Bytes::from(b);
        let got = record::open_batch(
            &Engine::detect(),
            &[record::ToOpen {
                deposit_id: &did,
                stored: &stored,
                key: Some(&key),
            }],
        );
        assert_eq!(got, [Err(record::OpenFailure::Damaged)], "{len} bytes");
    }
}

/// Moves the store's clock floor past the current window, so that the next append seals
/// under the next epoch's key: a window boundary without waiting for the wall clock.
fn next_window<S: Store>(s: &AtRest<S>) {
    let w = s.window_secs();
    let mut u = s.uses();
    let now = unix(SystemTime::now()).max(u.floor);
    u.floor = now - now % w + w;
}

/// The epochs of the records mailbox `rid` holds, oldest first.
async fn held_epochs<S: Store>(s: &AtRest<S>, rid: u8) -> Vec<EpochId> {
    s.inner()
        .fetch(&[rid; 16], 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| record::epoch_of(&r.envelope).unwrap())
        .collect()
}

/// Stores one envelope, then moves to the next epoch: a byte-identical retry there must be
/// DUPLICATE and stored nothing, another envelope under the same nonce ID_REUSED, both while
/// the envelope is held and after it was acknowledged (the dedupe window).
async fn retries_across_epochs<S: Store>(s: &AtRest<S>, rid: u8) {
    let a = mailbox(s, rid).await;
    assert_eq!(
        s.append_batch(&[app(a, 1, 1)]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    let first = held_epochs(s, rid).await;
    next_window(s);
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 1, 9), app(a, 2, 2)])
            .await
            .unwrap(),
        [
            AppendOutcome::Duplicate,
            AppendOutcome::IdReused,
            AppendOutcome::Stored(2)
        ]
    );
    // The new envelope really went into another epoch, and the retry was stored once.
    let held = held_epochs(s, rid).await;
    assert_eq!(held.len(), 2);
    assert_eq!(held[0], first[0]);
    assert_ne!(held[1], first[0]);
    assert_eq!(s.pending(&[rid; 16]).await.unwrap(), 2);
    let got = s.fetch(&[rid; 16], 0, 10).await.unwrap();
    assert_eq!(got[0].envelope, envelope(1));
    assert_eq!(got[1].envelope, envelope(2));
    // Acknowledged, the envelopes are in the dedupe window only; a third epoch changes
    // nothing.
    s.ack(&[rid; 16], 2).await.unwrap();
    next_window(s);
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 2, 9), app(a, 2, 2)])
            .await
            .unwrap(),
        [
            AppendOutcome::Duplicate,
            AppendOutcome::IdReused,
            AppendOutcome::Duplicate
        ]
    );
    assert_eq!(s.pending(&[rid; 16]).await.unwrap(), 0);
}

#[tokio::test]
async fn a_retry_in_another_epoch_is_a_duplicate_in_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DEFAULT_WINDOW).await;
    retries_across_epochs(&s, 1).await;
}

async fn open_disk(dir: &Path) -> AtRest<DiskStore> {
    open_disk_under(dir, &MASTER).await
}

async fn open_disk_under(dir: &Path, master: &[u8; 32]) -> AtRest<DiskStore> {
    let keyring = Keyring::open(master, Box::new(SlotFile::open(&dir.join("keys")).unwrap()))
        .await
        .unwrap();
    let store = DiskStore::open(&dir.join("store"), quotas(), DiskOptions::default()).unwrap();
    AtRest::new(store, keyring, AtRestOptions::new())
}

#[tokio::test]
async fn a_retry_in_another_epoch_is_a_duplicate_in_the_disk_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_disk(dir.path()).await;
    retries_across_epochs(&s, 1).await;
}

/// Stores two envelopes in a disk store at `dir` under `MASTER` and acknowledges the first,
/// then closes the store: one in the dedupe window, one held, for a retry after a restart.
async fn store_two_and_close(dir: &Path) -> DepositId {
    let s = open_disk(dir).await;
    let a = mailbox(&s, 1).await;
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 2, 2)]).await.unwrap(),
        [AppendOutcome::Stored(1), AppendOutcome::Stored(2)]
    );
    s.ack(&[1; 16], 1).await.unwrap();
    s.inner().close(Duration::from_secs(10)).unwrap();
    a
}

/// Retries of both envelopes of [`store_two_and_close`] are DUPLICATE and other envelopes
/// under their nonces ID_REUSED; nothing more is stored.
async fn retries_after_the_restart<S: Store>(s: &AtRest<S>, a: DepositId) {
    // Nonce 1 is in the dedupe window (acknowledged), nonce 2 still held.
    assert_eq!(
        s.append_batch(&[app(a, 1, 1), app(a, 1, 9), app(a, 2, 2), app(a, 2, 9)])
            .await
            .unwrap(),
        [
            AppendOutcome::Duplicate,
            AppendOutcome::IdReused,
            AppendOutcome::Duplicate,
            AppendOutcome::IdReused
        ]
    );
    assert_eq!(s.pending(&[1; 16]).await.unwrap(), 1);
    assert_eq!(
        s.fetch(&[1; 16], 0, 5).await.unwrap()[0].envelope,
        envelope(2)
    );
}

/// The disk store rebuilds its dedupe state from the records on disk at a restart: the
/// digests it recomputes are the records' own, so a retry after the restart, in another
/// epoch, is still told apart from a reused nonce.
#[tokio::test]
async fn a_retry_after_a_disk_restart_in_another_epoch_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = store_two_and_close(dir.path()).await;
    let s = open_disk(dir.path()).await;
    next_window(&s);
    retries_after_the_restart(&s, a).await;
}

/// The dedupe tag and digest depend on the dedupe key, the mailbox and what they cover, and
/// not on any epoch key.
#[test]
fn the_dedupe_key_binds_the_mailbox_and_what_it_covers() {
    let k = keyring::DedupeKey::from_bytes(&[7; 32]);
    let again = keyring::DedupeKey::from_bytes(&[7; 32]);
    let other = keyring::DedupeKey::from_bytes(&[8; 32]);
    let (a, b) = ([1u8; 16], [2u8; 16]);
    assert_eq!(k.nonce_tag(&a, &[1; 12]), again.nonce_tag(&a, &[1; 12]));
    assert_ne!(k.nonce_tag(&a, &[1; 12]), k.nonce_tag(&b, &[1; 12]));
    assert_ne!(k.nonce_tag(&a, &[1; 12]), k.nonce_tag(&a, &[2; 12]));
    assert_ne!(k.nonce_tag(&a, &[1; 12]), other.nonce_tag(&a, &[1; 12]));
    let e = envelope(1);
    assert_eq!(k.envelope_digest(&a, &e), again.envelope_digest(&a, &e));
    assert_ne!(k.envelope_digest(&a, &e), k.envelope_digest(&b, &e));
    assert_ne!(
        k.envelope_digest(&a, &e),
        k.envelope_digest(&a, &envelope(2))
    );
    assert_ne!(k.envelope_digest(&a, &e), other.envelope_digest(&a, &e));
}

/// A new keyring's dedupe key is the master key's derived one, kept in the keyring: reopening
/// finds it, and it is never an epoch (no sweep sees it, it is not counted as a live key).
#[tokio::test]
async fn the_dedupe_key_is_kept_in_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let first = Keyring::open(&MASTER, Box::new(SlotFile::open(&path).unwrap()))
        .await
        .unwrap();
    assert!(first.is_empty());
    assert!(first.epochs().is_empty());
    assert_eq!(dedupe_tag(&first), derived_tag(&MASTER));
    use keyring::KeyringStore as _;
    let kept = SlotFile::open(&path).unwrap().load().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].epoch, keyring::DEDUPE_SLOT);
}

fn dedupe_tag(k: &Keyring) -> [u8; 12] {
    k.dedupe().nonce_tag(&[1; 16], &[1; 12])
}

fn derived_tag(master: &[u8; 32]) -> [u8; 12] {
    keyring::DedupeKey::derived(master).nonce_tag(&[1; 16], &[1; 12])
}

/// A keyring file as a relay from before the dedupe key was kept in the keyring left it: one
/// epoch key, no dedupe entry.
async fn keyring_from_before(path: &Path) {
    let k = Keyring::open(&MASTER, Box::new(SlotFile::open(path).unwrap()))
        .await
        .unwrap();
    k.get_or_make(EpochId { start: 0, shard: 1 }, 60)
        .await
        .unwrap();
    drop(k);
    let file = SlotFile::open(path).unwrap();
    use keyring::KeyringStore as _;
    assert_eq!(file.load().await.unwrap().len(), 2);
    file.remove(keyring::DEDUPE_SLOT).await.unwrap();
}

/// A keyring made before the dedupe key was kept in it goes on with the key it was derived
/// to, so that retries of what it stored are still recognised: at its next start, and after a
/// rotate-master-key run before any start (which keeps the old master key's derived key, not
/// the new one's).
#[tokio::test]
async fn a_keyring_from_before_keeps_the_derived_dedupe_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    keyring_from_before(&path).await;
    let k = Keyring::open(&MASTER, Box::new(SlotFile::open(&path).unwrap()))
        .await
        .unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(dedupe_tag(&k), derived_tag(&MASTER));

    let rotated = tempfile::tempdir().unwrap();
    let path = rotated.path().join("keys");
    keyring_from_before(&path).await;
    let new = [8u8; 32];
    // The epoch key re-wrapped, and the dedupe entry added under the new key.
    assert_eq!(slots::rotate_master_key(&path, &MASTER, &new).unwrap(), 2);
    assert_eq!(slots::rotate_master_key(&path, &MASTER, &new).unwrap(), 0);
    let k = Keyring::open(&new, Box::new(SlotFile::open(&path).unwrap()))
        .await
        .unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(dedupe_tag(&k), derived_tag(&MASTER));
}

/// A retry that spans a rotate-master-key (the relay stopped, the keyring re-wrapped, the
/// relay started under the new key) is still DUPLICATE, and another envelope under its nonce
/// still ID_REUSED: the dedupe key moved with the keyring, it did not follow the master key.
#[tokio::test]
async fn a_retry_across_a_master_key_rotation_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = store_two_and_close(dir.path()).await;
    let new = [9u8; 32];
    // One epoch key and the dedupe key.
    assert_eq!(
        slots::rotate_master_key(&dir.path().join("keys"), &MASTER, &new).unwrap(),
        2
    );
    let s = open_disk_under(dir.path(), &new).await;
    retries_after_the_restart(&s, a).await;
}

/// A memory store that enforces deadlines the way a shared store does, with a clock ahead of
/// the relay's: it refuses ([`AppendOutcome::Late`]) every append whose deadline is not later
/// than the first deadline it saw, and records the deadlines it got (appends without one are
/// simply stored). Its listing of heads fails when `heads_fail` (a cluster node down).
struct AheadStore {
    inner: MemoryStore,
    first: Mutex<Option<SystemTime>>,
    seen: Mutex<Vec<Option<SystemTime>>>,
    heads_fail: bool,
}

impl AheadStore {
    fn new(heads_fail: bool) -> Self {
        Self {
            inner: MemoryStore::new(quotas()),
            first: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            heads_fail,
        }
    }
}

#[async_trait]
impl Store for AheadStore {
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
    async fn mailbox(&self, rid: &RecipientId) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        self.inner.mailbox(rid).await
    }
    async fn delete_mailbox(&self, rid: &RecipientId) -> Result<bool, StoreError> {
        self.inner.delete_mailbox(rid).await
    }
    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        self.seen
            .lock()
            .unwrap()
            .extend(batch.iter().map(|a| a.not_after));
        let Some(deadline) = batch[0].not_after else {
            return self.inner.append_batch(batch).await;
        };
        let first = *self.first.lock().unwrap().get_or_insert(deadline);
        let (late, fine): (Vec<&Append>, Vec<&Append>) =
            batch.iter().partition(|a| a.not_after <= Some(first));
        let mut stored = self
            .inner
            .append_batch(&fine.into_iter().cloned().collect::<Vec<_>>())
            .await?
            .into_iter();
        Ok(batch
            .iter()
            .map(|a| {
                if late.iter().any(|l| std::ptr::eq(*l, a)) {
                    AppendOutcome::Late
                } else {
                    stored.next().unwrap_or(AppendOutcome::UnknownMailbox)
                }
            })
            .collect())
    }
    async fn fetch(
        &self,
        rid: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        self.inner.fetch(rid, after, max).await
    }
    async fn ack(&self, rid: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        self.inner.ack(rid, upto).await
    }
    async fn pending(&self, rid: &RecipientId) -> Result<u64, StoreError> {
        self.inner.pending(rid).await
    }
    fn watch(&self, rid: &RecipientId) -> Option<watch::Receiver<u64>> {
        self.inner.watch(rid)
    }
    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        self.inner.expire(cutoff).await
    }
    async fn stats(&self) -> StoreStats {
        self.inner.stats().await
    }
    async fn held_heads(&self) -> Result<Option<HeldHeads>, StoreError> {
        if self.heads_fail {
            return Err(StoreError::Backend("a node is down".into()));
        }
        self.inner.held_heads().await
    }
}

/// A listing that fails does not keep keys past the hard bound (window end + retention + a
/// window + the settle grace): a cluster node that stays down must not hold every key.
#[tokio::test]
async fn a_failing_listing_leaves_the_hard_bound_to_close_epochs() {
    let keyring = Keyring::open(&MASTER, Box::new(keyring::VolatileKeys::default()))
        .await
        .unwrap();
    let mut opts = AtRestOptions::new();
    opts.window = Duration::from_secs(1);
    opts.retention = Duration::ZERO;
    opts.shared = Some(Duration::ZERO);
    // A store that refuses nothing (every deadline is later than the epoch) but lists nothing.
    let inner = AheadStore {
        first: Mutex::new(Some(UNIX_EPOCH)),
        ..AheadStore::new(true)
    };
    let s = AtRest::new(inner, keyring, opts);
    let a = mailbox(&s, 1).await;
    assert_eq!(
        s.append_batch(&[app(a, 1, 1)]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    assert_eq!(s.keyring().len(), 1);
    // The bound is a second past the window's end, by the wall clock: poll for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut destroyed = 0;
    while destroyed == 0 {
        assert!(
            Instant::now() < deadline,
            "the hard bound did not close the epoch"
        );
        destroyed = s
            .sweep()
            .await
            .expect("a failing listing does not fail the sweep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.keyring().len(), 0);
}

/// On a shared store every append carries its epoch's deadline (window end plus the settle
/// grace); one the store refuses as late is sealed again under the next epoch, once, and
/// stored: the sender never sees the refusal, and later appends go to the next window too.
#[tokio::test]
async fn an_envelope_refused_as_late_by_a_shared_store_is_sealed_under_the_next_epoch() {
    let keyring = Keyring::open(&MASTER, Box::new(keyring::VolatileKeys::default()))
        .await
        .unwrap();
    let mut opts = AtRestOptions::new();
    let settle = Duration::from_secs(7);
    opts.shared = Some(settle);
    let inner = AheadStore::new(false);
    let s = AtRest::new(inner, keyring, opts);
    let a = mailbox(&s, 1).await;
    let out = s.append_batch(&[app(a, 1, 1), app(a, 2, 2)]).await.unwrap();
    assert_eq!(out, [AppendOutcome::Stored(1), AppendOutcome::Stored(2)]);
    // Sealed under the next window, whose deadline is one window later.
    let held = held_epochs(&s, 1).await;
    let w = DEFAULT_WINDOW.as_secs();
    let seen = s.inner().seen.lock().unwrap().clone();
    let first = seen[0].unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[1], Some(first));
    assert_eq!(seen[2], Some(first + DEFAULT_WINDOW));
    assert_eq!(seen[3], Some(first + DEFAULT_WINDOW));
    let first_end = first - settle;
    let end_secs = first_end.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        held,
        [EpochId {
            start: end_secs,
            shard: shard_of(&a)
        }; 2]
    );
    assert_eq!(end_secs % w, 0);
    let got = s.fetch(&[1; 16], 0, 10).await.unwrap();
    assert_eq!(got[0].envelope, envelope(1));
    assert_eq!(got[1].envelope, envelope(2));
    // The relay stays in the next window: the next append is not refused.
    assert_eq!(
        s.append_batch(&[app(a, 3, 3)]).await.unwrap(),
        [AppendOutcome::Stored(3)]
    );
    assert_eq!(s.inner().seen.lock().unwrap().len(), 5);
}

/// The memory and disk stores need no deadline: only this process appends to them.
#[tokio::test]
async fn a_local_store_gets_no_deadline() {
    let keyring = Keyring::open(&MASTER, Box::new(keyring::VolatileKeys::default()))
        .await
        .unwrap();
    let inner = AheadStore::new(false);
    let s = AtRest::new(inner, keyring, AtRestOptions::new());
    let a = mailbox(&s, 1).await;
    assert_eq!(
        s.append_batch(&[app(a, 1, 1)]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    assert_eq!(*s.inner().seen.lock().unwrap(), [None]);
}
