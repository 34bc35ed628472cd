//! Epoch keys: made from the relay's CSPRNG, used from memory, kept durably only wrapped
//! (ChaCha20-Poly1305) under a key derived from the master key, and destroyed for good.
//!
//! Where the wrapped keys live is a [`KeyringStore`]: a file of fixed slots overwritten in
//! place for the disk and memory stores (`slots`), a Valkey hash for the cluster store
//! (`valkey`), in memory for the memory store. In memory a key is an [`EpochKey`], wiped when dropped.

use super::record::EpochId;
use crate::store::record::{self as secrets, RecordError};
use async_trait::async_trait;
use sealpost_core::{AeadKey, DepositId, Suite};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// A wrapped key's length: nonce (12) ‖ ciphertext (32) ‖ tag (16).
pub const WRAPPED_LEN: usize = 12 + 32 + 16;

/// One epoch's keys, derived from its random root key. Both are wiped on drop.
pub struct EpochKey {
    seal: AeadKey,
    siv: Zeroizing<[u8; 32]>,
}

fn hkdf(secret: &[u8; 32], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(secret);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[info], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut k[..]))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    k
}

impl EpochKey {
    /// The keys derived from `root`.
    pub fn from_root(root: &[u8; 32]) -> Self {
        Self {
            seal: AeadKey::new(
                Suite::ChaCha20Poly1305,
                *hkdf(root, b"sealpost/1 epoch", b"seal"),
            ),
            siv: hkdf(root, b"sealpost/1 epoch", b"siv"),
        }
    }

    /// The key records are sealed under.
    pub fn seal_key(&self) -> &AeadKey {
        &self.seal
    }

    /// The synthetic nonce of a record: a PRF of what it binds. The AAD already carries the
    /// envelope's dedupe digest (a keyed 128-bit hash of the mailbox and the envelope), so the
    /// envelope itself is not hashed a second time: two records share a nonce under one key
    /// only when they share mailbox, epoch and digest, that is, the same envelope.
    pub fn synthetic_nonce(&self, aad: &[u8]) -> [u8; 12] {
        let t = mac(&self.siv, &[b"nonce", aad]);
        let mut out = [0u8; 12];
        out.copy_from_slice(&t[..12]);
        out
    }
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // ring keeps the HMAC pads on the stack for this call only; they are not wiped, but they
    // never outlive the call.
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The key of duplicate detection. Unlike an epoch key it lives as long as the store: a
/// sender's retry must be recognised whichever epoch (time window, or relay of a cluster) it
/// lands in, and across a `rotate-master-key`, so neither what the inner store keeps instead of
/// the sender nonce nor the digest it compares may depend on the epoch or on the current
/// master key. It is derived from the master key the keyring first had ([`dedupe_entry`]) and
/// kept in the keyring (wrapped under the master key, in the reserved slot [`DEDUPE_SLOT`],
/// never destroyed by a sweep, re-wrapped by a rotation). docs/AT-REST.md says what this costs after
/// shredding. Wiped on drop.
pub struct DedupeKey(Zeroizing<[u8; 32]>);

/// The keyring entry that holds the [`DedupeKey`]: shard 255 is no shard of the mailboxes
/// (there are [`super::SHARDS`]), so no epoch ever takes it.
pub const DEDUPE_SLOT: EpochId = EpochId {
    start: 0,
    shard: 0xFF,
};
/// The "window end" stored with the dedupe key (it has none).
const DEDUPE_END: u64 = u64::MAX;

impl DedupeKey {
    /// The dedupe key derived from `master`: what a keyring without a dedupe entry gets
    /// ([`dedupe_entry`]).
    pub fn derived(master: &[u8; 32]) -> Self {
        Self(hkdf(master, b"sealpost/1 at-rest", b"sealpost/1 dedupe"))
    }

    /// A dedupe key of these 32 bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*key))
    }

    /// What the inner store keeps instead of the sender's nonce (its duplicate-detection
    /// key): a PRF of the mailbox and the sender nonce, the same in every epoch.
    pub fn nonce_tag(&self, deposit_id: &DepositId, nonce: &[u8; 12]) -> [u8; 12] {
        let t = mac(&self.0, &[b"nonce tag", deposit_id, nonce]);
        let mut out = [0u8; 12];
        out.copy_from_slice(&t[..12]);
        out
    }

    /// The digest a record carries for the inner store to compare instead of a digest of the
    /// record (which differs between epochs): a PRF of the mailbox and the envelope as
    /// received, so that a byte-identical retry matches in any epoch and another envelope
    /// under the same nonce does not.
    pub fn envelope_digest(&self, deposit_id: &DepositId, envelope: &[u8]) -> [u8; 16] {
        let t = mac(&self.0, &[b"envelope digest", deposit_id, envelope]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&t[..16]);
        out
    }
}

/// A wrapped epoch key as a [`KeyringStore`] keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Its epoch.
    pub epoch: EpochId,
    /// When the epoch's window ends, Unix seconds.
    pub end: u64,
    /// The root key, sealed under the keyring key.
    pub wrapped: [u8; WRAPPED_LEN],
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("epoch", &self.epoch)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Why the keyring failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the keyring failed.
    #[error("the at-rest keyring {place}: {why}")]
    Io {
        /// Which keyring (a file, a Valkey key).
        place: String,
        /// What failed.
        why: String,
    },
    /// The dedupe key in the keyring does not open while epoch keys do.
    #[error(
        "the at-rest dedupe key in {place} does not open under the master key while epoch keys do: a rotate-master-key was interrupted (run it again with the same keys)"
    )]
    DedupeKey {
        /// Which keyring.
        place: String,
    },
    /// The master key opens none of the wrapped keys.
    #[error(
        "the master key opens none of the {count} epoch keys in the at-rest keyring {place}: wrong master key? Give the key the store was written with"
    )]
    WrongMasterKey {
        /// Which keyring.
        place: String,
        /// Wrapped keys found.
        count: usize,
    },
    /// The operating system's random source failed.
    #[error("cannot draw a random epoch key: {0}")]
    Random(String),
}

/// Where wrapped keys are kept durably.
#[async_trait]
pub trait KeyringStore: Send + Sync + 'static {
    /// Every wrapped key kept.
    async fn load(&self) -> Result<Vec<StoredKey>, KeyringError>;
    /// Keeps `key` unless a key for its epoch is kept already (another relay sharing the
    /// keyring made one first), returning once it is durable; answers the key kept.
    async fn put(&self, key: &StoredKey) -> Result<StoredKey, KeyringError>;
    /// The key of `epoch` if kept (one another relay made since this one loaded the keyring);
    /// a keyring only this relay uses has nothing to add.
    async fn find(&self, epoch: EpochId) -> Result<Option<StoredKey>, KeyringError> {
        let _ = epoch;
        Ok(None)
    }
    /// Removes the key of `epoch` so that no copy stays where the store can reach it
    /// (overwritten in place, or deleted and the append-only log rewritten).
    async fn remove(&self, epoch: EpochId) -> Result<(), KeyringError>;
    /// Finishes what destructions left to do (the cluster keyring rewrites Valkey's
    /// append-only files once per sweep, not once per key); called after every sweep.
    async fn settle(&self) {}
    /// Where the keys are, for messages.
    fn describe(&self) -> String;
}

/// The key that wraps epoch keys, derived from the master key.
pub fn wrapping_key(master: &[u8; 32]) -> AeadKey {
    AeadKey::new(
        Suite::ChaCha20Poly1305,
        *hkdf(master, b"sealpost/1 at-rest", b"sealpost/1 keyring"),
    )
}

/// Re-wraps one stored key from the `old` wrapping key to the `new` one; `None` if it is
/// under `new` already (a rotation run again), an error if neither opens it.
pub fn rewrap(
    k: &StoredKey,
    old: &AeadKey,
    new: &AeadKey,
) -> Result<Option<[u8; WRAPPED_LEN]>, String> {
    let sealed = secrets::reseal(old, new, &wrap_aad(k.epoch, k.end), &k.wrapped, 32).map_err(
        |e| match e {
            RecordError::WrongMasterKey => format!(
                "epoch key of shard {} from {} opens under neither master key",
                k.epoch.shard, k.epoch.start
            ),
            other => other.to_string(),
        },
    )?;
    Ok(sealed.map(|s| {
        let mut w = [0u8; WRAPPED_LEN];
        w.copy_from_slice(&s);
        w
    }))
}

fn wrap_aad(epoch: EpochId, end: u64) -> [u8; 40] {
    let mut a = [0u8; 40];
    a[..21].copy_from_slice(b"sealpost/1 epoch key ");
    a[21] = epoch.shard;
    a[22..30].copy_from_slice(&epoch.start.to_be_bytes());
    a[30..38].copy_from_slice(&end.to_be_bytes());
    a
}

/// Opens a wrapped 32-byte secret of the keyring.
fn unwrap_secret(wrap: &AeadKey, k: &StoredKey) -> Result<Zeroizing<[u8; 32]>, RecordError> {
    let mut root = Zeroizing::new([0u8; 32]);
    secrets::open(wrap, &wrap_aad(k.epoch, k.end), &k.wrapped, &mut root[..])?;
    Ok(root)
}

/// The keyring entry of the dedupe key that a keyring without one gets: the key derived from
/// `master`, wrapped under `wrap` (the keyring key of the master key the keyring is, or is
/// about to be, under). Derived rather than drawn, so that a store from before the dedupe key
/// was kept in the keyring (its digests and tags made with the derived key, maybe all its
/// epochs shredded since) goes on with the same key; from then on it is kept, and a master-key
/// rotation re-wraps it instead of changing it.
pub fn dedupe_entry(master: &[u8; 32], wrap: &AeadKey) -> Result<StoredKey, String> {
    let secret = DedupeKey::derived(master);
    let sealed = secrets::seal(wrap, &wrap_aad(DEDUPE_SLOT, DEDUPE_END), &secret.0[..])?;
    let mut wrapped = [0u8; WRAPPED_LEN];
    wrapped.copy_from_slice(&sealed);
    Ok(StoredKey {
        epoch: DEDUPE_SLOT,
        end: DEDUPE_END,
        wrapped,
    })
}

/// Keeps the keyring's dedupe entry ([`dedupe_entry`]) durably (before any envelope is stored
/// with it); answers the key kept, which another relay sharing the keyring may have put first.
async fn make_dedupe(
    master: &[u8; 32],
    wrap: &AeadKey,
    store: &dyn KeyringStore,
) -> Result<DedupeKey, KeyringError> {
    let io = |why: String| KeyringError::Io {
        place: store.describe(),
        why,
    };
    let kept = store.put(&dedupe_entry(master, wrap).map_err(io)?).await?;
    let k = unwrap_secret(wrap, &kept).map_err(|e| {
        io(format!(
            "the dedupe key another relay kept does not open under this relay's master key ({e}): every relay of a deployment needs the same master key"
        ))
    })?;
    Ok(DedupeKey::from_bytes(&k))
}

/// A live epoch key with the end of its window.
struct Live {
    key: Arc<EpochKey>,
    end: u64,
}

/// The epoch keys in memory, backed by a [`KeyringStore`].
pub struct Keyring {
    wrap: AeadKey,
    dedupe: DedupeKey,
    store: Box<dyn KeyringStore>,
    live: Mutex<HashMap<EpochId, Live>>,
    /// Held while a key is made, so two batches never make two keys for one epoch.
    making: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// Loads every wrapped key from `store` and unwraps it under the master key. Keys that do
    /// not unwrap are logged and left alone; if none unwraps, the master key is wrong.
    pub async fn open(
        master: &[u8; 32],
        store: Box<dyn KeyringStore>,
    ) -> Result<Self, KeyringError> {
        let wrap = wrapping_key(master);
        let mut stored = store.load().await?;
        let dedupe_at = stored.iter().position(|s| s.epoch == DEDUPE_SLOT);
        let dedupe_kept = dedupe_at.map(|i| stored.swap_remove(i));
        let mut live = HashMap::new();
        let mut bad = Vec::new();
        for s in &stored {
            let mut root = Zeroizing::new([0u8; 32]);
            match secrets::open(&wrap, &wrap_aad(s.epoch, s.end), &s.wrapped, &mut root[..]) {
                Ok(()) => {
                    live.insert(
                        s.epoch,
                        Live {
                            key: Arc::new(EpochKey::from_root(&root)),
                            end: s.end,
                        },
                    );
                }
                Err(RecordError::Backend(why)) => {
                    return Err(KeyringError::Io {
                        place: store.describe(),
                        why,
                    });
                }
                Err(_) => bad.push(s.epoch),
            }
        }
        if live.is_empty() && !bad.is_empty() {
            return Err(KeyringError::WrongMasterKey {
                place: store.describe(),
                count: bad.len(),
            });
        }
        if !bad.is_empty() {
            // Left in place rather than removed: a master-key rotation interrupted half-way
            // leaves slots under the other key, and running it again must find them.
            tracing::warn!(
                keys = bad.len(),
                "epoch keys in the at-rest keyring do not open under the master key (a write \
                 torn by a crash, or an interrupted rotate-master-key: run it again); envelopes \
                 sealed under them cannot be read and are skipped"
            );
        }
        let dedupe = match dedupe_kept {
            Some(kept) => match unwrap_secret(&wrap, &kept) {
                Ok(k) => DedupeKey::from_bytes(&k),
                Err(RecordError::Backend(why)) => {
                    return Err(KeyringError::Io {
                        place: store.describe(),
                        why,
                    });
                }
                Err(_) if live.is_empty() => {
                    return Err(KeyringError::WrongMasterKey {
                        place: store.describe(),
                        count: bad.len() + 1,
                    });
                }
                Err(_) => {
                    return Err(KeyringError::DedupeKey {
                        place: store.describe(),
                    });
                }
            },
            None => make_dedupe(master, &wrap, store.as_ref()).await?,
        };
        Ok(Self {
            wrap,
            dedupe,
            store,
            live: Mutex::new(live),
            making: tokio::sync::Mutex::new(()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<EpochId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of duplicate detection (lives with the master key, not with an epoch).
    pub fn dedupe(&self) -> &DedupeKey {
        &self.dedupe
    }

    /// The key of `epoch`, if alive.
    pub fn get(&self, epoch: &EpochId) -> Option<Arc<EpochKey>> {
        self.map().get(epoch).map(|l| l.key.clone())
    }

    /// The key of `epoch`, made (and stored durably) first if it does not exist yet.
    pub async fn get_or_make(
        &self,
        epoch: EpochId,
        end: u64,
    ) -> Result<Arc<EpochKey>, KeyringError> {
        if let Some(k) = self.get(&epoch) {
            return Ok(k);
        }
        let _one = self.making.lock().await;
        if let Some(k) = self.get(&epoch) {
            return Ok(k);
        }
        let root = Zeroizing::new(
            sealpost_core::random::array::<32>()
                .map_err(|e| KeyringError::Random(e.to_string()))?,
        );
        let sealed =
            secrets::seal(&self.wrap, &wrap_aad(epoch, end), &root[..]).map_err(|why| {
                KeyringError::Io {
                    place: self.store.describe(),
                    why,
                }
            })?;
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&sealed);
        let ours = StoredKey {
            epoch,
            end,
            wrapped,
        };
        // Durable before any envelope is sealed under it: an envelope must never outlive its
        // key by a crash.
        let kept = self.store.put(&ours).await?;
        let key = if kept == ours {
            Arc::new(EpochKey::from_root(&root))
        } else {
            // Another relay of the deployment made this epoch's key first: use theirs.
            self.unwrap(&kept)?
        };
        self.map().insert(
            epoch,
            Live {
                key: key.clone(),
                end: kept.end,
            },
        );
        Ok(key)
    }

    fn unwrap(&self, k: &StoredKey) -> Result<Arc<EpochKey>, KeyringError> {
        let mut root = Zeroizing::new([0u8; 32]);
        secrets::open(&self.wrap, &wrap_aad(k.epoch, k.end), &k.wrapped, &mut root[..]).map_err(
            |e| KeyringError::Io {
                place: self.store.describe(),
                why: format!(
                    "the epoch key of shard {} from {} does not open under this relay's master key ({e}): every relay of a deployment needs the same master key",
                    k.epoch.shard, k.epoch.start
                ),
            },
        )?;
        Ok(Arc::new(EpochKey::from_root(&root)))
    }

    /// The key of `epoch`, also asking the durable keyring when this relay does not hold it
    /// (another relay sharing the keyring made it).
    pub async fn find(&self, epoch: EpochId) -> Result<Option<Arc<EpochKey>>, KeyringError> {
        if let Some(k) = self.get(&epoch) {
            return Ok(Some(k));
        }
        let Some(kept) = self.store.find(epoch).await? else {
            return Ok(None);
        };
        let key = self.unwrap(&kept)?;
        self.map().entry(epoch).or_insert(Live {
            key: key.clone(),
            end: kept.end,
        });
        Ok(Some(key))
    }

    /// Every live epoch with the end of its window.
    pub fn epochs(&self) -> Vec<(EpochId, u64)> {
        self.map().iter().map(|(e, l)| (*e, l.end)).collect()
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no key is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Destroys the key of `epoch`: gone from the durable keyring first, then from memory
    /// (wiped when the last batch using it lets go).
    pub async fn destroy(&self, epoch: EpochId) -> Result<(), KeyringError> {
        self.store.remove(epoch).await?;
        self.map().remove(&epoch);
        Ok(())
    }

    /// Finishes what the destructions of a sweep left to do ([`KeyringStore::settle`]).
    pub async fn settle(&self) {
        self.store.settle().await
    }

    /// Where the keys are kept, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }
}

/// A keyring kept in memory only, for the memory store (whose envelopes do not outlive the
/// process either).
#[derive(Default)]
pub struct VolatileKeys {
    keys: Mutex<HashMap<EpochId, StoredKey>>,
}

#[async_trait]
impl KeyringStore for VolatileKeys {
    async fn load(&self) -> Result<Vec<StoredKey>, KeyringError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn put(&self, key: &StoredKey) -> Result<StoredKey, KeyringError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.epoch)
            .or_insert_with(|| key.clone())
            .clone())
    }

    async fn remove(&self, epoch: EpochId) -> Result<(), KeyringError> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&epoch);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
