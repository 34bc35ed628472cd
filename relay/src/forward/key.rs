//! The relay's long-term forwarding key pair (X25519): senders seal forwarded requests to its
//! public key (announced in INFO, carried by version 4 invitations), and the relay opens them
//! with the secret.
//!
//! The secret lives in one file, by default `DATA_DIR/forward.key`, created at the first
//! start (readable by its owner only, written whole or not at all):
//!
//! - `0x00 || secret (32)` without a master key;
//! - `0x01 || nonce (12) || ChaCha20-Poly1305(secret) (32) || tag (16)` with one, under
//!   `HKDF-SHA256(salt = "sealpost/1 store", IKM = master key)` expanded with info
//!   `"sealpost/1 forward key"`, AAD `"sealpost/1 forward key"`.
//!
//! A file in the clear is sealed in place when the relay starts with a master key (where the
//! file can be written: a read-only one is used as it is, with a warning). Relays of
//! one deployment (several relays over the cluster store, named together in invitations)
//! must share one key pair, as they share a certificate: the operator copies one relay's
//! file to the others (`forward_key_file`); a named file is never created, so that a missing
//! copy is an error and not a second key.

use super::hpke::{self, Context, HpkeError, SecretKey};
use ring::aead;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The default file name in the data directory.
pub const FILE_NAME: &str = "forward.key";
const CLEAR: u8 = 0;
const SEALED: u8 = 1;
const LABEL: &[u8] = b"sealpost/1 forward key";

/// Why the forwarding key could not be loaded or created.
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
    #[error("{0}: the master key does not open the forwarding key (another master key sealed it)")]
    WrongMasterKey(PathBuf),
    /// A named key file does not exist.
    #[error(
        "forward_key_file {0}: no such file; copy the forwarding key of a relay of this deployment there (every relay of one deployment shares one key)"
    )]
    Missing(PathBuf),
    /// The random source failed.
    #[error("the system random source failed")]
    Rng,
}

/// The relay's forwarding key pair; the secret is wiped on drop (see
/// [`hpke`](super::hpke) for how).
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

    /// Loads the key from `path`. When the file does not exist and `create` is set (the
    /// default file in the data directory), makes a new key and writes it there; when it is
    /// not set (a file the operator named), that is an error. With `master`, the file is
    /// kept sealed under it (a file in the clear is sealed now).
    pub fn load_or_create(
        path: &Path,
        create: bool,
        master: Option<&[u8; 32]>,
    ) -> Result<Self, ForwardKeyError> {
        let io = |source| ForwardKeyError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let (key, sealed) = Self::decode(path, &bytes, master)?;
                if master.is_some() && !sealed {
                    // Best effort: a key file an operator distributes may sit on a read-only
                    // mount (a container secret), and the key in it works either way.
                    match key.write(path, master) {
                        Ok(()) => tracing::info!(
                            file = %path.display(),
                            "forwarding key sealed under the master key"
                        ),
                        Err(e) => tracing::warn!(
                            file = %path.display(),
                            error = %e,
                            "the forwarding key file is in the clear and could not be sealed \
                             under the master key; keep it as secret as the master key"
                        ),
                    }
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                key.write(path, master).map_err(io)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ForwardKeyError::Missing(path.to_owned()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Re-seals the key file at `path` from the `old` master key to the `new` one, for
    /// `rotate-master-key`: whether it was re-sealed. A missing file, one in the clear, or one
    /// already under `new` (a rotation run again) is left as it is.
    pub fn rotate_master_key(
        path: &Path,
        old: &[u8; 32],
        new: &[u8; 32],
    ) -> Result<bool, ForwardKeyError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(ForwardKeyError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if bytes.first() != Some(&SEALED) || Self::decode(path, &bytes, Some(new)).is_ok() {
            return Ok(false);
        }
        let (key, _) = Self::decode(path, &bytes, Some(old))?;
        key.write(path, Some(new))
            .map_err(|source| ForwardKeyError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(true)
    }

    fn decode(
        path: &Path,
        bytes: &[u8],
        master: Option<&[u8; 32]>,
    ) -> Result<(Self, bool), ForwardKeyError> {
        let format = |why: String| ForwardKeyError::Format {
            path: path.to_owned(),
            why,
        };
        match bytes.split_first() {
            Some((&CLEAR, rest)) => {
                let secret: Zeroizing<[u8; 32]> =
                    Zeroizing::new(rest.try_into().map_err(|_| {
                        format(format!("{} bytes after the flag, not 32", rest.len()))
                    })?);
                Ok((Self::from_secret(&secret), false))
            }
            Some((&SEALED, rest)) => {
                let master =
                    master.ok_or_else(|| ForwardKeyError::NeedMasterKey(path.to_owned()))?;
                if rest.len() != 12 + 32 + 16 {
                    return Err(format(format!(
                        "{} bytes after the flag, not 60",
                        rest.len()
                    )));
                }
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(&rest[..12]);
                let mut buf = Zeroizing::new(rest[12..].to_vec());
                let plain = file_key(master)
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(LABEL),
                        &mut buf,
                    )
                    .map_err(|_| ForwardKeyError::WrongMasterKey(path.to_owned()))?;
                let mut secret = Zeroizing::new([0u8; 32]);
                secret.copy_from_slice(plain);
                Ok((Self::from_secret(&secret), true))
            }
            Some((flag, _)) => Err(format(format!("unknown flag {flag}"))),
            None => Err(format("empty file".into())),
        }
    }

    /// Writes the key to `path` atomically (a temporary file, readable by its owner only,
    /// renamed into place), sealed under `master` when given.
    fn write(&self, path: &Path, master: Option<&[u8; 32]>) -> std::io::Result<()> {
        let mut out = Zeroizing::new(Vec::with_capacity(1 + 12 + 32 + 16));
        let secret = self.secret.to_bytes();
        match master {
            None => {
                out.push(CLEAR);
                out.extend_from_slice(&secret[..]);
            }
            Some(m) => {
                let nonce: [u8; 12] = sealpost_core::random::array()
                    .map_err(|_| std::io::Error::other("the system random source failed"))?;
                let mut buf = Zeroizing::new(secret.to_vec());
                file_key(m)
                    .seal_in_place_append_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(LABEL),
                        &mut *buf,
                    )
                    .map_err(|_| std::io::Error::other("sealing the forwarding key failed"))?;
                out.push(SEALED);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&buf);
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("the forwarding key path names no file"))?;
        crate::store::atomic_file::write_private(dir, name, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_key_rotation_reseals_the_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let (old, new) = ([0x11; 32], [0x22; 32]);
        assert!(!ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        let a = ForwardKey::load_or_create(&path, true, Some(&old)).unwrap();
        assert!(ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        assert!(!ForwardKey::rotate_master_key(&path, &old, &new).unwrap());
        let b = ForwardKey::load_or_create(&path, false, Some(&new)).unwrap();
        assert_eq!(a.public(), b.public());
        assert!(matches!(
            ForwardKey::load_or_create(&path, false, Some(&old)),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
        assert!(matches!(
            ForwardKey::rotate_master_key(&path, &[0x33; 32], &[0x44; 32]),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
    }

    #[test]
    fn created_once_kept_and_sealed_under_a_master_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let a = ForwardKey::load_or_create(&path, true, None).unwrap();
        let b = ForwardKey::load_or_create(&path, true, None).unwrap();
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
        let c = ForwardKey::load_or_create(&path, true, Some(&m)).unwrap();
        assert_eq!(c.public(), a.public());
        let raw = std::fs::read(&path).unwrap();
        assert_eq!((raw[0], raw.len()), (SEALED, 61));
        let secret = *a.secret.to_bytes();
        assert!(
            !raw.windows(32).any(|w| w == secret),
            "the secret is not in the clear"
        );
        assert_eq!(
            ForwardKey::load_or_create(&path, true, Some(&m))
                .unwrap()
                .public(),
            a.public()
        );
        assert!(matches!(
            ForwardKey::load_or_create(&path, true, None),
            Err(ForwardKeyError::NeedMasterKey(_))
        ));
        assert!(matches!(
            ForwardKey::load_or_create(&path, true, Some(&[0x22; 32])),
            Err(ForwardKeyError::WrongMasterKey(_))
        ));
        // A named file is never created.
        let named = tmp.path().join("shared.key");
        let e = ForwardKey::load_or_create(&named, false, None).unwrap_err();
        assert!(e.to_string().contains("copy the forwarding key"), "{e}");
        std::fs::write(&named, [CLEAR, 1, 2]).unwrap();
        assert!(matches!(
            ForwardKey::load_or_create(&named, false, None),
            Err(ForwardKeyError::Format { .. })
        ));
    }
}
