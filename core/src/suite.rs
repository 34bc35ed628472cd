//! AEAD suites and the key type that carries them.

use crate::wire_enum::wire_enum;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of every AEAD key sealpost uses.
pub const KEY_LEN: usize = 32;
/// Bytes of every AEAD nonce sealpost uses.
pub const NONCE_LEN: usize = 12;
/// Bytes of every AEAD tag sealpost uses.
pub const TAG_LEN: usize = 16;

wire_enum! {
    /// An AEAD suite, as numbered on the wire. Its name is the short lowercase one used on
    /// the command line.
    pub enum Suite: u8 [from_u8, to_u8] {
        /// ChaCha20-Poly1305 (RFC 8439).
        ChaCha20Poly1305 = 1 => "chacha20poly1305",
        /// AES-256-GCM.
        Aes256Gcm = 2 => "aes256gcm",
    }
}

impl Suite {
    pub(crate) fn ring_alg(self) -> &'static ring::aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &ring::aead::AES_256_GCM,
        }
    }
}

impl std::str::FromStr for Suite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "chacha20poly1305" | "chacha20-poly1305" | "chacha" | "1" => Ok(Self::ChaCha20Poly1305),
            "aes256gcm" | "aes-256-gcm" | "aes" | "2" => Ok(Self::Aes256Gcm),
            _ => Err(format!(
                "unknown suite {s:?}: expected chacha20poly1305 or aes256gcm"
            )),
        }
    }
}

/// A 32-byte AEAD key bound to its suite. The key bytes are wiped when the value is dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AeadKey {
    #[zeroize(skip)]
    suite: Suite,
    bytes: [u8; KEY_LEN],
}

impl AeadKey {
    /// Wraps raw key bytes for `suite`.
    pub fn new(suite: Suite, bytes: [u8; KEY_LEN]) -> Self {
        Self { suite, bytes }
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate(suite: Suite) -> Result<Self, crate::CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        crate::random::fill(&mut bytes)?;
        Ok(Self { suite, bytes })
    }

    /// The suite this key is for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The raw key bytes. Callers that copy them out take over the duty to wipe the copy.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({}, <redacted>)", self.suite)
    }
}
