//! HPKE (RFC 9180) on the relay's side: base mode, the receiver's setup and single-shot open,
//! and the secret export, for the one suite sealpost uses: DHKEM(X25519, HKDF-SHA256)
//! (KEM 0x0020), HKDF-SHA256 (KDF 0x0001), ChaCha20-Poly1305 (AEAD 0x0003).
//!
//! Clients seal with the `hpke` crate; the relay keeps its cryptography at its provider,
//! ring, and this module builds the receiver from ring's primitives, step for step as RFC 9180
//! §4.1 (DHKEM), §5.1 (KeySchedule), §5.2 (Open) and §5.3 (Export) write them:
//!
//! - HKDF-Extract is HMAC-SHA256 keyed with the salt (`ring::hmac`): its output, a PRK, is
//!   needed as bytes (`psk_id_hash` and `info_hash` go into the key schedule context), which
//!   ring's `hkdf::Salt::extract` does not hand out.
//! - HKDF-Expand is `ring::hkdf::Prk::new_less_safe(..).expand(..)`.
//! - The AEAD is `ring::aead::CHACHA20_POLY1305`.
//! - X25519 is the one step ring cannot do: its `agreement` module has only ephemeral private
//!   keys (generated inside ring and consumed by one agreement), never a static key loaded
//!   from storage, which a long-term forwarding key is. That one Diffie-Hellman is
//!   `x25519_dalek::StaticSecret::diffie_hellman`, whose secret is wiped on drop.
//!
//! The tests check every intermediate value against RFC 9180 Appendix A.2.1, and the
//! sender's half (kept here for those tests only) against the `hpke` crate in
//! `relay/tests/forwarding.rs`.

use ring::{aead, hkdf, hmac};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// `suite_id` of the KEM: "KEM" || I2OSP(0x0020, 2).
const KEM_SUITE_ID: &[u8] = b"KEM\x00\x20";
/// `suite_id` of the whole suite: "HPKE" || kem_id || kdf_id || aead_id.
const HPKE_SUITE_ID: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
/// The version label of every labeled extract and expand.
const VERSION: &[u8] = b"HPKE-v1";
/// `mode_base`.
const MODE_BASE: u8 = 0x00;
/// Nsecret, Nk, Nh: 32 bytes; Nn: 12 bytes.
const N32: usize = 32;
const NN: usize = 12;

/// Why a sealed request could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpkeError {
    /// The encapsulated key gives an all-zero shared secret (a small-order point): RFC 9180
    /// §7.1.4 requires refusing it.
    #[error("the encapsulated key is not a usable X25519 public key")]
    BadEnc,
    /// The ciphertext does not open: not sealed to this key, or altered.
    #[error("the ciphertext does not open under this key")]
    Open,
}

/// An output length for ring's HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Extract(salt, ikm) over the concatenation of `ikm_parts`.
fn extract(salt: &[u8], ikm_parts: &[&[u8]]) -> Zeroizing<[u8; N32]> {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, salt));
    for p in ikm_parts {
        ctx.update(p);
    }
    let mut out = Zeroizing::new([0u8; N32]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" || suite_id || label || ikm).
fn labeled_extract(suite_id: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; N32]> {
    extract(salt, &[VERSION, suite_id, label, ikm])
}

/// LabeledExpand(prk, label, info, L) =
/// Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L), into `out`.
fn labeled_expand(suite_id: &[u8], prk: &[u8; N32], label: &[u8], info: &[u8], out: &mut [u8]) {
    // L ≤ 255 · Nh is all HKDF allows; every caller asks for 12 or 32 bytes, or an export
    // whose length the caller bounds (see `Context::export`).
    let l = u16::try_from(out.len()).unwrap_or(u16::MAX).to_be_bytes();
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
    let parts: [&[u8]; 5] = [&l, VERSION, suite_id, label, info];
    prk.expand(&parts, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("lengths are at most 255 * 32, checked by callers"));
}

/// DHKEM ExtractAndExpand(dh, kem_context).
fn extract_and_expand(dh: &[u8; N32], kem_context: &[u8]) -> Zeroizing<[u8; N32]> {
    let eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh);
    let mut shared = Zeroizing::new([0u8; N32]);
    labeled_expand(
        KEM_SUITE_ID,
        &eae_prk,
        b"shared_secret",
        kem_context,
        &mut shared[..],
    );
    shared
}

/// The Diffie-Hellman value, refused when all zero (RFC 9180 §7.1.4, RFC 7748 §6.1).
fn dh(sk: &StaticSecret, pk: &[u8; N32]) -> Result<Zeroizing<[u8; N32]>, HpkeError> {
    let shared = sk.diffie_hellman(&PublicKey::from(*pk));
    if !shared.was_contributory() {
        return Err(HpkeError::BadEnc);
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

/// DHKEM Decap(enc, skR): the shared secret.
fn decap(sk_r: &StaticSecret, enc: &[u8; N32]) -> Result<Zeroizing<[u8; N32]>, HpkeError> {
    let dh = dh(sk_r, enc)?;
    let pk_r = PublicKey::from(sk_r);
    let mut kem_context = [0u8; 2 * N32];
    kem_context[..N32].copy_from_slice(enc);
    kem_context[N32..].copy_from_slice(pk_r.as_bytes());
    Ok(extract_and_expand(&dh, &kem_context))
}

/// An HPKE context after the base-mode key schedule: what opens the one message and exports
/// secrets. Its keys are wiped on drop.
pub struct Context {
    key: Zeroizing<[u8; N32]>,
    base_nonce: [u8; NN],
    exporter_secret: Zeroizing<[u8; N32]>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hpke::Context(<redacted>)")
    }
}

/// KeySchedule(mode_base, shared_secret, info, psk = "", psk_id = "").
fn key_schedule(shared_secret: &[u8; N32], info: &[u8]) -> Context {
    let psk_id_hash = labeled_extract(HPKE_SUITE_ID, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(HPKE_SUITE_ID, b"", b"info_hash", info);
    let mut ksc = [0u8; 1 + 2 * N32];
    ksc[0] = MODE_BASE;
    ksc[1..1 + N32].copy_from_slice(&psk_id_hash[..]);
    ksc[1 + N32..].copy_from_slice(&info_hash[..]);
    let secret = labeled_extract(HPKE_SUITE_ID, shared_secret, b"secret", b"");
    let mut ctx = Context {
        key: Zeroizing::new([0u8; N32]),
        base_nonce: [0u8; NN],
        exporter_secret: Zeroizing::new([0u8; N32]),
    };
    labeled_expand(HPKE_SUITE_ID, &secret, b"key", &ksc, &mut ctx.key[..]);
    labeled_expand(
        HPKE_SUITE_ID,
        &secret,
        b"base_nonce",
        &ksc,
        &mut ctx.base_nonce,
    );
    labeled_expand(
        HPKE_SUITE_ID,
        &secret,
        b"exp",
        &ksc,
        &mut ctx.exporter_secret[..],
    );
    ctx
}

/// SetupBaseR(enc, skR, info): the receiver's context.
pub fn setup_base_r(
    enc: &[u8; N32],
    sk_r: &StaticSecret,
    info: &[u8],
) -> Result<Context, HpkeError> {
    let shared = decap(sk_r, enc)?;
    Ok(key_schedule(&shared, info))
}

impl Context {
    /// Open(aad, ct) of the context's first message (sequence number 0, so the nonce is the
    /// base nonce), in place: returns the plaintext, a prefix of `ct`.
    pub fn open_first<'a>(&self, aad: &[u8], ct: &'a mut [u8]) -> Result<&'a mut [u8], HpkeError> {
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &self.key[..])
                .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key")),
        );
        key.open_in_place(
            aead::Nonce::assume_unique_for_key(self.base_nonce),
            aead::Aad::from(aad),
            ct,
        )
        .map_err(|_| HpkeError::Open)
    }

    /// Export(exporter_context, L) for L = 32.
    pub fn export32(&self, exporter_context: &[u8]) -> Zeroizing<[u8; N32]> {
        let mut out = Zeroizing::new([0u8; N32]);
        labeled_expand(
            HPKE_SUITE_ID,
            &self.exporter_secret,
            b"sec",
            exporter_context,
            &mut out[..],
        );
        out
    }
}

/// DeriveKeyPair(ikm) of DHKEM(X25519): the secret key (RFC 9180 §7.1.3).
pub fn derive_secret(ikm: &[u8]) -> StaticSecret {
    let dkp_prk = labeled_extract(KEM_SUITE_ID, b"", b"dkp_prk", ikm);
    let mut sk = Zeroizing::new([0u8; N32]);
    labeled_expand(KEM_SUITE_ID, &dkp_prk, b"sk", b"", &mut sk[..]);
    StaticSecret::from(*sk)
}

/// The sender's half for a given ephemeral secret (SetupBaseS with a fixed skE, and Seal of
/// the first message): only for tests, which reproduce the RFC's vectors with it and
/// check that what it seals opens.
#[cfg(test)]
fn seal_with(
    sk_e: &StaticSecret,
    pk_r: &[u8; N32],
    info: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> ([u8; N32], Vec<u8>, Context) {
    let enc = *PublicKey::from(sk_e).as_bytes();
    let dh = dh(sk_e, pk_r).expect("vector keys are contributory");
    let mut kem_context = [0u8; 2 * N32];
    kem_context[..N32].copy_from_slice(&enc);
    kem_context[N32..].copy_from_slice(pk_r);
    let ctx = key_schedule(&extract_and_expand(&dh, &kem_context), info);
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &ctx.key[..]).unwrap(),
    );
    let mut ct = pt.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(ctx.base_nonce),
        aead::Aad::from(aad),
        &mut ct,
    )
    .unwrap();
    (enc, ct, ctx)
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
    // mode_base.
    const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
    const SK_EM: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
    const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const SHARED: &str = "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7";
    const KEY: &str = "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91";
    const BASE_NONCE: &str = "5c4d98150661b848853b547f";
    const EXPORTER_SECRET: &str =
        "a3b010d4994890e2c6968a36f64470d3c824c8f5029942feb11e7a74b2921922";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD0: &str = "436f756e742d30";
    const CT0: &str = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";
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

    #[test]
    fn derive_key_pair_matches_a21() {
        let e = derive_secret(&h(IKM_E));
        assert_eq!(e.to_bytes().to_vec(), h(SK_EM));
        assert_eq!(PublicKey::from(&e).as_bytes().to_vec(), h(PK_EM));
        let r = derive_secret(&h(IKM_R));
        assert_eq!(r.to_bytes().to_vec(), h(SK_RM));
        assert_eq!(PublicKey::from(&r).as_bytes().to_vec(), h(PK_RM));
    }

    #[test]
    fn receiver_setup_matches_every_a21_value() {
        let sk_r = StaticSecret::from(h32(SK_RM));
        assert_eq!(&decap(&sk_r, &h32(PK_EM)).unwrap()[..], &h(SHARED)[..]);
        let ctx = setup_base_r(&h32(PK_EM), &sk_r, &h(INFO)).unwrap();
        assert_eq!(&ctx.key[..], &h(KEY)[..]);
        assert_eq!(&ctx.base_nonce[..], &h(BASE_NONCE)[..]);
        assert_eq!(&ctx.exporter_secret[..], &h(EXPORTER_SECRET)[..]);
        let mut ct = h(CT0);
        assert_eq!(ctx.open_first(&h(AAD0), &mut ct).unwrap(), &h(PT)[..]);
        for (context, value) in EXPORTS {
            assert_eq!(&ctx.export32(&h(context))[..], &h(value)[..], "{context}");
        }
    }

    #[test]
    fn sender_half_reproduces_the_a21_ciphertext() {
        let sk_e = StaticSecret::from(h32(SK_EM));
        let (enc, ct, _) = seal_with(&sk_e, &h32(PK_RM), &h(INFO), &h(AAD0), &h(PT));
        assert_eq!(enc.to_vec(), h(PK_EM));
        assert_eq!(ct, h(CT0));
    }

    #[test]
    fn altered_input_does_not_open() {
        let sk_r = StaticSecret::from(h32(SK_RM));
        let ctx = setup_base_r(&h32(PK_EM), &sk_r, &h(INFO)).unwrap();
        let mut ct = h(CT0);
        ct[5] ^= 1;
        assert_eq!(ctx.open_first(&h(AAD0), &mut ct), Err(HpkeError::Open));
        let mut ct = h(CT0);
        assert_eq!(ctx.open_first(b"Count-1", &mut ct), Err(HpkeError::Open));
        // Another info gives another context.
        let other = setup_base_r(&h32(PK_EM), &sk_r, b"other").unwrap();
        let mut ct = h(CT0);
        assert_eq!(other.open_first(&h(AAD0), &mut ct), Err(HpkeError::Open));
        // A small-order point (here: zero) is refused before any key schedule.
        assert_eq!(
            setup_base_r(&[0; 32], &sk_r, &h(INFO)).unwrap_err(),
            HpkeError::BadEnc
        );
    }
}
