//! Batch-shaped AEAD jobs: what the relay hands the crypto engine once per batch of envelopes.
//!
//! Each job carries its own key, nonce, AAD and data, so one batch may mix suites, keys and
//! lengths. Results are per job: a job that fails to authenticate fails alone. The jobs are run
//! by an [`Engine`](crate::engine::Engine) value (`engine.verify(&jobs, &mut results)`), which
//! the program chooses once; this module only describes the work and checks its shape.

use crate::suite::{AeadKey, NONCE_LEN, TAG_LEN};

/// The longest message one ChaCha20-Poly1305 job may carry: its 32-bit block counter starts
/// at 1.
pub const MAX_MESSAGE: usize = 64 * (u32::MAX as usize);

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
    /// A job's message is longer than ChaCha20's 32-bit block counter allows.
    #[error("job {index}: {len} bytes exceed the 256 GiB a ChaCha20-Poly1305 message may have")]
    TooLong {
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

pub(crate) fn check_len(
    index: usize,
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
    if message > MAX_MESSAGE {
        return Err(BatchError::TooLong {
            index,
            len: message,
        });
    }
    Ok(())
}
