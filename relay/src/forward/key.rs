//! The relay's forwarding key pairs (X25519): senders seal forwarded requests to the current
//! public key (announced in INFO, carried by version 4 invitations), and the relay opens them
//! with its secret, or with a previous key that a rotation retired less than the overlap ago
//! (`forward_key_overlap_secs`), so that invitations handed out before a rotation keep working
//! until their holders have newer ones.
//!
//! The keys live in one file, by default `DATA_DIR/forward.key`, created at the first start
//! (readable by its owner only, written whole or not at all). A file holding one key keeps the
//! format relays wrote before rotation existed, so that an older relay still reads it:
//!
//! - `0x00 || secret (32)` without a master key;
//! - `0x01 || nonce (12) || ChaCha20-Poly1305(secret) (32) || tag (16)` with one, under
//!   `HKDF-SHA256(salt = "sealpost/1 store", IKM = master key)` expanded with info
//!   `"sealpost/1 forward key"`, AAD `"sealpost/1 forward key"`.
//!
//! After a rotation, while previous keys are kept, the file holds a key list:
//!
//! - `0x02 || list` without a master key;
//! - `0x03 || nonce (12) || ChaCha20-Poly1305(list) || tag (16)` with one, under the same key,
//!   AAD `"sealpost/1 forward keys"` (another AAD, so that neither format opens as the other);
//!
//! where `list = current secret (32) || n (1, at most MAX_PREVIOUS) || n × (retired_at (8,
//! Unix seconds, big-endian) || secret (32)) || [staged secret (32)]`, the previous keys
//! newest first. A staged key (`rotate-forward-key --stage`) is accepted but not announced
//! until the next rotation makes it current: relays sharing a file get it before any of
//! them announces it.
//!
//! A previous key is used only while `retired_at + overlap` is in the future (a `retired_at`
//! ahead of the clock counts as now, and one more than an hour ahead is set to now in the
//! file at a start). Once its overlap has passed, it is not loaded at the
//! next start, which also removes it from the file where the file can be written, and the
//! next rotation removes it in any case; a running relay wipes it from memory the first time
//! a request reaches it after the overlap, and never uses it again.
//!
//! A file in the clear is sealed in place when the relay starts with a master key (where the
//! file can be written: a read-only one is used as it is, with a warning). Relays of
//! one deployment (several relays over the cluster store, named together in invitations)
//! must share one key file, as they share a certificate: the operator copies one relay's
//! file to the others (`forward_key_file`); a named file is never created, so that a missing
//! copy is an error and not a second key.

use super::hpke::{self, Context, HpkeError, SecretKey};
use ring::aead;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The default file name in the data directory.
pub const FILE_NAME: &str = "forward.key";
/// The default overlap: how long a rotated-out key still opens requests. Invitations are
/// handed out by people, not refreshed by software, so the overlap is measured in the time a
/// recipient needs to give their senders new invitations, not in minutes.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most previous keys a file keeps: each one costs a request sealed to none of the keys
/// one more X25519 operation, so the list stays short; a rotation beyond it drops the oldest.
pub const MAX_PREVIOUS: usize = 4;
const CLEAR: u8 = 0;
const SEALED: u8 = 1;
const CLEAR_LIST: u8 = 2;
const SEALED_LIST: u8 = 3;
const LABEL: &[u8] = b"sealpost/1 forward key";
const LIST_AAD: &[u8] = b"sealpost/1 forward keys";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes of one previous key in a list: its retirement time and its secret.
const PREVIOUS_LEN: usize = 8 + 32;

/// Why the forwarding key could not be loaded, created or rotated.
#[derive(Debug, thiserror::Error)]
pub enum ForwardKeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source} (the relay keeps its forwarding key there)")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a forwarding key.
    #[error(
        "{path}: not a sealpost forwarding key ({why}); restore it from a backup, or remove it to make a new key (invitations that carry the old key then stop working for forwarded deposits)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The key is sealed under a master key and none was given.
    #[error("{0}: the forwarding key is sealed under a master key and none was given")]
    NeedMasterKey(PathBuf),
    /// The master key does not open the file.
    #[error(
        "{0}: the master key does not open the forwarding key (another master key sealed it, or the file is damaged: restore it from a backup)"
    )]
    WrongMasterKey(PathBuf),
    /// A named key file does not exist.
    #[error(
        "forward_key_file {0}: no such file; copy the forwarding key of a relay of this deployment there (every relay of one deployment shares one key)"
    )]
    Missing(PathBuf),
    /// There is no key file to rotate.
    #[error(
        "{0}: no forwarding key to rotate (a relay makes DATA_DIR/forward.key at its first start); check --data-dir and forward_key_file"
    )]
    NothingToRotate(PathBuf),
    /// The random source failed.
    #[error("the system random source failed")]
    Rng,
}

/// One forwarding key pair; the secret is wiped on drop (see [`hpke`](super::hpke) for how).
pub struct ForwardKey {
    secret: SecretKey,
}

impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForwardKey(public {})", hex::encode(self.public()))
    }
}

/// The AEAD key that seals the file, from the master key.
fn file_key(master: &[u8; 32]) -> aead::LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"sealpost/1 store").extract(master);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[LABEL], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut k[..]))
        .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF-SHA256's output limit"));
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &k[..])
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key")),
    )
}

/// `nonce || ciphertext || tag` of `plain` under the master key's file key.
fn seal(master: &[u8; 32], aad: &[u8], plain: &[u8]) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let nonce: [u8; NONCE_LEN] = sealpost_core::random::array()
        .map_err(|_| std::io::Error::other("the system random source failed"))?;
    let mut buf = Zeroizing::new(plain.to_vec());
    file_key(master)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut *buf,
        )
        .map_err(|_| std::io::Error::other("sealing the forwarding key failed"))?;
    let mut out = Zeroizing::new(Vec::with_capacity(NONCE_LEN + buf.len()));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens what [`seal`] made; the caller has checked that `sealed` holds a nonce and a tag.
fn open(
    path: &Path,
    master: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ForwardKeyError> {
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = file_key(master)
        .open_in_place(
            aead::Nonce::assume_unique_for_key(n),
            aead::Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| ForwardKeyError::WrongMasterKey(path.to_owned()))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Seconds since the Unix epoch, by the system clock (0 before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ForwardKey {
    /// A key pair from its secret.
    pub fn from_secret(secret: &Zeroizing<[u8; 32]>) -> Self {
        Self {
            secret: SecretKey::from_bytes(secret),
        }
    }

    /// A fresh random key pair.
    pub fn generate() -> Result<Self, ForwardKeyError> {
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(sealpost_core::random::array().map_err(|_| ForwardKeyError::Rng)?);
        Ok(Self::from_secret(&bytes))
    }

    /// The public key, as INFO and invitations carry it.
    pub fn public(&self) -> [u8; 32] {
        self.secret.public()
    }

    /// The HPKE receiver context of a sealed request (`info = "sealpost/1 forward"`).
    pub fn context(&self, enc: &[u8; 32]) -> Result<Context, HpkeError> {
        hpke::setup_receiver(enc, &self.secret, sealpost_core::forward::HPKE_INFO)
    }

    /// The context of a sealed request and its plaintext (the request's padded frames).
    fn open_request(&self, enc: &[u8; 32], ct: &[u8]) -> Result<(Context, Vec<u8>), HpkeError> {
        let mut ctx = self.context(enc)?;
        let mut buf = ct.to_vec();
        let len = ctx.open(b"", &mut buf)?.len();
        buf.truncate(len);
        Ok((ctx, buf))
    }

    /// Re-seals the key file at `path` from the `old` master key to the `new` one, every key
    /// in it (the current one and the previous ones with their retirement times), for
    /// `rotate-master-key`: whether it was re-sealed. A missing file, one in the clear, or one
    /// already under `new` (a rotation run again) is left as it is.
    pub fn rotate_master_key(
        path: &Path,
        old: &[u8; 32],
        new: &[u8; 32],
    ) -> Result<bool, ForwardKeyError> {
        let Some(bytes) = read(path)? else {
            return Ok(false);
        };
        if !matches!(bytes.first(), Some(&SEALED | &SEALED_LIST))
            || KeyFile::decode(path, &bytes, Some(new)).is_ok()
        {
            return Ok(false);
        }
        let (file, _) = KeyFile::decode(path, &bytes, Some(old))?;
        file.write(path, Some(new))?;
        Ok(true)
    }
}

/// The file's bytes; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, ForwardKeyError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ForwardKeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A key a rotation retired, and when (Unix seconds).
struct Retired {
    key: ForwardKey,
    at: u64,
}

/// What the key file holds: the current key, the previous ones (newest first), and a staged
/// next key.
struct KeyFile {
    current: ForwardKey,
    previous: Vec<Retired>,
    next: Option<ForwardKey>,
}

impl KeyFile {
    /// The keys in `bytes`, and whether they were sealed.
    fn decode(
        path: &Path,
        bytes: &[u8],
        master: Option<&[u8; 32]>,
    ) -> Result<(Self, bool), ForwardKeyError> {
        let format = |why: String| ForwardKeyError::Format {
            path: path.to_owned(),
            why,
        };
        let need_master = || master.ok_or_else(|| ForwardKeyError::NeedMasterKey(path.to_owned()));
        match bytes.split_first() {
            Some((&CLEAR, rest)) => {
                let secret: Zeroizing<[u8; 32]> =
                    Zeroizing::new(rest.try_into().map_err(|_| {
                        format(format!("{} bytes after the flag, not 32", rest.len()))
                    })?);
                Ok((Self::single(ForwardKey::from_secret(&secret)), false))
            }
            Some((&SEALED, rest)) => {
                let master = need_master()?;
                if rest.len() != NONCE_LEN + 32 + TAG_LEN {
                    return Err(format(format!(
                        "{} bytes after the flag, not 60",
                        rest.len()
                    )));
                }
                let plain = open(path, master, LABEL, rest)?;
                let mut secret = Zeroizing::new([0u8; 32]);
                secret.copy_from_slice(&plain);
                Ok((Self::single(ForwardKey::from_secret(&secret)), true))
            }
            Some((&CLEAR_LIST, rest)) => Ok((Self::decode_list(path, rest)?, false)),
            Some((&SEALED_LIST, rest)) => {
                let master = need_master()?;
                if rest.len() < NONCE_LEN + TAG_LEN {
                    return Err(format(format!(
                        "{} bytes after the flag, too short for a sealed key list",
                        rest.len()
                    )));
                }
                let plain = open(path, master, LIST_AAD, rest)?;
                Ok((Self::decode_list(path, &plain)?, true))
            }
            Some((flag, _)) => Err(format(format!("unknown flag {flag}"))),
            None => Err(format("empty file".into())),
        }
    }

    fn single(current: ForwardKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
            next: None,
        }
    }

    /// `current (32) || n (1) || n × (retired_at (8) || secret (32)) || [next (32)]`.
    fn decode_list(path: &Path, list: &[u8]) -> Result<Self, ForwardKeyError> {
        let format = |why: String| ForwardKeyError::Format {
            path: path.to_owned(),
            why,
        };
        let secret = |bytes: &[u8]| {
            let mut s = Zeroizing::new([0u8; 32]);
            s.copy_from_slice(bytes);
            ForwardKey::from_secret(&s)
        };
        if list.len() < 33 {
            return Err(format(format!("a key list of {} bytes", list.len())));
        }
        let (current, rest) = list.split_at(32);
        let (n, rest) = (usize::from(rest[0]), &rest[1..]);
        let listed = n * PREVIOUS_LEN;
        if n > MAX_PREVIOUS || (rest.len() != listed && rest.len() != listed + 32) {
            return Err(format(format!(
                "{n} previous keys (at most {MAX_PREVIOUS}) and a staged key or none in {} \
                 bytes",
                rest.len()
            )));
        }
        let (rest, next) = rest.split_at(listed);
        let previous = rest
            .chunks_exact(PREVIOUS_LEN)
            .map(|p| {
                let (at, key) = p.split_at(8);
                let mut be = [0u8; 8];
                be.copy_from_slice(at);
                Retired {
                    key: secret(key),
                    at: u64::from_be_bytes(be),
                }
            })
            .collect();
        Ok(Self {
            current: secret(current),
            previous,
            next: (!next.is_empty()).then(|| secret(next)),
        })
    }

    /// The file's bytes: the format of one key when there are no previous keys and no
    /// staged one (which a relay from before rotation reads), a key list otherwise; sealed
    /// under `master`.
    fn encode(&self, master: Option<&[u8; 32]>) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut plain = Zeroizing::new(Vec::with_capacity(65 + self.previous.len() * 40));
        plain.extend_from_slice(&self.current.secret.to_bytes()[..]);
        let (clear, sealed, aad) = if self.previous.is_empty() && self.next.is_none() {
            (CLEAR, SEALED, LABEL)
        } else {
            let n = u8::try_from(self.previous.len())
                .map_err(|_| std::io::Error::other("too many previous forwarding keys"))?;
            plain.push(n);
            for p in &self.previous {
                plain.extend_from_slice(&p.at.to_be_bytes());
                plain.extend_from_slice(&p.key.secret.to_bytes()[..]);
            }
            if let Some(next) = &self.next {
                plain.extend_from_slice(&next.secret.to_bytes()[..]);
            }
            (CLEAR_LIST, SEALED_LIST, LIST_AAD)
        };
        let mut out = Zeroizing::new(Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_LEN));
        match master {
            None => {
                out.push(clear);
                out.extend_from_slice(&plain);
            }
            Some(m) => {
                out.push(sealed);
                out.extend_from_slice(&seal(m, aad, &plain)?);
            }
        }
        Ok(out)
    }

    /// Writes the keys to `path` atomically (a temporary file, readable by its owner only,
    /// renamed into place), sealed under `master` when given.
    fn write(&self, path: &Path, master: Option<&[u8; 32]>) -> Result<(), ForwardKeyError> {
        let io = |source| ForwardKeyError::Io {
            path: path.to_owned(),
            source,
        };
        let out = self.encode(master).map_err(io)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io(std::io::Error::other("the path names no file")))?;
        crate::store::atomic_file::write_private(dir, name, &out).map_err(io)
    }

    /// Drops the previous keys whose overlap has passed at `now`: how many.
    fn drop_expired(&mut self, overlap: Duration, now: u64) -> usize {
        let before = self.previous.len();
        self.previous.retain(|p| now < until(p.at, overlap, now));
        before - self.previous.len()
    }

    /// Sets retirement times more than [`CLOCK_SLACK`] ahead of `now` to `now`: how many.
    /// [`until`] alone would count such a time as the present at every start, so that
    /// restarts would keep moving the end of the overlap until the clock caught up.
    fn clamp_future(&mut self, now: u64) -> Vec<[u8; 32]> {
        let mut clamped = Vec::new();
        for p in self
            .previous
            .iter_mut()
            .filter(|p| p.at > now.saturating_add(CLOCK_SLACK))
        {
            p.at = now;
            clamped.push(p.key.public());
        }
        clamped
    }
}

/// How far ahead of this relay's clock a retirement time may be before a start writes the
/// present over it: the skew between the machine that rotated a shared file and the relays.
const CLOCK_SLACK: u64 = 3600;

/// The Unix second from which a key retired `at` is no longer used: a retirement time ahead
/// of the clock (a file from a machine whose clock runs fast) counts as `now`, so that it
/// cannot stretch the overlap.
fn until(at: u64, overlap: Duration, now: u64) -> u64 {
    at.min(now).saturating_add(overlap.as_secs())
}

/// A request opened by [`ForwardKeys::open`].
pub struct Opened {
    /// The HPKE context that opened it: the answer is sealed under its export.
    pub context: Context,
    /// The request's plaintext (its padded frames).
    pub plain: Vec<u8>,
    /// Which key opened it.
    pub with: OpenedWith,
}

/// Which of the relay's keys opened a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedWith {
    /// The key INFO announces.
    Current,
    /// The staged next key (a sender whose invitation came from a relay of the deployment
    /// that already announces it).
    Staged,
    /// A previous key inside its overlap (a sender whose invitation predates a rotation).
    Previous,
}

/// A previous key in use, and the Unix second its overlap ends.
struct Accepted {
    key: ForwardKey,
    until: u64,
}

/// The keys a running relay opens forwarded requests with: the current one, which INFO
/// announces, a staged next one, and the previous ones still inside their overlap.
pub struct ForwardKeys {
    current: ForwardKey,
    /// Accepted but not announced, until a rotation makes it current.
    next: Option<ForwardKey>,
    /// Newest first; wiped (dropped) once a request finds one past its overlap.
    previous: RwLock<Vec<Accepted>>,
}

impl std::fmt::Debug for ForwardKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForwardKeys(current {})", hex::encode(self.public()))
    }
}

/// What [`ForwardKeys::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new current public key.
    pub public: [u8; 32],
    /// Whether it was the staged key (else a fresh one).
    pub promoted: bool,
    /// Whether a staged key was thrown away (a rotation that keeps no previous key: after a
    /// compromise the staged key leaked with the file).
    pub discarded_staged: bool,
    /// The previous public keys kept, newest first, with the Unix second their overlap ends.
    pub kept: Vec<([u8; 32], u64)>,
    /// Keys no longer in the file: previous keys past their overlap or beyond
    /// [`MAX_PREVIOUS`], and the key retired now when it is not kept (asked not to, or no
    /// overlap).
    pub dropped: usize,
}

impl ForwardKeys {
    /// One key and no previous or staged ones.
    pub fn single(current: ForwardKey) -> Self {
        Self {
            current,
            next: None,
            previous: RwLock::new(Vec::new()),
        }
    }

    /// Loads the keys from `path`. When the file does not exist and `create` is set (the
    /// default file in the data directory), makes a new key and writes it there; when it is
    /// not set (a file the operator named), that is an error. Previous keys past their
    /// `overlap` are left out, and removed from the file where it can be written. With
    /// `master`, the file is kept sealed under it (a file in the clear is sealed now).
    pub fn load_or_create(
        path: &Path,
        create: bool,
        master: Option<&[u8; 32]>,
        overlap: Duration,
    ) -> Result<Self, ForwardKeyError> {
        Self::load_at(path, create, master, overlap, unix_now())
    }

    fn load_at(
        path: &Path,
        create: bool,
        master: Option<&[u8; 32]>,
        overlap: Duration,
        now: u64,
    ) -> Result<Self, ForwardKeyError> {
        let Some(bytes) = read(path)? else {
            if !create {
                return Err(ForwardKeyError::Missing(path.to_owned()));
            }
            let file = KeyFile::single(ForwardKey::generate()?);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| ForwardKeyError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            }
            file.write(path, master)?;
            return Ok(Self::single(file.current));
        };
        let (mut file, sealed) = KeyFile::decode(path, &bytes, master)?;
        let clamped = file.clamp_future(now);
        let ahead = clamped.len();
        if ahead > 0 {
            tracing::warn!(
                file = %path.display(),
                keys = ahead,
                "previous forwarding keys retired more than an hour in the future by this \
                 machine's clock: their overlap now runs from the present (check the clocks)"
            );
        }
        let dropped = file.drop_expired(overlap, now);
        if dropped > 0 || ahead > 0 || (master.is_some() && !sealed) {
            // Best effort: a key file an operator distributes may sit on a read-only mount
            // (a container secret), and the keys in it work either way.
            match file.write(path, master) {
                Ok(()) => tracing::info!(
                    file = %path.display(),
                    expired = dropped,
                    sealed = master.is_some(),
                    "forwarding key file rewritten"
                ),
                Err(e) => {
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "the forwarding key file could not be rewritten (to seal it under the \
                         master key, to remove keys past their overlap or to correct retirement \
                         times ahead of the clock); keep it as secret as the master key"
                    );
                    if ahead > 0 {
                        // Kept with a corrected time only in memory, each start would begin
                        // their overlap again: they are not accepted at all instead.
                        file.previous.retain(|p| !clamped.contains(&p.key.public()));
                        tracing::warn!(
                            file = %path.display(),
                            keys = ahead,
                            "previous forwarding keys retired ahead of the clock are not \
                             accepted, since the file cannot be corrected; rewrite it where it \
                             is kept (rotate-forward-key on a machine with the right time)"
                        );
                    }
                }
            }
        }
        let previous: Vec<Accepted> = file
            .previous
            .into_iter()
            .map(|p| Accepted {
                until: until(p.at, overlap, now),
                key: p.key,
            })
            .collect();
        if let Some(last) = previous.iter().map(|p| p.until).max() {
            tracing::info!(
                previous = previous.len(),
                until_unix = last,
                "previous forwarding keys accepted for their overlap after a rotation"
            );
        }
        if file.next.is_some() {
            tracing::info!("a staged forwarding key is accepted, not announced yet");
        }
        Ok(Self {
            current: file.current,
            next: file.next,
            previous: RwLock::new(previous),
        })
    }

    /// The current public key, as INFO and invitations carry it.
    pub fn public(&self) -> [u8; 32] {
        self.current.public()
    }

    /// The staged public key, accepted but not announced, if any.
    pub fn staged(&self) -> Option<[u8; 32]> {
        self.next.as_ref().map(ForwardKey::public)
    }

    /// The previous public keys still accepted, newest first, with the Unix second each
    /// stops being accepted.
    pub fn previous(&self) -> Vec<([u8; 32], u64)> {
        let now = unix_now();
        self.previous
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| now < p.until)
            .map(|p| (p.key.public(), p.until))
            .collect()
    }

    /// Opens a sealed request (`enc`, ciphertext with its tag) under the current key, or
    /// the staged one, or a previous key inside its overlap: in base mode a wrong key fails
    /// the AEAD's tag, so each further key costs one X25519 operation and only for requests
    /// the current key does not open.
    pub fn open(&self, enc: &[u8; 32], ct: &[u8]) -> Result<Opened, HpkeError> {
        self.open_at(enc, ct, unix_now())
    }

    fn open_at(&self, enc: &[u8; 32], ct: &[u8], now: u64) -> Result<Opened, HpkeError> {
        let first = match self.current.open_request(enc, ct) {
            Ok((context, plain)) => {
                return Ok(Opened {
                    context,
                    plain,
                    with: OpenedWith::Current,
                });
            }
            // An unusable `enc` is unusable under every key.
            Err(e @ HpkeError::BadEnc) => return Err(e),
            Err(e) => e,
        };
        if let Some(Ok((context, plain))) = self.next.as_ref().map(|k| k.open_request(enc, ct)) {
            return Ok(Opened {
                context,
                plain,
                with: OpenedWith::Staged,
            });
        }
        let mut expired = false;
        {
            let previous = self.previous.read().unwrap_or_else(|e| e.into_inner());
            for p in previous.iter() {
                if now >= p.until {
                    expired = true;
                    continue;
                }
                if let Ok((context, plain)) = p.key.open_request(enc, ct) {
                    return Ok(Opened {
                        context,
                        plain,
                        with: OpenedWith::Previous,
                    });
                }
            }
        }
        if expired {
            self.previous
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|p| now < p.until);
        }
        Err(first)
    }

    /// Rotates the key file at `path`: a new current key (the staged one if there is one,
    /// else a fresh one); the old one kept as a previous key for `overlap` when
    /// `keep_previous` (dropped at once otherwise, as after a compromise, together with every
    /// other previous key and a staged key, which was in the same file: the new key is then
    /// always a fresh one). Previous keys past their overlap are removed, and the oldest
    /// beyond [`MAX_PREVIOUS`]. The file is written atomically, sealed under `master` when
    /// given. Running relays go on with the keys they loaded until restarted.
    pub fn rotate(
        path: &Path,
        master: Option<&[u8; 32]>,
        overlap: Duration,
        keep_previous: bool,
    ) -> Result<Rotation, ForwardKeyError> {
        Self::rotate_at(path, master, overlap, keep_previous, unix_now())
    }

    fn rotate_at(
        path: &Path,
        master: Option<&[u8; 32]>,
        overlap: Duration,
        keep_previous: bool,
        now: u64,
    ) -> Result<Rotation, ForwardKeyError> {
        let mut old = Self::read_for_rotation(path, master)?;
        let before = old.previous.len() + 1;
        // After a compromise (`keep_previous` off) the staged key is in the leaked file too:
        // it is discarded with the others, and the new key is a fresh one.
        let staged = old.next.take();
        let discarded_staged = staged.is_some() && !keep_previous;
        let (current, promoted) = match staged.filter(|_| keep_previous) {
            Some(next) => (next, true),
            None => (ForwardKey::generate()?, false),
        };
        let mut file = KeyFile {
            current,
            previous: Vec::with_capacity(MAX_PREVIOUS + 1),
            next: None,
        };
        if keep_previous {
            file.previous.push(Retired {
                key: old.current,
                at: now,
            });
            file.previous.extend(old.previous);
        }
        file.drop_expired(overlap, now);
        file.previous.truncate(MAX_PREVIOUS);
        file.write(path, master)?;
        Ok(Rotation {
            public: file.current.public(),
            promoted,
            discarded_staged,
            kept: file
                .previous
                .iter()
                .map(|p| (p.key.public(), until(p.at, overlap, now)))
                .collect(),
            dropped: before - file.previous.len(),
        })
    }

    /// Stages a new key in the key file at `path`: relays accept it from their next start
    /// but announce it only once [`rotate`](Self::rotate) has made it current. For relays
    /// sharing one file: once every relay has the staged key, no relay refuses a request
    /// sealed to it while the rotated file rolls out. A key staged before is replaced (it was
    /// never announced). Previous keys past their overlap are removed. Returns the staged
    /// public key and whether it replaced one.
    pub fn stage(
        path: &Path,
        master: Option<&[u8; 32]>,
        overlap: Duration,
    ) -> Result<([u8; 32], bool), ForwardKeyError> {
        Self::stage_at(path, master, overlap, unix_now())
    }

    fn stage_at(
        path: &Path,
        master: Option<&[u8; 32]>,
        overlap: Duration,
        now: u64,
    ) -> Result<([u8; 32], bool), ForwardKeyError> {
        let mut file = Self::read_for_rotation(path, master)?;
        file.drop_expired(overlap, now);
        let next = ForwardKey::generate()?;
        let public = next.public();
        let replaced = file.next.replace(next).is_some();
        file.write(path, master)?;
        Ok((public, replaced))
    }

    fn read_for_rotation(
        path: &Path,
        master: Option<&[u8; 32]>,
    ) -> Result<KeyFile, ForwardKeyError> {
        let bytes = read(path)?.ok_or_else(|| ForwardKeyError::NothingToRotate(path.to_owned()))?;
        Ok(KeyFile::decode(path, &bytes, master)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::forward::{RESPONSE_EXPORT, seal_request};

    const OVERLAP: Duration = Duration::from_secs(1000);
    const T0: u64 = 1_800_000_000;

    fn load(path: &Path, master: Option<&[u8; 32]>, now: u64) -> ForwardKeys {
        ForwardKeys::load_at(path, false, master, OVERLAP, now).unwrap()
    }

    /// Which of `keys` opens a request sealed to `public` at `now`, if one does; the answer
    /// key is the one the sender derived.
    fn opens(keys: &ForwardKeys, public: &[u8; 32], now: u64) -> Option<OpenedWith> {
        let req = seal_request(public, b"request", 1 << 16).unwrap();
        let o = keys
            .open_at(&req.sealed.enc, &req.sealed.ciphertext, now)
            .ok()?;
        assert_eq!(sealpost_core::padding::unpad(&o.plain).unwrap(), b"request");
        let key =
            sealpost_core::forward::ResponseKey::from_bytes(o.context.export32(RESPONSE_EXPORT));
        assert_eq!(
            req.response_key
                .open(&key.seal(b"answer").unwrap())
                .unwrap(),
            b"answer"
        );
        Some(o.with)
    }

    #[test]
    fn a_rotated_out_key_opens_requests_for_its_overlap_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let old = ForwardKeys::load_at(&path, true, None, OVERLAP, T0)
            .unwrap()
            .public();
        let r = ForwardKeys::rotate_at(&path, None, OVERLAP, true, T0).unwrap();
        assert_ne!(r.public, old);
        assert_eq!(r.kept, vec![(old, T0 + 1000)]);
        assert_eq!(r.dropped, 0);
        assert_eq!(std::fs::read(&path).unwrap()[0], CLEAR_LIST);

        let keys = load(&path, None, T0 + 10);
        assert_eq!(keys.public(), r.public, "the new key is the one announced");
        assert_eq!(opens(&keys, &r.public, T0 + 10), Some(OpenedWith::Current));
        assert_eq!(opens(&keys, &old, T0 + 10), Some(OpenedWith::Previous));
        assert_eq!(opens(&keys, &old, T0 + 999), Some(OpenedWith::Previous));
        // A running relay stops at the end of the overlap, and forgets the key.
        assert_eq!(opens(&keys, &old, T0 + 1000), None);
        assert!(keys.previous.read().unwrap().is_empty());
        assert_eq!(opens(&keys, &old, T0 + 10), None, "never used again");
        assert_eq!(
            opens(&keys, &r.public, T0 + 1000),
            Some(OpenedWith::Current)
        );
        // A key sealed to neither is refused.
        let stranger = ForwardKey::generate().unwrap().public();
        assert_eq!(opens(&load(&path, None, T0 + 10), &stranger, T0 + 10), None);

        // A start after the overlap leaves the key out and rewrites the file without it, in
        // the one-key format.
        let keys = load(&path, None, T0 + 1000);
        assert_eq!(opens(&keys, &old, T0 + 1000), None);
        assert_eq!(keys.public(), r.public);
        assert_eq!(std::fs::read(&path).unwrap()[0], CLEAR);
        assert_eq!(std::fs::read(&path).unwrap().len(), 33);
    }

    #[test]
    fn a_rotation_drops_expired_and_surplus_keys_and_all_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let m = [0x11; 32];
        let mut publics = vec![
            ForwardKeys::load_at(&path, true, Some(&m), OVERLAP, T0)
                .unwrap()
                .public(),
        ];
        for i in 0..(MAX_PREVIOUS as u64 + 1) {
            let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, true, T0 + i).unwrap();
            publics.push(r.public);
            assert!(r.kept.len() <= MAX_PREVIOUS);
            assert_eq!(std::fs::read(&path).unwrap()[0], SEALED_LIST);
        }
        // The oldest went beyond MAX_PREVIOUS; the others are kept, newest first.
        let keys = load(&path, Some(&m), T0 + 10);
        let kept: Vec<[u8; 32]> = keys.previous().iter().map(|p| p.0).collect();
        let mut want: Vec<[u8; 32]> = publics[1..publics.len() - 1].to_vec();
        want.reverse();
        assert_eq!(kept, want);
        assert_eq!(opens(&keys, &publics[0], T0 + 10), None);
        assert_eq!(
            opens(&keys, &publics[1], T0 + 10),
            Some(OpenedWith::Previous)
        );

        // Past the overlap of the keys retired at T0 + 1 to T0 + 3, a rotation keeps the one
        // retired at T0 + 4 and the one it retires now.
        let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, true, T0 + 1003).unwrap();
        let kept: Vec<[u8; 32]> = r.kept.iter().map(|k| k.0).collect();
        assert_eq!(kept, [publics[5], publics[4]]);
        assert_eq!(r.dropped, 3);
        // Without keeping, every previous key goes at once, with the one retired now.
        let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, false, T0 + 1003).unwrap();
        assert_eq!((r.kept.len(), r.dropped), (0, 3));
        assert_eq!(std::fs::read(&path).unwrap()[0], SEALED);
        // With no overlap, the retired key is not kept either.
        let r = ForwardKeys::rotate_at(&path, Some(&m), Duration::ZERO, true, T0).unwrap();
        assert_eq!((r.kept.len(), r.dropped), (0, 1));
    }

    #[test]
    fn a_staged_key_is_accepted_unannounced_then_promoted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let m = [0x11; 32];
        let k1 = ForwardKeys::load_at(&path, true, Some(&m), OVERLAP, T0)
            .unwrap()
            .public();
        let (k2, replaced) = ForwardKeys::stage_at(&path, Some(&m), OVERLAP, T0).unwrap();
        assert!(!replaced);
        assert_eq!(std::fs::read(&path).unwrap()[0], SEALED_LIST);
        let keys = load(&path, Some(&m), T0 + 1);
        assert_eq!((keys.public(), keys.staged()), (k1, Some(k2)));
        assert!(keys.previous().is_empty());
        assert_eq!(opens(&keys, &k1, T0 + 1), Some(OpenedWith::Current));
        assert_eq!(opens(&keys, &k2, T0 + 1), Some(OpenedWith::Staged));
        // A staged key has no overlap to run out.
        assert_eq!(opens(&keys, &k2, T0 + 10 * 1000), Some(OpenedWith::Staged));
        // Staging again replaces the staged key, which was never announced.
        let (k3, replaced) = ForwardKeys::stage_at(&path, Some(&m), OVERLAP, T0 + 2).unwrap();
        assert!(replaced);
        let keys = load(&path, Some(&m), T0 + 3);
        assert_eq!(opens(&keys, &k2, T0 + 3), None);
        assert_eq!(opens(&keys, &k3, T0 + 3), Some(OpenedWith::Staged));
        // The rotation makes the staged key current and retires the announced one.
        let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, true, T0 + 10).unwrap();
        assert!(r.promoted);
        assert_eq!((r.public, r.kept.clone()), (k3, vec![(k1, T0 + 1010)]));
        let keys = load(&path, Some(&m), T0 + 11);
        assert_eq!((keys.public(), keys.staged()), (k3, None));
        assert_eq!(opens(&keys, &k3, T0 + 11), Some(OpenedWith::Current));
        assert_eq!(opens(&keys, &k1, T0 + 11), Some(OpenedWith::Previous));
        // Without a staged key, a rotation makes a fresh one.
        let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, true, T0 + 20).unwrap();
        assert!(!r.promoted);
        assert!(![k1, k2, k3].contains(&r.public));
        // rotate-master-key carries the staged key over too.
        ForwardKeys::stage_at(&path, Some(&m), OVERLAP, T0 + 21).unwrap();
        let staged = load(&path, Some(&m), T0 + 22).staged();
        assert!(ForwardKey::rotate_master_key(&path, &m, &[0x22; 32]).unwrap());
        assert_eq!(load(&path, Some(&[0x22; 32]), T0 + 22).staged(), staged);
        // A rotation after a compromise (keeping nothing) does not promote the staged key,
        // which leaked with the file: it is discarded and the new key is a fresh one.
        let m = [0x22; 32];
        let r = ForwardKeys::rotate_at(&path, Some(&m), OVERLAP, false, T0 + 30).unwrap();
        assert!(!r.promoted && r.discarded_staged);
        assert_ne!(Some(r.public), staged);
        let keys = load(&path, Some(&m), T0 + 31);
        assert_eq!(keys.staged(), None);
        assert!(keys.previous().is_empty());
        assert_eq!(opens(&keys, &staged.expect("a staged key"), T0 + 31), None);
    }

    #[test]
    fn a_retirement_time_ahead_of_the_clock_counts_as_now() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let old = ForwardKeys::load_at(&path, true, None, OVERLAP, T0)
            .unwrap()
            .public();
        ForwardKeys::rotate_at(&path, None, OVERLAP, true, T0 + 1_000_000).unwrap();
        let keys = load(&path, None, T0);
        assert_eq!(keys.previous.read().unwrap()[0].until, T0 + 1000);
        assert_eq!(opens(&keys, &old, T0 + 1000), None);
        // The start wrote the present over it: a later start does not move the end again.
        let keys = load(&path, None, T0 + 500);
        assert_eq!(keys.previous.read().unwrap()[0].until, T0 + 1000);
        // Within the slack, the file is left alone and the time counts as the present.
        ForwardKeys::rotate_at(&path, None, OVERLAP, true, T0 + 2000 + CLOCK_SLACK).unwrap();
        let keys = load(&path, None, T0 + 2000);
        assert_eq!(keys.previous.read().unwrap()[0].until, T0 + 3000);
        let keys = load(&path, None, T0 + 2100);
        assert_eq!(keys.previous.read().unwrap()[0].until, T0 + 3100);
    }

    #[test]
    fn a_master_key_rotation_reseals_every_key_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let (old, new) = ([0x11; 32], [0x22; 32]);
        assert!(!ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        let a = ForwardKeys::load_or_create(&path, true, Some(&old), OVERLAP)
            .unwrap()
            .public();
        assert!(ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        assert!(!ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        let b = ForwardKeys::load_or_create(&path, false, Some(&new), OVERLAP).unwrap();
        assert_eq!(a, b.public());
        assert!(matches!(
            ForwardKeys::load_or_create(&path, false, Some(&old), OVERLAP),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
        assert!(matches!(
            ForwardKey::rotate_master_key(&path, &[0x33; 32], &[0x44; 32]),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
        // A key list: both keys, and the retirement time, move to the new master key.
        let r = ForwardKeys::rotate_at(&path, Some(&new), OVERLAP, true, T0).unwrap();
        assert!(ForwardKey::rotate_master_key(&path, &new, &old).unwrap());
        assert_eq!(std::fs::read(&path).unwrap()[0], SEALED_LIST);
        let keys = load(&path, Some(&old), T0 + 1);
        assert_eq!(keys.public(), r.public);
        assert_eq!(keys.previous.read().unwrap()[0].key.public(), a);
        assert_eq!(keys.previous.read().unwrap()[0].until, T0 + 1000);
        assert!(matches!(
            ForwardKeys::load_at(&path, false, Some(&new), OVERLAP, T0),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
    }

    #[test]
    fn created_once_kept_and_sealed_under_a_master_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let a = ForwardKeys::load_or_create(&path, true, None, OVERLAP).unwrap();
        let b = ForwardKeys::load_or_create(&path, true, None, OVERLAP).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(std::fs::read(&path).unwrap()[0], CLEAR);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // A master key seals the file in place; the key stays the same.
        let m = [0x11; 32];
        let c = ForwardKeys::load_or_create(&path, true, Some(&m), OVERLAP).unwrap();
        assert_eq!(c.public(), a.public());
        let raw = std::fs::read(&path).unwrap();
        assert_eq!((raw[0], raw.len()), (SEALED, 61));
        let secret = *a.current.secret.to_bytes();
        assert!(
            !raw.windows(32).any(|w| w == secret),
            "the secret is not in the clear"
        );
        assert_eq!(
            ForwardKeys::load_or_create(&path, true, Some(&m), OVERLAP)
                .unwrap()
                .public(),
            a.public()
        );
        assert!(matches!(
            ForwardKeys::load_or_create(&path, true, None, OVERLAP),
            Err(ForwardKeyError::NeedMasterKey(_))
        ));
        assert!(matches!(
            ForwardKeys::load_or_create(&path, true, Some(&[0x22; 32]), OVERLAP),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
        // A sealed key list is not in the clear either.
        ForwardKeys::rotate(&path, Some(&m), OVERLAP, true).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!((raw[0], raw.len()), (SEALED_LIST, 1 + 12 + 33 + 40 + 16));
        assert!(!raw.windows(32).any(|w| w == secret));
        // A named file is never created.
        let named = tmp.path().join("shared.key");
        let e = ForwardKeys::load_or_create(&named, false, None, OVERLAP).unwrap_err();
        assert!(e.to_string().contains("copy the forwarding key"), "{e}");
        let e = ForwardKeys::rotate(&named, None, OVERLAP, true).unwrap_err();
        assert!(e.to_string().contains("no forwarding key to rotate"), "{e}");
    }

    /// Files written before rotation existed (one key, either flag) load as they are; a
    /// damaged file of any format is refused naming what is wrong.
    #[test]
    fn old_files_load_and_damaged_ones_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        let secret = Zeroizing::new([7u8; 32]);
        let public = ForwardKey::from_secret(&secret).public();
        let mut clear = vec![CLEAR];
        clear.extend_from_slice(&secret[..]);
        std::fs::write(&path, &clear).unwrap();
        assert_eq!(load(&path, None, T0).public(), public);
        // The sealed one-key format as earlier relays wrote it, field by field.
        let m = [0x55; 32];
        let mut sealed = vec![SEALED];
        sealed.extend_from_slice(&seal(&m, LABEL, &secret[..]).unwrap());
        std::fs::write(&path, &sealed).unwrap();
        assert_eq!(load(&path, Some(&m), T0).public(), public);

        let list = |n: u8, extra: usize| {
            let mut b = vec![CLEAR_LIST];
            b.extend_from_slice(&[1; 32]);
            b.push(n);
            b.extend(std::iter::repeat_n(
                2,
                usize::from(n) * PREVIOUS_LEN + extra,
            ));
            b
        };
        for (bytes, why) in [
            (vec![], "empty file"),
            (vec![9, 1, 2], "unknown flag 9"),
            (vec![CLEAR, 1, 2], "2 bytes after the flag, not 32"),
            (vec![SEALED; 20], "not 60"),
            (vec![CLEAR_LIST; 20], "a key list of 19 bytes"),
            (list(1, 1), "1 previous keys"),
            (list(5, 0), "5 previous keys (at most 4)"),
            (vec![SEALED_LIST; 20], "too short for a sealed key list"),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let e = ForwardKeys::load_at(&path, false, Some(&m), OVERLAP, T0).unwrap_err();
            assert!(
                matches!(e, ForwardKeyError::Format { .. }) && e.to_string().contains(why),
                "{bytes:?}: {e}"
            );
            assert!(e.to_string().contains("restore it from a backup"), "{e}");
        }
        assert_eq!(load_list_ok(&path, list(2, 0)), 2);
        assert_eq!(load_list_ok(&path, list(2, 32)), 2, "with a staged key");
        // A sealed list with one byte changed does not open.
        let mut keys = KeyFile::single(ForwardKey::from_secret(&secret));
        keys.previous.push(Retired {
            key: ForwardKey::generate().unwrap(),
            at: T0,
        });
        let mut bytes = keys.encode(Some(&m)).unwrap().to_vec();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = ForwardKeys::load_at(&path, false, Some(&m), OVERLAP, T0).unwrap_err();
        assert!(e.to_string().contains("or the file is damaged"), "{e}");
    }

    fn load_list_ok(path: &Path, bytes: Vec<u8>) -> usize {
        std::fs::write(path, bytes).unwrap();
        let (file, sealed) = KeyFile::decode(path, &std::fs::read(path).unwrap(), None).unwrap();
        assert!(!sealed);
        file.previous.len()
    }
}
