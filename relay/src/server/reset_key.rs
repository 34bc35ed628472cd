//! The secret behind QUIC stateless resets, kept in the data directory across restarts.
//!
//! A client whose relay restarted keeps sending on a connection the new process does not
//! know. QUIC lets the relay answer such a packet with a *stateless reset* (RFC 9000 §10.3),
//! which the client recognises by a token the relay gave it earlier, and which ends the
//! connection at once instead of after the idle timeout. The token is an HMAC of the
//! connection id, so the new process can only produce it with the old process's key; and
//! quinn only answers packets whose connection id passes its generator's check, which is
//! keyed too. Both keys are therefore derived from one secret that outlives the process.

use ring::hmac;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The file, in the data directory, holding the secret (32 random bytes, mode 0600).
pub const FILE_NAME: &str = "quic-reset.key";
const LEN: usize = 32;

/// The secret could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum ResetKeyError {
    /// Reading, writing or creating the file failed.
    #[error(
        "{path}: {source} (the relay keeps its QUIC stateless-reset secret there; the data \
         directory must be writable by the relay)"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file exists but does not hold a secret.
    #[error(
        "{path} holds {len} bytes, not the {LEN} of a stateless-reset secret: it was damaged \
         or replaced; delete it and the relay makes a new one (connections open across that \
         restart then wait for their idle timeout instead of learning of it at once)"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// The 32-byte secret both keys come from; zeroized on drop.
pub struct ResetSecret(Zeroizing<[u8; LEN]>);

impl ResetSecret {
    /// Reads `dir/quic-reset.key`, creating it with a fresh random secret on first use. The
    /// file appears complete or not at all: it is written under another (random) name, synced,
    /// and linked into place, so two relays starting at once on one directory agree on one
    /// secret and a crash never leaves a short file; temporary files a crash left are removed.
    /// Warns when the file is accessible to others than its owner.
    pub fn load_or_create(dir: &Path) -> Result<Self, ResetKeyError> {
        let path = dir.join(FILE_NAME);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ResetKeyError::Io { path, source }
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                warn_if_loose(&path);
                remove_stale_temps(dir);
                return Self::from_file(&path, bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut secret = Zeroizing::new([0u8; LEN]);
        let mut suffix = [0u8; 8];
        let rng = ring::rand::SystemRandom::new();
        ring::rand::SecureRandom::fill(&rng, &mut secret[..])
            .and_then(|()| ring::rand::SecureRandom::fill(&rng, &mut suffix))
            .map_err(|_| io(&path)(std::io::Error::other("the system random source failed")))?;
        // A random name, not the process id: in a container that is the same number at every
        // start, so a temporary file left by a crash would block every later start.
        let tmp = dir.join(format!("{FILE_NAME}.{}{TMP_SUFFIX}", hex::encode(suffix)));
        let written = write_new_private(&tmp, &secret[..]).map_err(io(&tmp));
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(true),
            // Another relay on this directory made one first: use that.
            Err(_) if path.exists() => Ok(false),
            Err(e) => Err(io(&path)(e)),
        });
        let _ = std::fs::remove_file(&tmp);
        remove_stale_temps(dir);
        if !linked? {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            return Self::from_file(&path, bytes);
        }
        // The directory entry too, so the secret survives a power cut as it survives a crash.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Self(secret))
    }

    fn from_file(path: &Path, bytes: Vec<u8>) -> Result<Self, ResetKeyError> {
        let bytes = Zeroizing::new(bytes);
        let secret: [u8; LEN] = bytes[..].try_into().map_err(|_| ResetKeyError::Length {
            path: path.to_owned(),
            len: bytes.len(),
        })?;
        Ok(Self(Zeroizing::new(secret)))
    }

    /// A key for one purpose, so the reset key and the connection-id key are independent.
    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0[..]), label);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The endpoint configuration: stateless-reset tokens and connection ids both keyed from
    /// this secret, so that a restarted relay resets the connections of the one before it.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let reset = self.derive(b"sealpost/1 quic stateless reset");
        let mut cfg =
            quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &reset[..])));
        let cid = self.derive(b"sealpost/1 quic connection id");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid[..8]);
        let cid_key = u64::from_be_bytes(cid_key);
        cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        cfg
    }
}

/// How temporary copies of the secret end (as `atomic_file`'s do, which removes leftovers).
const TMP_SUFFIX: &str = ".tmp";

/// Removes temporary copies of the secret that a crash between writing and linking left
/// behind: each holds an unused secret, and nothing else would ever remove them.
fn remove_stale_temps(dir: &Path) {
    crate::store::atomic_file::remove_leftovers(dir, FILE_NAME);
}

/// The permission bits of `mode` that let others than the owner at the secret, if any.
fn loose_bits(mode: u32) -> Option<u32> {
    let loose = mode & 0o077;
    (loose != 0).then_some(loose)
}

/// Warns when the secret's file is readable or writable by others than its owner (someone
/// who reads it can end the relay's connections with forged stateless resets).
fn warn_if_loose(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && let Some(bits) = loose_bits(meta.permissions().mode())
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                others = format!("{bits:o}"),
                "the QUIC stateless-reset secret is accessible to others than its owner; \
                 restrict it with chmod 600"
            );
        }
    }
}

/// Creates `path` (it must not exist) readable by its owner only, writes `data` and syncs.
fn write_new_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = ResetSecret::load_or_create(dir.path()).unwrap();
        let b = ResetSecret::load_or_create(dir.path()).unwrap();
        assert_eq!(&a.0[..], &b.0[..]);
        assert_ne!(&a.0[..], &[0u8; LEN][..]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the secret is left behind, no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_ne!(
            &a.derive(b"one")[..],
            &a.derive(b"two")[..],
            "keys for different purposes differ"
        );
    }

    /// A temporary file a crash left behind, under the name a pid-named one would have had
    /// in a container (pid 1) or any other, neither blocks the start nor stays.
    #[test]
    fn a_leftover_temporary_file_neither_blocks_nor_stays() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{FILE_NAME}.1{TMP_SUFFIX}"));
        std::fs::write(&stale, [7u8; LEN]).unwrap();
        let a = ResetSecret::load_or_create(dir.path()).unwrap();
        assert_ne!(&a.0[..], &[7u8; LEN][..]);
        assert!(!stale.exists());
        // A leftover beside an existing secret goes at the next start as well.
        std::fs::write(&stale, [7u8; LEN]).unwrap();
        let b = ResetSecret::load_or_create(dir.path()).unwrap();
        assert_eq!(&a.0[..], &b.0[..]);
        assert!(!stale.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loose_modes_are_spotted() {
        assert_eq!(loose_bits(0o100600), None);
        assert_eq!(loose_bits(0o400), None);
        assert_eq!(loose_bits(0o644), Some(0o044));
        assert_eq!(loose_bits(0o602), Some(0o002));
    }

    #[test]
    fn a_damaged_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"short").unwrap();
        let err = ResetKeyError::to_string(
            &ResetSecret::load_or_create(dir.path())
                .err()
                .unwrap_or_else(|| panic!("a 5-byte file was accepted")),
        );
        assert!(
            err.contains("5 bytes") && err.contains("delete it"),
            "{err}"
        );
    }
}
