//! Mailbox keys: what the relay derives from a recipient secret, the connection-bound proofs
//! a recipient presents, and the delivery layer's AAD.

use crate::suite::{AeadKey, KEY_LEN, NONCE_LEN, Suite, TAG_LEN};
use ring::{hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a recipient id.
pub const RECIPIENT_ID_LEN: usize = 16;
/// A mailbox's identity towards its recipient.
pub type RecipientId = [u8; RECIPIENT_ID_LEN];
/// Bytes of a subscribe or delete proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// The TLS exporter label whose output binds proofs to one connection (RFC 5705 / 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sealpost/1 proof";
/// Bytes taken from the exporter.
pub const EXPORTER_LEN: usize = 32;

/// HKDF salt for mailbox key derivation.
const HKDF_SALT: &[u8] = b"sealpost/1 mailbox";
/// HKDF info for the delivery key.
const INFO_DELIVER: &[u8] = b"sealpost/1 deliver";
/// HKDF info for the auth key.
const INFO_AUTH: &[u8] = b"sealpost/1 auth";
/// Proof purpose prefixes: a subscribe proof is not a delete proof.
const PROOF_SUBSCRIBE: &[u8] = b"sealpost/1 subscribe";
const PROOF_DELETE: &[u8] = b"sealpost/1 delete";

/// The secret a recipient gives the relay at CREATE, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RecipientSecret(pub [u8; KEY_LEN]);

impl RecipientSecret {
    /// A fresh secret from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, crate::CryptoError> {
        Ok(Self(crate::random::array()?))
    }
}

impl std::fmt::Debug for RecipientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecipientSecret(<redacted>)")
    }
}

/// The HMAC key for subscribe and delete proofs, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AuthKey([u8; KEY_LEN]);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// What proof a recipient presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofPurpose {
    /// For SUBSCRIBE.
    Subscribe,
    /// For DELETE.
    Delete,
}

impl AuthKey {
    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }

    fn message(
        purpose: ProofPurpose,
        recipient_id: &RecipientId,
        exporter: &[u8; EXPORTER_LEN],
    ) -> Vec<u8> {
        let label = match purpose {
            ProofPurpose::Subscribe => PROOF_SUBSCRIBE,
            ProofPurpose::Delete => PROOF_DELETE,
        };
        let mut m = Vec::with_capacity(label.len() + RECIPIENT_ID_LEN + EXPORTER_LEN);
        m.extend_from_slice(label);
        m.extend_from_slice(recipient_id);
        m.extend_from_slice(exporter);
        m
    }

    /// `HMAC-SHA256(auth_key, label || recipient_id || exporter)`.
    pub fn proof(
        &self,
        purpose: ProofPurpose,
        recipient_id: &RecipientId,
        exporter: &[u8; EXPORTER_LEN],
    ) -> [u8; PROOF_LEN] {
        let tag = hmac::sign(
            &self.hmac_key(),
            &Self::message(purpose, recipient_id, exporter),
        );
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a proof in constant time.
    pub fn verify(
        &self,
        purpose: ProofPurpose,
        recipient_id: &RecipientId,
        exporter: &[u8; EXPORTER_LEN],
        proof: &[u8; PROOF_LEN],
    ) -> bool {
        hmac::verify(
            &self.hmac_key(),
            &Self::message(purpose, recipient_id, exporter),
            proof,
        )
        .is_ok()
    }
}

/// The keys of one mailbox derived from its recipient secret.
#[derive(Clone, Debug)]
pub struct MailboxKeys {
    /// Seals deliveries (relay) and opens them (recipient).
    pub deliver: AeadKey,
    /// Proves the right to subscribe and delete.
    pub auth: AuthKey,
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    out
}

impl MailboxKeys {
    /// `PRK = HKDF-Extract(salt = "sealpost/1 mailbox", recipient_secret)`;
    /// `deliver_key = HKDF-Expand(PRK, "sealpost/1 deliver", 32)`;
    /// `auth_key = HKDF-Expand(PRK, "sealpost/1 auth", 32)`.
    pub fn derive(suite: Suite, secret: &RecipientSecret) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&secret.0);
        let mut d = expand(&prk, INFO_DELIVER);
        let a = expand(&prk, INFO_AUTH);
        let deliver = AeadKey::new(suite, d);
        d.zeroize();
        Self {
            deliver,
            auth: AuthKey(a),
        }
    }
}

/// Bytes of the delivery AAD.
pub const DELIVERY_AAD_LEN: usize = RECIPIENT_ID_LEN + 8;

/// The delivery layer's AAD: `recipient_id || seq (u64 BE)`.
pub fn delivery_aad(recipient_id: &RecipientId, seq: u64) -> [u8; DELIVERY_AAD_LEN] {
    let mut aad = [0u8; DELIVERY_AAD_LEN];
    aad[..RECIPIENT_ID_LEN].copy_from_slice(recipient_id);
    aad[RECIPIENT_ID_LEN..].copy_from_slice(&seq.to_be_bytes());
    aad
}

/// Why a delivery could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Shorter than a tag.
    #[error("delivery of {0} bytes is shorter than its 16-byte tag")]
    TooShort(usize),
    /// The tag does not verify: wrong mailbox keys, wrong sequence number or a corrupted frame.
    #[error("delivery seq {0} does not authenticate under this mailbox's delivery key")]
    BadTag(u64),
}

/// Opens one delivery (recipient side) on `engine`: returns the stored envelope bytes.
pub fn open_delivery(
    engine: &crate::engine::Engine,
    key: &AeadKey,
    recipient_id: &RecipientId,
    seq: u64,
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8],
) -> Result<Vec<u8>, DeliveryError> {
    if sealed.len() < TAG_LEN {
        return Err(DeliveryError::TooShort(sealed.len()));
    }
    let aad = delivery_aad(recipient_id, seq);
    let mut out = vec![0u8; sealed.len() - TAG_LEN];
    let mut ok = [false];
    let mut jobs = [crate::batch::OpenJob {
        key,
        nonce: *nonce,
        aad: &aad,
        ciphertext: sealed,
        out: &mut out,
    }];
    engine.open(&mut jobs, &mut ok).expect("shapes fixed above");
    if ok[0] {
        Ok(out)
    } else {
        Err(DeliveryError::BadTag(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let s = RecipientSecret([5; 32]);
        let a = MailboxKeys::derive(Suite::ChaCha20Poly1305, &s);
        let b = MailboxKeys::derive(Suite::ChaCha20Poly1305, &s);
        assert_eq!(a.deliver.expose(), b.deliver.expose());
        assert_ne!(a.deliver.expose(), &a.auth.0);
        let other = MailboxKeys::derive(Suite::ChaCha20Poly1305, &RecipientSecret([6; 32]));
        assert_ne!(a.deliver.expose(), other.deliver.expose());
    }

    #[test]
    fn proofs_bind_purpose_mailbox_and_connection() {
        let k = MailboxKeys::derive(Suite::ChaCha20Poly1305, &RecipientSecret([5; 32])).auth;
        let p = k.proof(ProofPurpose::Subscribe, &[1; 16], &[2; 32]);
        assert!(k.verify(ProofPurpose::Subscribe, &[1; 16], &[2; 32], &p));
        assert!(!k.verify(ProofPurpose::Delete, &[1; 16], &[2; 32], &p));
        assert!(!k.verify(ProofPurpose::Subscribe, &[9; 16], &[2; 32], &p));
        assert!(!k.verify(ProofPurpose::Subscribe, &[1; 16], &[3; 32], &p));
    }
}
