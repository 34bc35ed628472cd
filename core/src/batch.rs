//! Batch-shaped AEAD jobs: what the relay hands the crypto engine once per batch of envelopes.
//!
//! Each job carries its own key, nonce, AAD and data, so one batch may mix suites, keys and
//! lengths. Results are per job: a job that fails to authenticate fails alone. The jobs are run
//! by an [`Engine`](crate::engine::Engine) value (`engine.verify(&jobs, &mut results)`), which
//! the program chooses once; this module only describes the work and checks its shape.

use crate::suite::{AeadKey, NONCE_LEN, Suite, TAG_LEN};

/// The longest message one ChaCha20-Poly1305 job may carry: its 32-bit block counter starts
/// at 1.
pub const MAX_MESSAGE: usize = 64 * (u32::MAX as usize);

/// The longest message one AES-256-GCM job may carry: GCM's 32-bit counter starts at 2 for
/// the message, so `2^32 - 2` blocks of 16 bytes (`2^36 - 32`). ring refuses anything longer.
pub const MAX_MESSAGE_AES_GCM: usize = 16 * (u32::MAX as usize - 1);

/// The longest message a job of `suite` may carry; the engine refuses longer ones with
/// [`BatchError::TooLong`] before any backend sees them.
pub const fn max_message(suite: Suite) -> usize {
    match suite {
        Suite::ChaCha20Poly1305 => MAX_MESSAGE,
        Suite::Aes256Gcm => MAX_MESSAGE_AES_GCM,
    }
}

/// Verify a tag over `aad` with an empty plaintext (the deposit-tag check).
#[derive(Debug, Clone, Copy)]
pub struct VerifyJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the tag was made with.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The authenticated bytes.
    pub aad: &'a [u8],
    /// The tag to check.
    pub tag: &'a [u8; TAG_LEN],
}

/// Encrypt `plaintext` into `out`, which must be `plaintext.len() + TAG_LEN` bytes long: the
/// ciphertext followed by the tag.
#[derive(Debug)]
pub struct SealJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// A nonce never used before with this key.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Bytes to encrypt.
    pub plaintext: &'a [u8],
    /// Destination: ciphertext then tag.
    pub out: &'a mut [u8],
}

/// Decrypt `ciphertext` (ciphertext then tag) into `out`, which must be
/// `ciphertext.len() - TAG_LEN` bytes long. On failure `out` is zeroed.
#[derive(Debug)]
pub struct OpenJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the ciphertext was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Ciphertext followed by its tag.
    pub ciphertext: &'a [u8],
    /// Destination for the plaintext.
    pub out: &'a mut [u8],
}

/// Seal in place: `buf` holds the plaintext followed by [`TAG_LEN`] spare bytes, and ends up
/// holding the ciphertext followed by the tag.
#[derive(Debug)]
pub struct SealInPlaceJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// A nonce never used before with this key.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Plaintext then room for the tag.
    pub buf: &'a mut [u8],
}

/// Open in place: `buf` holds the ciphertext followed by the tag; afterwards its first
/// `buf.len() - TAG_LEN` bytes hold the plaintext (zeroed on failure).
#[derive(Debug)]
pub struct OpenInPlaceJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the ciphertext was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Ciphertext then tag.
    pub buf: &'a mut [u8],
}

/// A batch call was given buffers of the wrong shape. This is a bug in the caller, never a
/// property of received data, and no job of the batch was processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// `results` does not have one slot per job.
    #[error("results slice has {results} slots for {jobs} jobs")]
    ResultsLen {
        /// Jobs given.
        jobs: usize,
        /// Result slots given.
        results: usize,
    },
    /// A job's output buffer has the wrong length.
    #[error("job {index}: output buffer is {got} bytes, expected {expected}")]
    OutLen {
        /// Which job.
        index: usize,
        /// Its output length.
        got: usize,
        /// The length it needs.
        expected: usize,
    },
    /// A job's message is longer than its suite's counter allows ([`max_message`]).
    #[error("job {index}: {len} bytes exceed the {max} bytes a {suite} message may have")]
    TooLong {
        /// Which job.
        index: usize,
        /// The job's suite.
        suite: Suite,
        /// Its length.
        len: usize,
        /// The suite's limit.
        max: usize,
    },
    /// An open job's ciphertext is too short to hold even the tag.
    #[error("job {index}: the ciphertext is {len} bytes, shorter than the {TAG_LEN}-byte tag")]
    ShortCiphertext {
        /// Which job.
        index: usize,
        /// Its length.
        len: usize,
    },
}

pub(crate) fn check_results(jobs: usize, results: usize) -> Result<(), BatchError> {
    if jobs != results {
        return Err(BatchError::ResultsLen { jobs, results });
    }
    Ok(())
}

/// Checks one job's shape: its output buffer is `expected` bytes and its message fits the
/// suite's counter.
pub(crate) fn check_len(
    index: usize,
    suite: Suite,
    message: usize,
    got: usize,
    expected: usize,
) -> Result<(), BatchError> {
    if got != expected {
        return Err(BatchError::OutLen {
            index,
            got,
            expected,
        });
    }
    let max = max_message(suite);
    if message > max {
        return Err(BatchError::TooLong {
            index,
            suite,
            len: message,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Buffers this long cannot be allocated in a test, so the limits are checked on the
    // shape check itself, which every batch call runs before any backend.
    #[test]
    fn each_suite_has_its_own_limit() {
        for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
            let max = max_message(suite);
            assert_eq!(check_len(3, suite, max, 0, 0), Ok(()));
            assert_eq!(
                check_len(3, suite, max + 1, 0, 0),
                Err(BatchError::TooLong {
                    index: 3,
                    suite,
                    len: max + 1,
                    max
                })
            );
        }
        assert_eq!(max_message(Suite::Aes256Gcm), (1 << 36) - 32);
        assert_eq!(max_message(Suite::ChaCha20Poly1305), (1 << 38) - 64);
        // An AES-GCM message between the two limits is refused, not handed to ring (whose
        // refusal was an `expect` before).
        let between = MAX_MESSAGE_AES_GCM + 1;
        assert!(check_len(0, Suite::Aes256Gcm, between, 0, 0).is_err());
        assert!(check_len(0, Suite::ChaCha20Poly1305, between, 0, 0).is_ok());
    }
}
