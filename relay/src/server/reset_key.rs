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
    /// file appears complete or not at all: it is written under another name, synced, and
    /// linked into place, so two relays starting at once on one directory agree on one
    /// secret and a crash never leaves a short file.
    pub fn load_or_create(dir: &Path) -> Result<Self, ResetKeyError> {
        let path = dir.join(FILE_NAME);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ResetKeyError::Io { path, source }
        };
        match std::fs::read(&path) {
            Ok(bytes) => return Self::from_file(&path, bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut secret = Zeroizing::new([0u8; LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret[..])
            .map_err(|_| io(&path)(std::io::Error::other("the system random source failed")))?;
        let tmp = dir.join(format!("{FILE_NAME}.{}.tmp", std::process::id()));
        let written = write_new_private(&tmp, &secret[..]).map_err(io(&tmp));
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(true),
            // Another relay on this directory made one first: use that.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path)(e)),
        });
        let _ = std::fs::remove_file(&tmp);
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
