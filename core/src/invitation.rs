//! Invitations: everything a sender needs to deposit into one mailbox, as one string.
//!
//! `sealpost1:` followed by unpadded base64url of a body and a checksum (the first four bytes
//! of SHA-256 over the body, to catch copy-and-paste damage). Two body versions are read:
//!
//! - version 1: `1 | suite (1) | certificate pin (32) | deposit_id (16) | deposit_key (32) |
//!   e2e_public (32) | addr_len (1) | relay address (UTF-8)`, the pin being SHA-256 of the
//!   relay's whole end-entity certificate (so any renewal invalidates it);
//! - version 2: `2 | suite (1) | trust (1) | [key pin (32) when trust = 1] | deposit_id (16) |
//!   deposit_key (32) | e2e_public (32) | addr_len (1) | relay address (UTF-8)`, where trust 1
//!   pins SHA-256 of the certificate's SubjectPublicKeyInfo (surviving renewals with the same
//!   key) and trust 2 asks for a certificate from a CA the sender trusts, for the address's
//!   host name.
//!
//! New invitations are version 2; a version 1 invitation (a [`RelayTrust::CertificatePin`])
//! still encodes as version 1, byte for byte.

use crate::e2e::{E2E_KEY_LEN, E2ePublicKey};
use crate::envelope::DepositId;
use crate::suite::{AeadKey, KEY_LEN, Suite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

/// The string prefix of every invitation.
pub const PREFIX: &str = "sealpost1:";
const V1: u8 = 1;
const V2: u8 = 2;
const TRUST_KEY_PIN: u8 = 1;
const TRUST_CA: u8 = 2;
const PIN_LEN: usize = 32;
/// deposit_id, deposit_key, e2e_public and the address length byte: in both versions.
const TAIL_FIXED: usize = 16 + KEY_LEN + E2E_KEY_LEN + 1;
const CHECKSUM: usize = 4;

/// What is wrong with an invitation string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvitationError {
    /// It does not start with `sealpost1:`.
    #[error("an invitation starts with \"sealpost1:\"; this text does not")]
    Prefix,
    /// The part after the prefix is not base64url.
    #[error(
        "invitation is not valid base64url after \"sealpost1:\" ({0}); was it cut or re-wrapped?"
    )]
    Base64(String),
    /// Too short to hold the fields.
    #[error("invitation is truncated: {got} bytes decoded, at least {need} needed")]
    Truncated {
        /// Bytes decoded.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The checksum does not match: the text was altered.
    #[error("invitation checksum does not match: the text was altered or mistyped")]
    Checksum,
    /// A version this implementation does not read.
    #[error(
        "invitation version {0} is not supported (this build reads versions 1 and 2); a newer \
         sealpost may read it"
    )]
    Version(u8),
    /// An unknown suite number.
    #[error("invitation names suite {0}, which this build does not know")]
    Suite(u8),
    /// An unknown way of trusting the relay.
    #[error("invitation names relay trust kind {0}, which this build does not know")]
    Trust(u8),
    /// The relay address is empty, not UTF-8, or its length does not match the data.
    #[error("invitation relay address is invalid: {0}")]
    Address(String),
}

/// How a sender's client authenticates the relay named in an invitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayTrust {
    /// SHA-256 of the relay's whole end-entity certificate (version 1 invitations). Any new
    /// certificate, even for the same key, no longer matches.
    CertificatePin([u8; 32]),
    /// SHA-256 of the DER SubjectPublicKeyInfo of the relay's end-entity certificate: a
    /// renewed certificate for the same key still matches.
    KeyPin([u8; 32]),
    /// A certificate issued by a CA the sender's client trusts, for the host name of the
    /// relay address (the usual WebPKI checks).
    CaForHost,
}

/// A parsed invitation.
#[derive(Clone, Debug)]
pub struct Invitation {
    /// The relay's address, `host:port` (an IPv6 host in brackets: `[2001:db8::1]:4433`).
    pub relay: String,
    /// How to authenticate the relay.
    pub trust: RelayTrust,
    /// The mailbox's deposit id.
    pub deposit_id: DepositId,
    /// The deposit key (and with it the suite).
    pub deposit_key: AeadKey,
    /// The recipient's end-to-end public key.
    pub e2e_public: E2ePublicKey,
}

impl Invitation {
    /// The suite of the mailbox.
    pub fn suite(&self) -> Suite {
        self.deposit_key.suite()
    }

    /// The invitation as a string. It contains the deposit key: treat it as a secret.
    pub fn encode(&self) -> Result<String, InvitationError> {
        let addr = self.relay.as_bytes();
        if addr.is_empty() || addr.len() > 255 {
            return Err(InvitationError::Address(format!(
                "must be 1 to 255 bytes, is {}",
                addr.len()
            )));
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(
            3 + PIN_LEN + TAIL_FIXED + addr.len() + CHECKSUM,
        ));
        match self.trust {
            RelayTrust::CertificatePin(pin) => {
                raw.extend_from_slice(&[V1, self.suite() as u8]);
                raw.extend_from_slice(&pin);
            }
            RelayTrust::KeyPin(pin) => {
                raw.extend_from_slice(&[V2, self.suite() as u8, TRUST_KEY_PIN]);
                raw.extend_from_slice(&pin);
            }
            RelayTrust::CaForHost => raw.extend_from_slice(&[V2, self.suite() as u8, TRUST_CA]),
        }
        raw.extend_from_slice(&self.deposit_id);
        raw.extend_from_slice(self.deposit_key.expose());
        raw.extend_from_slice(&self.e2e_public.0);
        raw.push(addr.len() as u8);
        raw.extend_from_slice(addr);
        let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
        raw.extend_from_slice(&sum.as_ref()[..CHECKSUM]);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw[..])))
    }

    /// Parses an invitation string; surrounding white space is ignored. Base64 padding
    /// (`=`) is refused, as is anything after the checksum.
    pub fn parse(s: &str) -> Result<Self, InvitationError> {
        let s = s.trim();
        let rest = s.strip_prefix(PREFIX).ok_or(InvitationError::Prefix)?;
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(rest)
                .map_err(|e| InvitationError::Base64(e.to_string()))?,
        );
        // The shortest: version 2 with CA trust and a one-byte address.
        let least = 3 + TAIL_FIXED + 1 + CHECKSUM;
        if raw.len() < least {
            return Err(InvitationError::Truncated {
                got: raw.len(),
                need: least,
            });
        }
        let (body, sum) = raw.split_at(raw.len() - CHECKSUM);
        let want = ring::digest::digest(&ring::digest::SHA256, body);
        if &want.as_ref()[..CHECKSUM] != sum {
            return Err(InvitationError::Checksum);
        }
        let suite = Suite::from_u8(body[1]).ok_or(InvitationError::Suite(body[1]))?;
        let (trust, tail) = match body[0] {
            V1 => (RelayTrust::CertificatePin(pin_at(body, 2)?), 2 + PIN_LEN),
            V2 => match body[2] {
                TRUST_KEY_PIN => (RelayTrust::KeyPin(pin_at(body, 3)?), 3 + PIN_LEN),
                TRUST_CA => (RelayTrust::CaForHost, 3),
                other => return Err(InvitationError::Trust(other)),
            },
            other => return Err(InvitationError::Version(other)),
        };
        let fields = body.get(tail..).unwrap_or_default();
        if fields.len() < TAIL_FIXED + 1 {
            return Err(InvitationError::Truncated {
                got: raw.len(),
                need: tail + TAIL_FIXED + 1 + CHECKSUM,
            });
        }
        let (fixed, addr) = fields.split_at(TAIL_FIXED);
        let mut deposit_id = [0u8; 16];
        deposit_id.copy_from_slice(&fixed[..16]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&fixed[16..16 + KEY_LEN]);
        let mut e2e = [0u8; E2E_KEY_LEN];
        e2e.copy_from_slice(&fixed[16 + KEY_LEN..16 + KEY_LEN + E2E_KEY_LEN]);
        let alen = fixed[TAIL_FIXED - 1] as usize;
        if addr.len() != alen || alen == 0 {
            return Err(InvitationError::Address(format!(
                "length byte says {alen}, {} bytes present",
                addr.len()
            )));
        }
        let relay = std::str::from_utf8(addr)
            .map_err(|_| InvitationError::Address("not UTF-8".into()))?
            .to_owned();
        Ok(Self {
            relay,
            trust,
            deposit_id,
            deposit_key: AeadKey::new(suite, *key),
            e2e_public: E2ePublicKey(e2e),
        })
    }
}

/// The 32-byte pin at `at` in `body`.
fn pin_at(body: &[u8], at: usize) -> Result<[u8; PIN_LEN], InvitationError> {
    body.get(at..at + PIN_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(InvitationError::Truncated {
            got: body.len() + CHECKSUM,
            need: at + PIN_LEN + TAIL_FIXED + 1 + CHECKSUM,
        })
}

impl std::str::FromStr for Invitation {
    type Err = InvitationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(trust: RelayTrust) -> Invitation {
        Invitation {
            relay: "relay.example:4433".into(),
            trust,
            deposit_id: [2; 16],
            deposit_key: AeadKey::new(Suite::Aes256Gcm, [3; 32]),
            e2e_public: E2ePublicKey([4; 32]),
        }
    }

    #[test]
    fn round_trip_every_trust() {
        for trust in [
            RelayTrust::CertificatePin([1; 32]),
            RelayTrust::KeyPin([5; 32]),
            RelayTrust::CaForHost,
        ] {
            let s = sample(trust).encode().unwrap();
            assert!(s.starts_with(PREFIX));
            let p = Invitation::parse(&format!("  {s}\n")).unwrap();
            assert_eq!(p.relay, "relay.example:4433");
            assert_eq!(p.trust, trust);
            assert_eq!(p.deposit_id, [2; 16]);
            assert_eq!(p.deposit_key.expose(), &[3; 32]);
            assert_eq!(p.suite(), Suite::Aes256Gcm);
            assert_eq!(p.e2e_public, E2ePublicKey([4; 32]));
            assert_eq!(p.encode().unwrap(), s);
        }
    }

    /// A version 1 invitation as the previous release wrote it still reads, byte for byte
    /// the layout of PROTOCOL.md §7.
    #[test]
    fn version_1_bytes_still_parse() {
        let mut raw = vec![1u8, Suite::ChaCha20Poly1305 as u8];
        raw.extend_from_slice(&[9; 32]);
        raw.extend_from_slice(&[2; 16]);
        raw.extend_from_slice(&[3; 32]);
        raw.extend_from_slice(&[4; 32]);
        raw.push(6);
        raw.extend_from_slice(b"[::1]:");
        let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
        raw.extend_from_slice(&sum.as_ref()[..4]);
        let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        let p = Invitation::parse(&text).unwrap();
        assert_eq!(p.trust, RelayTrust::CertificatePin([9; 32]));
        assert_eq!(p.relay, "[::1]:");
        assert_eq!(p.encode().unwrap(), text);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let s = sample(RelayTrust::KeyPin([1; 32])).encode().unwrap();
        assert_eq!(
            Invitation::parse("hello"),
            Err(InvitationError::Prefix).map(|_: ()| unreachable!())
        );
        assert!(matches!(
            Invitation::parse("sealpost1:!!!"),
            Err(InvitationError::Base64(_))
        ));
        assert!(matches!(
            Invitation::parse(&format!("{s}=")),
            Err(InvitationError::Base64(_))
        ));
        assert!(matches!(
            Invitation::parse(&s[..40]),
            Err(InvitationError::Truncated { .. })
        ));
        let mut chars: Vec<char> = s.chars().collect();
        let i = PREFIX.len() + 20;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let altered: String = chars.into_iter().collect();
        assert_eq!(
            Invitation::parse(&altered).unwrap_err(),
            InvitationError::Checksum
        );
        // An unknown trust kind and an unknown version are named.
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut raw = URL_SAFE_NO_PAD.decode(&s[PREFIX.len()..]).unwrap();
            raw.truncate(raw.len() - CHECKSUM);
            edit(&mut raw);
            let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
            raw.extend_from_slice(&sum.as_ref()[..CHECKSUM]);
            Invitation::parse(&format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw)))
        };
        assert_eq!(with(&|r| r[2] = 7).unwrap_err(), InvitationError::Trust(7));
        assert_eq!(
            with(&|r| r[0] = 3).unwrap_err(),
            InvitationError::Version(3)
        );
    }

    impl PartialEq for Invitation {
        fn eq(&self, o: &Self) -> bool {
            self.relay == o.relay && self.trust == o.trust && self.deposit_id == o.deposit_id
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Invitation::parse(&format!("{PREFIX}{s}"));
        }

        #[test]
        fn parse_never_panics_on_checksummed_bodies(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut raw = body;
            let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
            raw.extend_from_slice(&sum.as_ref()[..CHECKSUM]);
            let _ = Invitation::parse(&format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw)));
        }
    }
}
