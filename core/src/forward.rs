//! Two-hop forwarding (docs/PROTOCOL.md §9): a sender deposits through a relay of its own
//! choosing (the forwarding relay), which passes a request sealed for the destination relay
//! on without being able to read it, and the destination's answer back, sealed for the sender.
//!
//! This module holds what both sides share: the payload layouts of FORWARD and FORWARDED, the
//! padding of sealed requests and answers to size classes, and the sealing of answers under a
//! key exported from the request's HPKE context. The sender's half of HPKE (SetupBaseS, Seal,
//! Export) is here too, through the `hpke` crate, for clients; the relay opens requests with
//! the receiver's half of the same crate (`sealpost_relay::forward::hpke`) and never calls
//! the sender's functions.

use crate::frame::FrameType;
use crate::invitation::check_relay_address;
use crate::msg::MsgError;
use crate::padding::{self, PAD_PREFIX, PaddingError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::TryRngCore;
use hpke::{Deserializable, OpModeS, Serializable};
use zeroize::Zeroizing;

/// HPKE `info` of every forwarded request.
pub const HPKE_INFO: &[u8] = b"sealpost/1 forward";
/// HPKE exporter context of the key that seals the answer to a forwarded request.
pub const RESPONSE_EXPORT: &[u8] = b"sealpost/1 forward response";
/// Bytes of a relay's forwarding public key (X25519).
pub const FORWARD_KEY_LEN: usize = 32;
/// Bytes of the HPKE encapsulated key.
pub const ENC_LEN: usize = 32;
/// Bytes of an AEAD tag (request and answer).
pub const TAG_LEN: usize = 16;
/// The smallest padded request or answer: an INFO, a single small deposit and any answer of
/// a few hundred statuses all look alike.
pub const MIN_PADDED: usize = 1024;
/// The nonce of the answer's AEAD: each HPKE context exports a fresh key and seals exactly
/// one answer under it, so a fixed nonce never repeats under one key.
const RESPONSE_NONCE: [u8; 12] = [0; 12];

/// Why a forwarded request or answer could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The relay's forwarding key is not a valid X25519 public key.
    #[error("the relay's forwarding key is not a valid X25519 public key")]
    BadKey,
    /// The request is larger than one FORWARD may carry.
    #[error(
        "the request is {len} bytes, more than the {max} one FORWARD may carry; send it in parts"
    )]
    TooLarge {
        /// The request's length.
        len: usize,
        /// The most one FORWARD carries.
        max: usize,
    },
    /// Padding failed (a length prefix or padding bytes that do not check).
    #[error(transparent)]
    Padding(#[from] PaddingError),
    /// Sealing failed.
    #[error("sealing the forwarded request failed: {0}")]
    Seal(String),
    /// The answer does not open under the key of this request: it was altered, or is not the
    /// answer to this request.
    #[error("the forwarded answer does not open: altered on the way, or not this request's")]
    Open,
    /// The operating system's random source failed.
    #[error("random source failed")]
    Rng,
}

/// The padded length of a request or answer of `content_len` bytes (its 4-byte length
/// prefix included): at least [`MIN_PADDED`], beyond that Padmé (Nikitin et al., 2019):
/// with `E = ⌊log2 L⌋` and `S = ⌊log2 E⌋ + 1`, `L` is rounded up to a multiple of
/// `2^(E−S)`. The overhead stays under 12 % and a length reveals O(log log L) bits.
pub fn padded_len(content_len: usize) -> usize {
    let l = content_len.saturating_add(PAD_PREFIX);
    if l <= MIN_PADDED {
        return MIN_PADDED;
    }
    let e = usize::BITS - 1 - l.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1usize << (e - s)) - 1;
    l.saturating_add(mask) & !mask
}

/// The most request bytes (frames) one FORWARD carries for a relay whose frame limit is
/// `max_frame`: as much as one frame of the largest size with its length prefix.
pub fn max_request(max_frame: u32) -> usize {
    max_frame as usize + 4
}

/// The largest FORWARD length prefix a relay whose frame limit is `max_frame` accepts: type,
/// the longest address, enc, the largest padded request and its tag. The destination's
/// FORWARDED, shorter by the address, fits under it too.
pub fn max_forward_frame(max_frame: u32) -> u32 {
    let n = 1 + 1 + 255 + ENC_LEN + padded_len(max_request(max_frame)) + TAG_LEN;
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// FORWARD: client → forwarding relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The destination relay, `host:port`.
    pub destination: String,
    /// The request sealed for the destination: `enc || ciphertext`, as FORWARDED carries it.
    pub sealed: Forwarded,
}

impl Forward {
    /// Appends the payload: `a (1) | destination (a) | enc (32) | ciphertext`.
    pub fn encode(&self, out: &mut BytesMut) {
        let d = self.destination.as_bytes();
        out.reserve(1 + d.len() + ENC_LEN + self.sealed.ciphertext.len());
        out.put_u8(u8::try_from(d.len()).unwrap_or(0));
        out.put_slice(d);
        self.sealed.encode(out);
    }

    /// Decodes a payload, splitting the ciphertext off without a copy.
    pub fn decode(mut p: Bytes) -> Result<Self, MsgError> {
        let f = FrameType::Forward;
        let field = |field, problem: String| MsgError::Field {
            frame: f,
            field,
            problem,
        };
        if p.is_empty() {
            return Err(MsgError::Length {
                frame: f,
                expected: 1,
                got: 0,
            });
        }
        let a = usize::from(p.get_u8());
        if a == 0 || p.len() < a {
            return Err(field(
                "destination",
                format!("length {a}, {} bytes follow", p.len()),
            ));
        }
        let dest = p.split_to(a);
        let destination = std::str::from_utf8(&dest)
            .map_err(|_| field("destination", "not UTF-8".into()))?
            .to_owned();
        check_relay_address(&destination).map_err(|e| field("destination", e))?;
        let sealed = Forwarded::decode_as(f, p)?;
        Ok(Self {
            destination,
            sealed,
        })
    }
}

/// FORWARDED: forwarding relay → destination relay; the sealed part of a FORWARD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The HPKE encapsulated key.
    pub enc: [u8; ENC_LEN],
    /// The HPKE ciphertext of the padded request, tag included.
    pub ciphertext: Bytes,
}

impl Forwarded {
    /// Appends the payload: `enc (32) | ciphertext`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.enc);
        out.put_slice(&self.ciphertext);
    }

    /// Decodes a payload.
    pub fn decode(p: Bytes) -> Result<Self, MsgError> {
        Self::decode_as(FrameType::Forwarded, p)
    }

    fn decode_as(frame: FrameType, mut p: Bytes) -> Result<Self, MsgError> {
        let least = ENC_LEN + MIN_PADDED + TAG_LEN;
        if p.len() < least {
            return Err(MsgError::Length {
                frame,
                expected: least,
                got: p.len(),
            });
        }
        let mut enc = [0u8; ENC_LEN];
        p.copy_to_slice(&mut enc);
        Ok(Self { enc, ciphertext: p })
    }
}

/// The key that seals the answer to one forwarded request, exported from its HPKE context
/// (`Export(RESPONSE_EXPORT, 32)`); wiped on drop.
pub struct ResponseKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ResponseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseKey(<redacted>)")
    }
}

impl ResponseKey {
    /// A key from its bytes (the relay's exporter output).
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    fn aead(&self) -> ring::aead::LessSafeKey {
        // 32 bytes is ChaCha20-Poly1305's key length, so this cannot fail.
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.0[..])
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key"));
        ring::aead::LessSafeKey::new(unbound)
    }

    /// Pads `answer` (the frames a relay answers) and seals it: the FORWARD_RESULT payload.
    pub fn seal(&self, answer: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let mut buf = padding::pad(answer, padded_len(answer.len()))?;
        let nonce = ring::aead::Nonce::assume_unique_for_key(RESPONSE_NONCE);
        self.aead()
            .seal_in_place_append_tag(nonce, ring::aead::Aad::empty(), &mut buf)
            .map_err(|_| ForwardError::Seal("answer too long".into()))?;
        Ok(buf)
    }

    /// Opens a FORWARD_RESULT payload: the frames the destination answered.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let nonce = ring::aead::Nonce::assume_unique_for_key(RESPONSE_NONCE);
        let plain = self
            .aead()
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut buf)
            .map_err(|_| ForwardError::Open)?;
        Ok(padding::unpad(plain)?.to_vec())
    }
}

/// A request sealed for a destination relay, and the key its answer will be sealed under.
#[derive(Debug)]
pub struct SealedRequest {
    /// What FORWARD carries after the destination's address.
    pub sealed: Forwarded,
    /// Opens the answer.
    pub response_key: ResponseKey,
}

/// Seals `request` (the frames of one request: an INFO, or DEPOSIT frames) for the relay
/// whose forwarding public key is `forward_key`, padded to its size class. At most
/// [`max_request`] bytes.
pub fn seal_request(
    forward_key: &[u8; FORWARD_KEY_LEN],
    request: &[u8],
    max: usize,
) -> Result<SealedRequest, ForwardError> {
    if request.len() > max {
        return Err(ForwardError::TooLarge {
            len: request.len(),
            max,
        });
    }
    type Kem = X25519HkdfSha256;
    let pk =
        <Kem as hpke::Kem>::PublicKey::from_bytes(forward_key).map_err(|_| ForwardError::BadKey)?;
    let mut rng = rand_core::OsRng.unwrap_err();
    let (enc, mut ctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        HPKE_INFO,
        &mut rng,
    )
    .map_err(|e| ForwardError::Seal(e.to_string()))?;
    let padded = Zeroizing::new(padding::pad(request, padded_len(request.len()))?);
    let ciphertext = ctx
        .seal(&padded, &[])
        .map_err(|e| ForwardError::Seal(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_EXPORT, &mut key[..])
        .map_err(|e| ForwardError::Seal(e.to_string()))?;
    let mut enc_bytes = [0u8; ENC_LEN];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    Ok(SealedRequest {
        sealed: Forwarded {
            enc: enc_bytes,
            ciphertext: Bytes::from(ciphertext),
        },
        response_key: ResponseKey(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_lengths_follow_padme_above_the_minimum() {
        assert_eq!(padded_len(0), 1024);
        assert_eq!(padded_len(1020), 1024);
        // One deposit of a 1 KiB body: 4 + 5 + 52 + 1024 content, plus the prefix.
        assert_eq!(padded_len(1085 - 4), 1088);
        assert_eq!(padded_len(1021), 1088);
        // E = 16, S = 5: multiples of 2^11.
        assert_eq!(padded_len(65597 - 4), 67584);
        for l in [1025usize, 5000, 70000, 1 << 20] {
            let p = padded_len(l);
            assert!(
                p >= l + 4 && (p as f64) < (l + 4) as f64 * 1.12,
                "{l} -> {p}"
            );
        }
        assert_eq!(max_forward_frame(65589), 1 + 1 + 255 + 32 + 67584 + 16);
    }

    #[test]
    fn forward_round_trips_and_checks_the_destination() {
        let fw = Forward {
            destination: "127.0.0.3:4433".into(),
            sealed: Forwarded {
                enc: [7; 32],
                ciphertext: Bytes::from(vec![1; MIN_PADDED + TAG_LEN]),
            },
        };
        let mut b = BytesMut::new();
        fw.encode(&mut b);
        assert_eq!(Forward::decode(b.clone().freeze()).unwrap(), fw);
        let mut bad = b.clone();
        bad[1] = b' ';
        assert!(matches!(
            Forward::decode(bad.freeze()),
            Err(MsgError::Field {
                field: "destination",
                ..
            })
        ));
        let short = b.freeze().slice(..b"x127.0.0.3:4433".len() + 40);
        assert!(matches!(
            Forward::decode(short),
            Err(MsgError::Length { .. })
        ));
    }

    #[test]
    fn an_answer_opens_only_under_its_key() {
        let key = ResponseKey(Zeroizing::new([9; 32]));
        let sealed = key.seal(b"frames").unwrap();
        assert_eq!(sealed.len(), MIN_PADDED + TAG_LEN);
        assert_eq!(key.open(&sealed).unwrap(), b"frames");
        let other = ResponseKey(Zeroizing::new([8; 32]));
        assert!(matches!(other.open(&sealed), Err(ForwardError::Open)));
        let mut bent = sealed.clone();
        bent[3] ^= 1;
        assert!(matches!(key.open(&bent), Err(ForwardError::Open)));
    }

    #[test]
    fn requests_are_padded_and_bounded() {
        let (_, pk) = crate::e2e::generate_keypair();
        let r = seal_request(&pk.0, &[5; 100], 2000).unwrap();
        assert_eq!(r.sealed.ciphertext.len(), MIN_PADDED + TAG_LEN);
        let r = seal_request(&pk.0, &[5; 1500], 2000).unwrap();
        assert_eq!(r.sealed.ciphertext.len(), padded_len(1500) + TAG_LEN);
        assert!(matches!(
            seal_request(&pk.0, &[5; 2001], 2000),
            Err(ForwardError::TooLarge { .. })
        ));
    }
}
