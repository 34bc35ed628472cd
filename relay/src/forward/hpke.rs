//! HPKE (RFC 9180) on the relay's side: a thin receiver over the `hpke` crate, the same crate
//! and suite clients seal with: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305. The relay needs three things of it: the receiver's setup from its
//! forwarding secret and a request's encapsulated key, the opening of the request, and an
//! export (the key that seals the answer).
//!
//! HPKE is not ours to implement: this module only fixes the suite, keeps the crate's generic
//! types out of the rest of the relay, and turns its errors into the two the relay can act on.
//!
//! Zeroization: the crate's X25519 private key wraps `x25519_dalek::StaticSecret`, which wipes
//! itself on drop only when x25519-dalek's `zeroize` feature is on. The crate does not turn
//! it on; sealpost-core does (its Cargo.toml, and a compile-time check in `core/src/e2e.rs`),
//! so every build that links the relay has it. The crate's key schedule, shared secret and
//! AEAD keys wipe themselves.

use ::hpke::aead::{AeadCtxR, AeadTag, ChaCha20Poly1305};
use ::hpke::kdf::HkdfSha256;
use ::hpke::kem::X25519HkdfSha256;
use ::hpke::{Deserializable, Kem as _, OpModeR, Serializable};
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Bytes of an X25519 key (public or secret) and of an encapsulated key.
pub const KEY_LEN: usize = 32;
/// Bytes of the AEAD tag at the end of a ciphertext.
pub const TAG_LEN: usize = 16;

/// Why a sealed request could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpkeError {
    /// The encapsulated key gives an all-zero shared secret (a small-order point): RFC 9180
    /// §7.1.4 requires refusing it.
    #[error("the encapsulated key is not a usable X25519 public key")]
    BadEnc,
    /// The ciphertext does not open: not sealed to this key, altered, or shorter than a tag.
    #[error("the ciphertext does not open under this key")]
    Open,
}

/// An X25519 secret key of the suite; wiped on drop (see the module's comment).
pub struct SecretKey {
    sk: <Kem as ::hpke::Kem>::PrivateKey,
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", hex::encode(self.public))
    }
}

impl SecretKey {
    /// The key whose secret scalar is `bytes` (as stored; X25519 clamps it when used).
    pub fn from_bytes(bytes: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        let sk = <Kem as ::hpke::Kem>::PrivateKey::from_bytes(&bytes[..])
            .unwrap_or_else(|_| unreachable!("every 32 bytes are an X25519 secret"));
        Self::from_crate(sk)
    }

    /// DeriveKeyPair(ikm) of DHKEM(X25519) (RFC 9180 §7.1.3): a key determined by `ikm`.
    pub fn derive(ikm: &[u8]) -> Self {
        Self::from_crate(Kem::derive_keypair(ikm).0)
    }

    fn from_crate(sk: <Kem as ::hpke::Kem>::PrivateKey) -> Self {
        let mut public = [0u8; KEY_LEN];
        Kem::sk_to_pk(&sk).write_exact(&mut public);
        Self { sk, public }
    }

    /// The secret's bytes, for storing.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        self.sk.write_exact(&mut out[..]);
        out
    }

    /// The public key.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }
}

/// A receiver's HPKE context: opens the messages of one sender, in order, and exports
/// secrets. Its keys are wiped on drop (by the crate).
pub struct Context(AeadCtxR<Aead, HkdfSha256, Kem>);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hpke::Context(<redacted>)")
    }
}

/// SetupBaseR(enc, skR, info): the receiver's context.
pub fn setup_receiver(
    enc: &[u8; KEY_LEN],
    sk_r: &SecretKey,
    info: &[u8],
) -> Result<Context, HpkeError> {
    let enc = <Kem as ::hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| HpkeError::BadEnc)?;
    ::hpke::setup_receiver::<Aead, HkdfSha256, Kem>(&OpModeR::Base, &sk_r.sk, &enc, info)
        .map(Context)
        .map_err(|_| HpkeError::BadEnc)
}

impl Context {
    /// Open(aad, ct) of the context's next message, in place: `ct` is the ciphertext with its
    /// tag at the end; returns the plaintext, a prefix of `ct`.
    pub fn open<'a>(&mut self, aad: &[u8], ct: &'a mut [u8]) -> Result<&'a mut [u8], HpkeError> {
        let body = ct.len().checked_sub(TAG_LEN).ok_or(HpkeError::Open)?;
        let (body, tag) = ct.split_at_mut(body);
        let tag = AeadTag::<Aead>::from_bytes(tag).map_err(|_| HpkeError::Open)?;
        self.0
            .open_in_place_detached(body, aad, &tag)
            .map_err(|_| HpkeError::Open)?;
        Ok(body)
    }

    /// Export(exporter_context, 32).
    pub fn export32(&self, exporter_context: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.0
            .export(exporter_context, &mut out[..])
            .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF-SHA256's output limit"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
    fn h32(s: &str) -> [u8; 32] {
        h(s).try_into().unwrap()
    }

    // RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305,
    // mode_base. The shared secret, key, base nonce and exporter secret of the appendix are
    // inside the crate's context, out of reach; opening the appendix's ciphertexts checks the
    // key and base nonce, and its exports the exporter secret.
    const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
    const SK_EM: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
    const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD0: &str = "436f756e742d30";
    const CT0: &str = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";
    const AAD1: &str = "436f756e742d31";
    const CT1: &str = "6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c";
    const EXPORTS: [(&str, &str); 3] = [
        (
            "",
            "4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e",
        ),
        (
            "00",
            "8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69",
        ),
        (
            "54657374436f6e74657874",
            "5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53",
        ),
    ];

    fn receiver() -> SecretKey {
        SecretKey::from_bytes(&Zeroizing::new(h32(SK_RM)))
    }

    #[test]
    fn derive_key_pair_matches_a21() {
        for (ikm, sk, pk) in [(IKM_E, SK_EM, PK_EM), (IKM_R, SK_RM, PK_RM)] {
            let k = SecretKey::derive(&h(ikm));
            assert_eq!(k.to_bytes().to_vec(), h(sk));
            assert_eq!(k.public().to_vec(), h(pk));
            // Loading the stored bytes gives the same key back.
            assert_eq!(
                SecretKey::from_bytes(&k.to_bytes()).public().to_vec(),
                h(pk)
            );
        }
    }

    #[test]
    fn receiver_opens_the_a21_ciphertexts_and_exports_its_values() {
        let mut ctx = setup_receiver(&h32(PK_EM), &receiver(), &h(INFO)).unwrap();
        for (exporter_context, value) in EXPORTS {
            assert_eq!(
                &ctx.export32(&h(exporter_context))[..],
                &h(value)[..],
                "{exporter_context}"
            );
        }
        let mut ct = h(CT0);
        assert_eq!(ctx.open(&h(AAD0), &mut ct).unwrap(), &h(PT)[..]);
        // The second message uses the next nonce.
        let mut ct = h(CT1);
        assert_eq!(ctx.open(&h(AAD1), &mut ct).unwrap(), &h(PT)[..]);
    }

    #[test]
    fn altered_input_does_not_open() {
        let sk_r = receiver();
        let open_first = |info: &[u8], aad: &[u8], ct: &mut Vec<u8>| {
            let mut ctx = setup_receiver(&h32(PK_EM), &sk_r, info).unwrap();
            ctx.open(aad, ct).map(|p| p.to_vec())
        };
        let mut ct = h(CT0);
        ct[5] ^= 1;
        assert_eq!(
            open_first(&h(INFO), &h(AAD0), &mut ct),
            Err(HpkeError::Open)
        );
        assert_eq!(
            open_first(&h(INFO), b"Count-1", &mut h(CT0)),
            Err(HpkeError::Open)
        );
        // Another info gives another context.
        assert_eq!(
            open_first(b"other", &h(AAD0), &mut h(CT0)),
            Err(HpkeError::Open)
        );
        // Shorter than a tag.
        assert_eq!(
            open_first(&h(INFO), &h(AAD0), &mut vec![0; TAG_LEN - 1]),
            Err(HpkeError::Open)
        );
        // Out of order: the second message does not open as the first.
        assert_eq!(
            open_first(&h(INFO), &h(AAD1), &mut h(CT1)),
            Err(HpkeError::Open)
        );
        // A small-order point (here: zero) is refused before any key schedule.
        assert_eq!(
            setup_receiver(&[0; 32], &sk_r, &h(INFO)).unwrap_err(),
            HpkeError::BadEnc
        );
    }
}
