//! The end-to-end layer, for clients only: HPKE base mode (RFC 9180) with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, through the `hpke` crate.
//!
//! `body = enc (32) || HPKE ciphertext of the padded plaintext || HPKE tag (16)`, with
//! `info = "sealpost/1 message"` and `aad = deposit_id`. The relay never sees these keys.
//! One-shot HPKE gives confidentiality towards the recipient's static key, not forward
//! secrecy: applications that need it layer a ratchet or MLS over this.

use crate::envelope::{self, DepositId, Envelope};
use crate::invitation::Invitation;
use crate::padding::{self, PAD_PREFIX, PaddingError, SizeClasses};
use bytes::Bytes;
use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{CryptoRng, RngCore, TryRngCore};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;

/// HPKE `info` for every sealpost message.
pub const HPKE_INFO: &[u8] = b"sealpost/1 message";
/// Bytes of the encapsulated key.
pub const ENC_LEN: usize = 32;
/// Body bytes besides the padded plaintext: enc and the HPKE tag.
pub const BODY_OVERHEAD: usize = ENC_LEN + 16;
/// The smallest body that can carry a sealed message: the overhead and the padded
/// plaintext's length prefix (an empty message).
pub const MIN_BODY: usize = BODY_OVERHEAD + crate::padding::PAD_PREFIX;
/// Bytes of an end-to-end public or secret key.
pub const E2E_KEY_LEN: usize = 32;

/// Why end-to-end sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The message cannot be padded to an allowed size.
    #[error("cannot pad message: {0}")]
    Padding(#[from] PaddingError),
    /// The body is shorter than the HPKE overhead.
    #[error("body of {0} bytes is shorter than the 48-byte HPKE overhead")]
    BodyTooShort(usize),
    /// The recipient key bytes are not a valid X25519 key.
    #[error("invalid end-to-end key bytes")]
    BadKey,
    /// HPKE failed to open: a different recipient key, a different mailbox or a corrupted body.
    #[error("end-to-end decryption failed: not sealed for this key and mailbox, or corrupted")]
    Open,
    /// HPKE failed to seal.
    #[error("end-to-end sealing failed: {0}")]
    Seal(String),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Rng,
    /// The envelope's mailbox does not match the one expected.
    #[error("envelope is addressed to another mailbox")]
    WrongMailbox,
}

/// A recipient's end-to-end public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct E2ePublicKey(pub [u8; E2E_KEY_LEN]);

impl std::fmt::Debug for E2ePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "E2ePublicKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A recipient's end-to-end secret key (zeroized on drop by the underlying X25519 type).
pub struct E2eSecretKey(<Kem as hpke::Kem>::PrivateKey);

// hpke's X25519 private key wraps `x25519_dalek::StaticSecret`, which wipes itself on drop
// only with x25519-dalek's "zeroize" feature; hpke does not ask for it, this crate does
// (Cargo.toml). The feature gives the type both a `Zeroize` impl and a `Drop` that calls it
// (the older `#[zeroize(drop)]`, which does not implement the `ZeroizeOnDrop` marker), so
// these two checks fail to compile if the feature is ever lost. The relay's forwarding key
// is the same type and relies on the same feature.
const _: fn() = || {
    fn zeroizes<T: zeroize::Zeroize>() {}
    zeroizes::<x25519_dalek::StaticSecret>();
};
const _: () = assert!(
    std::mem::needs_drop::<x25519_dalek::StaticSecret>(),
    "x25519-dalek's zeroize feature is off: secret keys would not be wiped on drop"
);

impl std::fmt::Debug for E2eSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("E2eSecretKey(<redacted>)")
    }
}

impl E2eSecretKey {
    /// Restores a key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; E2E_KEY_LEN]) -> Result<Self, E2eError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| E2eError::BadKey)
    }

    /// The key's bytes, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; E2E_KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; E2E_KEY_LEN]);
        out.copy_from_slice(&self.0.to_bytes());
        out
    }

    /// The matching public key.
    pub fn public_key(&self) -> E2ePublicKey {
        let pk = Kem::sk_to_pk(&self.0);
        let mut out = [0u8; E2E_KEY_LEN];
        out.copy_from_slice(&pk.to_bytes());
        E2ePublicKey(out)
    }

    /// Derives a key pair from input keying material (RFC 9180 DeriveKeyPair).
    pub fn derive(ikm: &[u8]) -> Self {
        Self(Kem::derive_keypair(ikm).0)
    }
}

/// The OS random source, as the `hpke` crate wants it.
fn os_rng() -> impl CryptoRng {
    rand_core::OsRng.unwrap_err()
}

/// A fresh end-to-end key pair.
pub fn generate_keypair() -> (E2eSecretKey, E2ePublicKey) {
    let (sk, _) = Kem::gen_keypair(&mut os_rng());
    let sk = E2eSecretKey(sk);
    let pk = sk.public_key();
    (sk, pk)
}

/// The largest content that fits a body of `body_len` bytes.
pub fn max_content(body_len: u32) -> usize {
    (body_len as usize).saturating_sub(BODY_OVERHEAD + PAD_PREFIX)
}

/// The smallest allowed body size that holds `content_len` bytes of content.
pub fn body_size_for(content_len: usize, sizes: &SizeClasses) -> Result<u32, E2eError> {
    sizes
        .smallest_at_least(content_len + BODY_OVERHEAD + PAD_PREFIX)
        .ok_or(E2eError::Padding(PaddingError::TooLong {
            len: content_len,
            max: max_content(sizes.max()),
        }))
}

/// Seals `content` into a body of exactly `body_len` bytes for `recipient`, using `rng` for
/// the ephemeral key.
pub fn seal_body_with_rng<R: CryptoRng + RngCore>(
    recipient: &E2ePublicKey,
    deposit_id: &DepositId,
    content: &[u8],
    body_len: u32,
    rng: &mut R,
) -> Result<Vec<u8>, E2eError> {
    let body_len = body_len as usize;
    if body_len < BODY_OVERHEAD + PAD_PREFIX {
        return Err(E2eError::BodyTooShort(body_len));
    }
    let pk =
        <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0).map_err(|_| E2eError::BadKey)?;
    let mut padded = Zeroizing::new(padding::pad(content, body_len - BODY_OVERHEAD)?);
    let (enc, tag) =
        hpke::single_shot_seal_in_place_detached::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &mut padded,
            deposit_id,
            rng,
        )
        .map_err(|e| E2eError::Seal(e.to_string()))?;
    let mut body = Vec::with_capacity(body_len);
    body.extend_from_slice(&enc.to_bytes());
    body.extend_from_slice(&padded);
    body.extend_from_slice(&tag.to_bytes());
    debug_assert_eq!(body.len(), body_len);
    Ok(body)
}

/// Seals `content` into a body of exactly `body_len` bytes for `recipient`.
pub fn seal_body(
    recipient: &E2ePublicKey,
    deposit_id: &DepositId,
    content: &[u8],
    body_len: u32,
) -> Result<Vec<u8>, E2eError> {
    seal_body_with_rng(recipient, deposit_id, content, body_len, &mut os_rng())
}

/// Opens a body sealed for `sk` and mailbox `deposit_id`, returning the unpadded content.
pub fn open_body(
    sk: &E2eSecretKey,
    deposit_id: &DepositId,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    if body.len() < BODY_OVERHEAD + PAD_PREFIX {
        return Err(E2eError::BodyTooShort(body.len()));
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&body[..ENC_LEN])
        .map_err(|_| E2eError::Open)?;
    let tag_at = body.len() - 16;
    let tag =
        AeadTag::<ChaCha20Poly1305>::from_bytes(&body[tag_at..]).map_err(|_| E2eError::Open)?;
    let mut padded = Zeroizing::new(body[ENC_LEN..tag_at].to_vec());
    hpke::single_shot_open_in_place_detached::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk.0,
        &enc,
        HPKE_INFO,
        &mut padded,
        deposit_id,
        &tag,
    )
    .map_err(|_| E2eError::Open)?;
    let content = padding::unpad(&padded)?;
    Ok(Zeroizing::new(content.to_vec()))
}

/// One call for senders: pads and seals `content` for the invitation's recipient and wraps it
/// in a tagged envelope (its deposit tag computed on `engine`), choosing the smallest allowed
/// body size that fits.
pub fn seal_for_invitation(
    engine: &crate::engine::Engine,
    invitation: &Invitation,
    sizes: &SizeClasses,
    content: &[u8],
) -> Result<Bytes, E2eError> {
    let body_len = body_size_for(content.len(), sizes)?;
    let body = seal_body(
        &invitation.e2e_public,
        &invitation.deposit_id,
        content,
        body_len,
    )?;
    let nonce = crate::random::array().map_err(|_| E2eError::Rng)?;
    Ok(envelope::build(
        engine,
        &invitation.deposit_key,
        &invitation.deposit_id,
        &nonce,
        &body,
    ))
}

/// One call for recipients: opens an envelope (as delivered and opened from the delivery
/// layer) addressed to `deposit_id` and returns the message content.
pub fn open_envelope(
    sk: &E2eSecretKey,
    deposit_id: &DepositId,
    envelope: &Envelope,
) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    if envelope.deposit_id() != deposit_id {
        return Err(E2eError::WrongMailbox);
    }
    open_body(sk, deposit_id, envelope.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Hands out fixed bytes, to reproduce RFC 9180's ephemeral key.
    struct FixedRng(Vec<u8>);
    impl RngCore for FixedRng {
        fn next_u32(&mut self) -> u32 {
            unimplemented!("the KEM only calls fill_bytes")
        }
        fn next_u64(&mut self) -> u64 {
            unimplemented!("the KEM only calls fill_bytes")
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            assert!(dst.len() <= self.0.len(), "test RNG exhausted");
            let rest = self.0.split_off(dst.len());
            dst.copy_from_slice(&self.0);
            self.0 = rest;
        }
    }
    impl CryptoRng for FixedRng {}

    // RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, Base.
    const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
    const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD0: &str = "436f756e742d30";
    const CT0: &str = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";

    #[test]
    fn rfc9180_a21_derive_keypair() {
        let sk = E2eSecretKey::derive(&h(IKM_R));
        assert_eq!(sk.to_bytes().to_vec(), h(SK_RM));
        assert_eq!(sk.public_key().0.to_vec(), h(PK_RM));
    }

    #[test]
    fn rfc9180_a21_seal_reproduces_vector() {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&h(PK_RM)).unwrap();
        let mut rng = FixedRng(h(IKM_E));
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk,
            &h(INFO),
            &h(PT),
            &h(AAD0),
            &mut rng,
        )
        .unwrap();
        assert_eq!(enc.to_bytes().to_vec(), h(ENC));
        assert_eq!(ct, h(CT0));
    }

    #[test]
    fn rfc9180_a21_open_vector() {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&h(SK_RM)).unwrap();
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&h(ENC)).unwrap();
        let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            &h(INFO),
            &h(CT0),
            &h(AAD0),
        )
        .unwrap();
        assert_eq!(pt, h(PT));
        let mut bad = h(CT0);
        bad[0] ^= 1;
        assert!(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
                &OpModeR::Base,
                &sk,
                &enc,
                &h(INFO),
                &bad,
                &h(AAD0)
            )
            .is_err()
        );
    }

    #[test]
    fn body_round_trip_and_binding() {
        let (sk, pk) = generate_keypair();
        let sizes = SizeClasses::default();
        for len in [0usize, 1, 204, 205, 1000, 60000] {
            let content = vec![0x5A; len];
            let body_len = body_size_for(len, &sizes).unwrap();
            let body = seal_body(&pk, &[1; 16], &content, body_len).unwrap();
            assert_eq!(body.len(), body_len as usize);
            assert_eq!(&open_body(&sk, &[1; 16], &body).unwrap()[..], &content[..]);
            assert!(matches!(
                open_body(&sk, &[2; 16], &body),
                Err(E2eError::Open)
            ));
        }
        assert_eq!(body_size_for(204, &sizes).unwrap(), 256);
        assert_eq!(body_size_for(205, &sizes).unwrap(), 1024);
        assert!(body_size_for(65536, &sizes).is_err());
        let (other, _) = generate_keypair();
        let body = seal_body(&pk, &[1; 16], b"hi", 256).unwrap();
        assert!(matches!(
            open_body(&other, &[1; 16], &body),
            Err(E2eError::Open)
        ));
    }
}
