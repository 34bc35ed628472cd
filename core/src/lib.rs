//! sealpost-core: the sans-IO heart of sealpost.
//!
//! Codecs for frames, envelopes and control messages over [`bytes::Bytes`]; padding to size
//! classes; the batch-shaped AEAD API the relay calls per batch; mailbox key derivation and
//! connection-bound proofs; the end-to-end HPKE layer for clients; invitations. Nothing here
//! does I/O or depends on an async runtime, so every piece is deterministic and testable alone.
// unsafe is confined to the SIMD backends (engine::avx2, engine::avx512) and the CPU detection
// (engine::cpu), each block with a SAFETY comment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod e2e;
pub mod engine;
pub mod envelope;
pub mod forward;
pub mod frame;
pub mod invitation;
pub mod keys;
pub mod msg;
pub mod padding;
pub mod random;
pub mod status;
pub mod suite;
mod wire_enum;

pub use envelope::{DepositId, Envelope};
pub use keys::RecipientId;
pub use suite::{AeadKey, Suite};

/// The protocol's ALPN identifier.
pub const ALPN: &[u8] = b"sealpost/1";

/// QUIC application close code for a relay shutting down; clients reconnect after it.
pub const CLOSE_SHUTDOWN: u32 = 1;

/// A failure of the platform's cryptographic services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The operating system's random source failed.
    #[error("the operating system's random source failed")]
    Rng,
}
