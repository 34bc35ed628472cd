//! AEAD suites and the key type that carries them.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of every AEAD key sealpost uses.
pub const KEY_LEN: usize = 32;
/// Bytes of every AEAD nonce sealpost uses.
pub const NONCE_LEN: usize = 12;
/// Bytes of every AEAD tag sealpost uses.
pub const TAG_LEN: usize = 16;

/// An AEAD suite, as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM.
    Aes256Gcm = 2,
}

impl Suite {
    /// The suite for a wire byte, or `None` if no suite has that number.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::ChaCha20Poly1305),
            2 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// A short lowercase name, as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "chacha20poly1305",
            Self::Aes256Gcm => "aes256gcm",
        }
    }

    pub(crate) fn ring_alg(self) -> &'static ring::aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &ring::aead::AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
