//! Deposit envelopes: what a sender builds and the relay stores as it arrived.
//!
//! ```text
//! 0    1   version = 1
//! 1    1   suite
//! 2    2   reserved, zero
//! 4    4   body_len, u32 BE, one of the allowed sizes
//! 8    16  deposit_id
//! 24   12  nonce
//! 36   N   body
//! 36+N 16  deposit tag = AEAD-seal(deposit_key, nonce, "", aad = bytes 0..36+N)
//! ```

use crate::batch::VerifyJob;
use crate::engine::Engine;
use crate::padding::{MAX_BODY, SizeClasses};
use crate::suite::{AeadKey, NONCE_LEN, Suite, TAG_LEN};
use bytes::{BufMut, Bytes, BytesMut};

/// The only envelope version defined.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 36;
/// Bytes of a deposit id.
pub const DEPOSIT_ID_LEN: usize = 16;
/// Envelope bytes besides the body.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// A mailbox's deposit address, as chosen by the relay.
pub type DepositId = [u8; DEPOSIT_ID_LEN];

/// Why bytes are not a valid envelope. [`EnvelopeError::status_class`] maps each to the
/// deposit status the relay answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header and a tag.
    #[error("envelope of {0} bytes is shorter than the 52-byte minimum (header and tag)")]
    TooShort(usize),
    /// A version this implementation does not speak.
    #[error("envelope version {0} is not supported (expected 1)")]
    Version(u8),
    /// A suite byte that names no suite.
    #[error("envelope suite {0} is not supported (1 = ChaCha20-Poly1305, 2 = AES-256-GCM)")]
    Suite(u8),
    /// Reserved bytes are not zero.
    #[error("envelope reserved bytes must be zero")]
    Reserved,
    /// body_len is not one of the allowed sizes.
    #[error("body length {0} is not an allowed size")]
    BodySize(u32),
    /// The envelope's length does not match its body_len.
    #[error("envelope is {actual} bytes but its body_len implies {expected}")]
    Length {
        /// Length implied by body_len.
        expected: usize,
        /// Length received.
        actual: usize,
    },
}

/// What kind of refusal an [`EnvelopeError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeErrorClass {
    /// Structurally broken.
    Malformed,
    /// The body size is not allowed.
    BadSize,
    /// A version or suite this relay does not support.
    Unsupported,
}

impl EnvelopeError {
    /// The class of refusal, which decides the status code.
    pub fn status_class(&self) -> EnvelopeErrorClass {
        match self {
            Self::Version(_) | Self::Suite(_) => EnvelopeErrorClass::Unsupported,
            Self::BodySize(_) => EnvelopeErrorClass::BadSize,
            Self::TooShort(_) | Self::Reserved | Self::Length { .. } => {
                EnvelopeErrorClass::Malformed
            }
        }
    }
}

/// A structurally valid envelope. It owns its bytes as one `Bytes`, so parsing copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    bytes: Bytes,
    suite: Suite,
}

impl Envelope {
    /// Validates version, suite, reserved bytes, body size and total length.
    pub fn parse(bytes: Bytes, sizes: &SizeClasses) -> Result<Self, EnvelopeError> {
        Self::parse_with(bytes, |n| sizes.contains(n))
    }

    /// Like [`parse`](Self::parse) but accepts any body length up to [`MAX_BODY`]: for
    /// recipients, who take what their relay delivered whatever its size policy.
    pub fn parse_any_size(bytes: Bytes) -> Result<Self, EnvelopeError> {
        Self::parse_with(bytes, |n| n <= MAX_BODY)
    }

    fn parse_with(bytes: Bytes, size_ok: impl Fn(u32) -> bool) -> Result<Self, EnvelopeError> {
        if bytes.len() < OVERHEAD {
            return Err(EnvelopeError::TooShort(bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(EnvelopeError::Version(bytes[0]));
        }
        let suite = Suite::from_u8(bytes[1]).ok_or(EnvelopeError::Suite(bytes[1]))?;
        if bytes[2] != 0 || bytes[3] != 0 {
            return Err(EnvelopeError::Reserved);
        }
        let body_len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if !size_ok(body_len) {
            return Err(EnvelopeError::BodySize(body_len));
        }
        let expected = OVERHEAD + body_len as usize;
        if bytes.len() != expected {
            return Err(EnvelopeError::Length {
                expected,
                actual: bytes.len(),
            });
        }
        Ok(Self { bytes, suite })
    }

    /// The envelope's suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The body length.
    pub fn body_len(&self) -> usize {
        self.bytes.len() - OVERHEAD
    }

    /// The mailbox this envelope is addressed to.
    pub fn deposit_id(&self) -> &DepositId {
        self.bytes[8..24]
            .try_into()
            .expect("length checked in parse")
    }

    /// The sender's nonce, which with the deposit id is the idempotency key.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        self.bytes[24..36]
            .try_into()
            .expect("length checked in parse")
    }

    /// The end-to-end ciphertext.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - TAG_LEN]
    }

    /// The bytes the deposit tag authenticates.
    pub fn authenticated(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - TAG_LEN]
    }

    /// The deposit tag.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        self.bytes[self.bytes.len() - TAG_LEN..]
            .try_into()
            .expect("length checked in parse")
    }

    /// The whole envelope.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole envelope, by value.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The tag check for this envelope under `key`, for [`Engine::verify`].
    pub fn verify_job<'a>(&'a self, key: &'a AeadKey) -> VerifyJob<'a> {
        VerifyJob {
            key,
            nonce: self.nonce(),
            aad: self.authenticated(),
            tag: self.tag(),
        }
    }
}

/// Builds an envelope around an already-sealed `body`, computing the deposit tag with
/// `deposit_key` (whose suite goes in the header) on `engine`.
pub fn build(
    engine: &Engine,
    deposit_key: &AeadKey,
    deposit_id: &DepositId,
    nonce: &[u8; NONCE_LEN],
    body: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(OVERHEAD + body.len());
    out.put_u8(VERSION);
    out.put_u8(deposit_key.suite() as u8);
    out.put_u16(0);
    out.put_u32(u32::try_from(body.len()).expect("body sizes are below 16 MiB"));
    out.put_slice(deposit_id);
    out.put_slice(nonce);
    out.put_slice(body);
    let mut tag = [0u8; TAG_LEN];
    let mut jobs = [crate::batch::SealJob {
        key: deposit_key,
        nonce: *nonce,
        aad: &out,
        plaintext: &[],
        out: &mut tag,
    }];
    engine
        .seal(&mut jobs)
        .expect("buffer shapes are fixed here");
    out.put_slice(&tag);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(suite: Suite, body_len: usize) -> (AeadKey, Bytes) {
        let key = AeadKey::new(suite, [7; 32]);
        let env = build(
            &Engine::detect(),
            &key,
            &[3; 16],
            &[5; 12],
            &vec![0xAB; body_len],
        );
        (key, env)
    }

    #[test]
    fn build_parse_verify() {
        for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
            let (key, bytes) = sample(suite, 256);
            let env = Envelope::parse(bytes.clone(), &SizeClasses::default()).unwrap();
            assert_eq!(env.suite(), suite);
            assert_eq!(env.deposit_id(), &[3; 16]);
            assert_eq!(env.nonce(), &[5; 12]);
            assert_eq!(env.body(), &[0xAB; 256][..]);
            assert_eq!(
                env.as_bytes().as_ptr(),
                bytes.as_ptr(),
                "parse must not copy"
            );
            let mut ok = [false];
            Engine::detect()
                .verify(&[env.verify_job(&key)], &mut ok)
                .unwrap();
            assert!(ok[0]);
            let other = AeadKey::new(suite, [8; 32]);
            Engine::detect()
                .verify(&[env.verify_job(&other)], &mut ok)
                .unwrap();
            assert!(!ok[0]);
        }
    }

    #[test]
    fn each_header_fault_is_named() {
        let sizes = SizeClasses::default();
        let (_, good) = sample(Suite::ChaCha20Poly1305, 256);
        let with = |i: usize, v: u8| {
            let mut b = good.to_vec();
            b[i] = v;
            Envelope::parse(Bytes::from(b), &sizes)
        };
        assert_eq!(with(0, 2), Err(EnvelopeError::Version(2)));
        assert_eq!(with(1, 9), Err(EnvelopeError::Suite(9)));
        assert_eq!(with(3, 1), Err(EnvelopeError::Reserved));
        assert_eq!(with(6, 0x02), Err(EnvelopeError::BodySize(512)));
        assert_eq!(
            Envelope::parse(good.slice(..100), &sizes),
            Err(EnvelopeError::Length {
                expected: 308,
                actual: 100
            })
        );
        assert_eq!(
            Envelope::parse(good.slice(..10), &sizes),
            Err(EnvelopeError::TooShort(10))
        );
    }

    proptest! {
        #[test]
        fn any_mutated_body_len_is_rejected(new_len in any::<u32>()) {
            let sizes = SizeClasses::default();
            let (_, good) = sample(Suite::ChaCha20Poly1305, 1024);
            prop_assume!(new_len != 1024);
            let mut b = good.to_vec();
            b[4..8].copy_from_slice(&new_len.to_be_bytes());
            let err = Envelope::parse(Bytes::from(b), &sizes).unwrap_err();
            let ok = matches!(err, EnvelopeError::BodySize(_) | EnvelopeError::Length { .. });
            prop_assert!(ok, "unexpected error {:?}", err);
        }

        #[test]
        fn any_flipped_bit_fails_parse_or_tag(pos in 0usize..(OVERHEAD + 256), bit in 0u8..8) {
            let sizes = SizeClasses::default();
            let (key, good) = sample(Suite::ChaCha20Poly1305, 256);
            let mut b = good.to_vec();
            b[pos] ^= 1 << bit;
            if let Ok(env) = Envelope::parse(Bytes::from(b), &sizes) {
                let mut ok = [true];
                Engine::detect().verify(&[env.verify_job(&key)], &mut ok).unwrap();
                prop_assert!(!ok[0]);
            }
        }
    }
}
