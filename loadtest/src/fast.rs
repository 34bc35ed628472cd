//! The load generator's `fast` end-to-end mode. HPKE costs three X25519 multiplications per
//! message, which on a small machine caps the generator far below the relay (see
//! docs/BENCHMARKS.md). In this mode each mailbox has a symmetric key shared by its sender and
//! recipient tasks — what a session key from a ratchet would be — and bodies are
//! `nonce (12) | ChaCha20-Poly1305(key, nonce, padded content, aad = deposit_id) | tag (16)`,
//! exactly the body size, padded like the real layer. The relay sees the same opaque, padded,
//! tagged envelopes as with HPKE; only the client-side cost changes.

use rand::RngCore;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sealpost_core::DepositId;
use sealpost_core::padding::{self, PAD_PREFIX};

/// Body bytes besides the padded plaintext.
pub const OVERHEAD: usize = 12 + 16;

/// The largest content a body of `body_len` bytes holds in this mode.
pub fn max_content(body_len: u32) -> usize {
    (body_len as usize).saturating_sub(OVERHEAD + PAD_PREFIX)
}

/// A mailbox's key in this mode.
pub struct FastKey(LessSafeKey);

impl FastKey {
    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        let k: [u8; 32] = sealpost_core::random::array()?;
        Ok(Self(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &k).map_err(|_| anyhow::anyhow!("key"))?,
        )))
    }

    /// Seals `content` into a body of exactly `body_len` bytes.
    pub fn seal(
        &self,
        deposit_id: &DepositId,
        content: &[u8],
        body_len: u32,
        rng: &mut impl RngCore,
    ) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let mut padded = padding::pad(content, body_len as usize - OVERHEAD)?;
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(deposit_id),
                &mut padded,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut body = Vec::with_capacity(body_len as usize);
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&padded);
        Ok(body)
    }

    /// Opens a body; `None` if it does not authenticate or unpad.
    pub fn open(&self, deposit_id: &DepositId, body: &[u8]) -> Option<Vec<u8>> {
        if body.len() < OVERHEAD + PAD_PREFIX {
            return None;
        }
        let nonce: [u8; 12] = body[..12].try_into().ok()?;
        let mut buf = body[12..].to_vec();
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(deposit_id),
                &mut buf,
            )
            .ok()?;
        padding::unpad(plain).ok().map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let k = FastKey::generate().unwrap();
        let mut rng = rand::rng();
        let body = k.seal(&[1; 16], b"stamp", 256, &mut rng).unwrap();
        assert_eq!(body.len(), 256);
        assert_eq!(k.open(&[1; 16], &body).unwrap(), b"stamp");
        assert!(k.open(&[2; 16], &body).is_none());
        let mut bad = body.clone();
        bad[40] ^= 1;
        assert!(k.open(&[1; 16], &bad).is_none());
    }
}
