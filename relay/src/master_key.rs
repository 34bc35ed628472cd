//! The master key that encrypts mailbox secrets at rest: read from a file, or from
//! `SEALPOST_MASTER_KEY` when no file is named, as 64 hex digits.

use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The variable that holds the master key when no key file is given.
pub const MASTER_KEY_ENV: &str = "SEALPOST_MASTER_KEY";

/// Why the master key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key file could not be read.
    #[error("--master-key-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key is not 64 hex digits.
    #[error("the master key must be 64 hex digits (32 bytes)")]
    Format,
}

/// The master key from `file`, or from [`MASTER_KEY_ENV`] when `file` is `None`; `None` when
/// neither gives one (the store then keeps secrets unencrypted).
pub fn load(file: Option<&Path>) -> Result<Option<Zeroizing<[u8; 32]>>, MasterKeyError> {
    let text =
        match (file, std::env::var(MASTER_KEY_ENV)) {
            (Some(f), _) => Zeroizing::new(std::fs::read_to_string(f).map_err(|source| {
                MasterKeyError::Read {
                    path: f.to_owned(),
                    source,
                }
            })?),
            (None, Ok(v)) => Zeroizing::new(v),
            (None, Err(_)) => return Ok(None),
        };
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| MasterKeyError::Format)?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_read_and_a_bad_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(*load(Some(&good)).unwrap().unwrap(), [0xab; 32]);
        let bad = dir.join("bad");
        std::fs::write(&bad, "not hex").unwrap();
        assert!(matches!(load(Some(&bad)), Err(MasterKeyError::Format)));
        let missing = dir.join("missing");
        let e = load(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("--master-key-file"), "{e}");
    }
}
