//! Invitations: everything a sender needs to deposit into one mailbox, as one string.
//!
//! `sealpost1:` followed by unpadded base64url of a body and a checksum (the first four bytes
//! of SHA-256 over the body, to catch copy-and-paste damage). Three body versions are read:
//!
//! - version 1: `1 | suite (1) | certificate pin (32) | deposit_id (16) | deposit_key (32) |
//!   e2e_public (32) | addr_len (1) | relay address (UTF-8)`, the pin being SHA-256 of the
//!   relay's whole end-entity certificate (so any renewal invalidates it);
//! - version 2: `2 | suite (1) | trust (1) | [key pin (32) when trust = 1] | deposit_id (16) |
//!   deposit_key (32) | e2e_public (32) | addr_len (1) | relay address (UTF-8)`, where trust 1
//!   pins SHA-256 of the certificate's SubjectPublicKeyInfo (surviving renewals with the same
//!   key) and trust 2 asks for a certificate from a CA the sender trusts, for the address's
//!   host name;
//! - version 3: as version 2, but where version 2 has one address, `count (1)` followed by
//!   `count` times `addr_len (1) | relay address (UTF-8)`: the relays of one deployment, any
//!   of which serves the mailbox.
//! - version 4: as version 3 (with 1 to 8 addresses), and the relays' forwarding public key
//!   (32) after `e2e_public`, so that a sender can deposit through another relay
//!   (docs/PROTOCOL.md §9).
//!
//! An invitation with a forwarding key is written as version 4. Without one, one relay
//! address is written as version 2 (readable by builds that predate version 3), several as
//! version 3; a version 1 invitation (a [`RelayTrust::CertificatePin`]) still encodes as
//! version 1, byte for byte.

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
const V3: u8 = 3;
const V4: u8 = 4;
/// Bytes of a relay's forwarding public key in a version 4 invitation.
pub const FORWARD_KEY_LEN: usize = 32;
/// The most relay addresses one invitation names: enough for the relays of a deployment,
/// few enough that a client trying them in turn gives up in reasonable time.
pub const MAX_RELAYS: usize = 8;
const TRUST_KEY_PIN: u8 = 1;
const TRUST_CA: u8 = 2;
const PIN_LEN: usize = 32;
/// deposit_id, deposit_key, e2e_public and the address length (versions 1, 2) or address
/// count (version 3) byte.
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
        "invitation version {0} is not supported (this build reads versions 1 to 4); a newer \
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
    /// The invitation names no relay, or more than [`MAX_RELAYS`].
    #[error("an invitation names 1 to {MAX_RELAYS} relay addresses, this one {0}")]
    RelayCount(usize),
    /// Several relays with a whole-certificate pin: only version 1 holds that pin, and it
    /// names one relay.
    #[error(
        "a whole-certificate pin (version 1 invitation) names one relay; for several, pin the \
         relays' key (--key-pin) or trust their CA"
    )]
    CertificatePinOneRelay,
    /// A forwarding key with a whole-certificate pin: only version 4 carries the key, and it
    /// pins the relay's public key or trusts a CA.
    #[error(
        "a whole-certificate pin (version 1 invitation) cannot carry a forwarding key; pin the \
         relay's key (--key-pin) or trust its CA"
    )]
    CertificatePinForwardKey,
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
    /// The relays' addresses, `host:port` (an IPv6 host in brackets: `[2001:db8::1]:4433`),
    /// 1 to [`MAX_RELAYS`] of them: relays of one deployment, sharing the mailbox's store and
    /// one certificate (or CA), so that any of them serves it.
    pub relays: Vec<String>,
    /// How to authenticate the relay.
    pub trust: RelayTrust,
    /// The mailbox's deposit id.
    pub deposit_id: DepositId,
    /// The deposit key (and with it the suite).
    pub deposit_key: AeadKey,
    /// The recipient's end-to-end public key.
    pub e2e_public: E2ePublicKey,
    /// The relays' forwarding public key (X25519), when the invitation carries one (version
    /// 4): what a sender seals a request to, to deposit through another relay.
    pub forward_key: Option<[u8; FORWARD_KEY_LEN]>,
}

impl Invitation {
    /// The suite of the mailbox.
    pub fn suite(&self) -> Suite {
        self.deposit_key.suite()
    }

    /// The invitation as a string. It contains the deposit key: treat it as a secret.
    ///
    /// A forwarding key gives version 4; without one, one relay address gives version 2
    /// (version 1 for a [`RelayTrust::CertificatePin`]), several give version 3.
    pub fn encode(&self) -> Result<String, InvitationError> {
        let several = check_relays(&self.relays, self.trust)?;
        if self.forward_key.is_some() && matches!(self.trust, RelayTrust::CertificatePin(_)) {
            return Err(InvitationError::CertificatePinForwardKey);
        }
        let addrs: usize = self.relays.iter().map(|a| 1 + a.len()).sum();
        let mut raw = Zeroizing::new(Vec::with_capacity(
            3 + PIN_LEN + TAIL_FIXED + FORWARD_KEY_LEN + 1 + addrs + CHECKSUM,
        ));
        let version = match (self.forward_key, several) {
            (Some(_), _) => V4,
            (None, true) => V3,
            (None, false) => V2,
        };
        match self.trust {
            RelayTrust::CertificatePin(pin) => {
                raw.extend_from_slice(&[V1, self.suite() as u8]);
                raw.extend_from_slice(&pin);
            }
            RelayTrust::KeyPin(pin) => {
                raw.extend_from_slice(&[version, self.suite() as u8, TRUST_KEY_PIN]);
                raw.extend_from_slice(&pin);
            }
            RelayTrust::CaForHost => {
                raw.extend_from_slice(&[version, self.suite() as u8, TRUST_CA])
            }
        }
        raw.extend_from_slice(&self.deposit_id);
        raw.extend_from_slice(self.deposit_key.expose());
        raw.extend_from_slice(&self.e2e_public.0);
        if let Some(key) = &self.forward_key {
            raw.extend_from_slice(key);
        }
        if version == V3 || version == V4 {
            raw.push(self.relays.len() as u8);
        }
        for addr in &self.relays {
            // check_relays bounds every address to 1..=255 bytes.
            raw.push(addr.len() as u8);
            raw.extend_from_slice(addr.as_bytes());
        }
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
            V2 | V3 | V4 => match body[2] {
                TRUST_KEY_PIN => (RelayTrust::KeyPin(pin_at(body, 3)?), 3 + PIN_LEN),
                TRUST_CA => (RelayTrust::CaForHost, 3),
                other => return Err(InvitationError::Trust(other)),
            },
            other => return Err(InvitationError::Version(other)),
        };
        let fields = body.get(tail..).unwrap_or_default();
        let key_len = if body[0] == V4 { FORWARD_KEY_LEN } else { 0 };
        if fields.len() < TAIL_FIXED + key_len + 1 {
            return Err(InvitationError::Truncated {
                got: raw.len(),
                need: tail + TAIL_FIXED + key_len + 1 + CHECKSUM,
            });
        }
        // deposit_id, deposit_key, e2e_public, [forward_key]; then the address length (or
        // count) byte and the addresses.
        let (fixed, rest) = fields.split_at(TAIL_FIXED - 1 + key_len);
        let (&last, addrs) = rest.split_first().ok_or(InvitationError::Truncated {
            got: raw.len(),
            need: tail + TAIL_FIXED + key_len + 1 + CHECKSUM,
        })?;
        let mut deposit_id = [0u8; 16];
        deposit_id.copy_from_slice(&fixed[..16]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&fixed[16..16 + KEY_LEN]);
        let mut e2e = [0u8; E2E_KEY_LEN];
        let at = 16 + KEY_LEN;
        e2e.copy_from_slice(&fixed[at..at + E2E_KEY_LEN]);
        let forward_key = (body[0] == V4).then(|| {
            let mut k = [0u8; FORWARD_KEY_LEN];
            k.copy_from_slice(&fixed[at + E2E_KEY_LEN..]);
            k
        });
        let relays = if body[0] == V3 || body[0] == V4 {
            let relays = relay_list(last, addrs)?;
            // Version 3 exists for several relays; one is written as version 2, so that
            // every invitation has one encoding. Version 4 names one or more.
            let least = if body[0] == V3 { 2 } else { 1 };
            if relays.len() < least {
                return Err(InvitationError::RelayCount(relays.len()));
            }
            check_relays(&relays, trust)?;
            relays
        } else {
            let alen = last as usize;
            if addrs.len() != alen || alen == 0 {
                return Err(InvitationError::Address(format!(
                    "length byte says {alen}, {} bytes present",
                    addrs.len()
                )));
            }
            vec![utf8_address(addrs)?]
        };
        Ok(Self {
            relays,
            trust,
            deposit_id,
            deposit_key: AeadKey::new(suite, *key),
            e2e_public: E2ePublicKey(e2e),
            forward_key,
        })
    }
}

/// Checks the relay addresses an invitation (or a mailbox file) can carry with `trust`;
/// returns whether there are several (a version 3 invitation). Several addresses must each
/// be a well-formed `host:port` ([`check_relay_address`]) and differ; a single one keeps the
/// looser check of versions 1 and 2 (1 to 255 bytes), so that invitations those versions
/// accepted still encode.
pub fn check_relays(relays: &[String], trust: RelayTrust) -> Result<bool, InvitationError> {
    if relays.is_empty() || relays.len() > MAX_RELAYS {
        return Err(InvitationError::RelayCount(relays.len()));
    }
    for addr in relays {
        if addr.is_empty() || addr.len() > 255 {
            return Err(InvitationError::Address(format!(
                "must be 1 to 255 bytes, is {}",
                addr.len()
            )));
        }
    }
    if relays.len() == 1 {
        return Ok(false);
    }
    if matches!(trust, RelayTrust::CertificatePin(_)) {
        return Err(InvitationError::CertificatePinOneRelay);
    }
    for (i, addr) in relays.iter().enumerate() {
        check_relay_address(addr).map_err(InvitationError::Address)?;
        if relays[..i].contains(addr) {
            return Err(InvitationError::Address(format!("{addr:?} is named twice")));
        }
    }
    Ok(true)
}

/// Checks that `addr` is `host:port`: a port of 1 to 65535 in decimal digits, and a host
/// that is a name or IPv4 address without `:`, or an IPv6 address in brackets. Says what is
/// wrong otherwise. The host is not resolved.
pub fn check_relay_address(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err(format!(
            "{addr:?}: the port must be a number from 1 to 65535"
        ));
    }
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    if !host_ok {
        return Err(format!(
            "{addr:?}: the host must be a DNS name, an IPv4 address, or an IPv6 address in \
             brackets ([2001:db8::1]:4433)"
        ));
    }
    Ok(())
}

/// The `count` length-prefixed addresses that make up all of `data` (version 3).
fn relay_list(count: u8, mut data: &[u8]) -> Result<Vec<String>, InvitationError> {
    let count = usize::from(count);
    if count > MAX_RELAYS {
        return Err(InvitationError::RelayCount(count));
    }
    let mut relays = Vec::with_capacity(count);
    for i in 0..count {
        let Some((&len, rest)) = data.split_first() else {
            return Err(InvitationError::Address(format!(
                "address {} of {count} is missing",
                i + 1
            )));
        };
        let len = usize::from(len);
        let Some(addr) = rest.get(..len).filter(|a| !a.is_empty()) else {
            return Err(InvitationError::Address(format!(
                "address {} of {count}: length byte says {len}, {} bytes present",
                i + 1,
                rest.len()
            )));
        };
        relays.push(utf8_address(addr)?);
        data = &rest[len..];
    }
    if !data.is_empty() {
        return Err(InvitationError::Address(format!(
            "{} bytes after the {count} addresses",
            data.len()
        )));
    }
    Ok(relays)
}

fn utf8_address(addr: &[u8]) -> Result<String, InvitationError> {
    std::str::from_utf8(addr)
        .map(str::to_owned)
        .map_err(|_| InvitationError::Address("not UTF-8".into()))
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
            relays: vec!["relay.example:4433".into()],
            trust,
            deposit_id: [2; 16],
            deposit_key: AeadKey::new(Suite::Aes256Gcm, [3; 32]),
            e2e_public: E2ePublicKey([4; 32]),
            forward_key: None,
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
            assert_eq!(p.relays, ["relay.example:4433"]);
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
        assert_eq!(p.relays, ["[::1]:"]);
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
            with(&|r| r[0] = 5).unwrap_err(),
            InvitationError::Version(5)
        );
        // Read as version 3, the address length byte is a count of 18 addresses.
        assert_eq!(
            with(&|r| r[0] = 3).unwrap_err(),
            InvitationError::RelayCount(18)
        );
        // A version 3 body with one address is refused: one address is written as version 2.
        let one = with(&|r| {
            r[0] = 3;
            let at = r.len() - 19;
            r.insert(at, 1);
        });
        assert_eq!(one.unwrap_err(), InvitationError::RelayCount(1));
    }

    /// Several relays: version 3, byte for byte the layout of PROTOCOL.md §7, and back.
    #[test]
    fn several_relays_are_version_3() {
        let mut inv = sample(RelayTrust::CaForHost);
        inv.relays = vec!["a.example:4433".into(), "[2001:db8::1]:443".into()];
        let s = inv.encode().unwrap();
        let mut raw = vec![3u8, Suite::Aes256Gcm as u8, 2];
        raw.extend_from_slice(&[2; 16]);
        raw.extend_from_slice(&[3; 32]);
        raw.extend_from_slice(&[4; 32]);
        raw.push(2);
        raw.push(14);
        raw.extend_from_slice(b"a.example:4433");
        raw.push(17);
        raw.extend_from_slice(b"[2001:db8::1]:443");
        let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
        raw.extend_from_slice(&sum.as_ref()[..4]);
        assert_eq!(s, format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw)));
        let p = Invitation::parse(&s).unwrap();
        assert_eq!(p.relays, inv.relays);
        assert_eq!(p.trust, RelayTrust::CaForHost);
        // With a key pin too.
        inv.trust = RelayTrust::KeyPin([7; 32]);
        let p = Invitation::parse(&inv.encode().unwrap()).unwrap();
        assert_eq!((p.relays, p.trust), (inv.relays.clone(), inv.trust));
        // One relay again: version 2.
        inv.relays.truncate(1);
        let raw = URL_SAFE_NO_PAD
            .decode(&inv.encode().unwrap()[PREFIX.len()..])
            .unwrap();
        assert_eq!(raw[0], 2);
    }

    /// A forwarding key: version 4, byte for byte the layout of PROTOCOL.md §7, with one
    /// relay or several; the same invitation without the key is still version 2 or 3.
    #[test]
    fn a_forwarding_key_is_version_4() {
        let mut inv = sample(RelayTrust::KeyPin([7; 32]));
        inv.forward_key = Some([8; 32]);
        let s = inv.encode().unwrap();
        let mut raw = vec![4u8, Suite::Aes256Gcm as u8, 1];
        raw.extend_from_slice(&[7; 32]);
        raw.extend_from_slice(&[2; 16]);
        raw.extend_from_slice(&[3; 32]);
        raw.extend_from_slice(&[4; 32]);
        raw.extend_from_slice(&[8; 32]);
        raw.push(1);
        raw.push(18);
        raw.extend_from_slice(b"relay.example:4433");
        let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
        raw.extend_from_slice(&sum.as_ref()[..4]);
        assert_eq!(s, format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw)));
        let p = Invitation::parse(&s).unwrap();
        assert_eq!(p.forward_key, Some([8; 32]));
        assert_eq!(p.relays, inv.relays);
        assert_eq!(p.e2e_public, E2ePublicKey([4; 32]));
        assert_eq!(p.encode().unwrap(), s);
        inv.relays.push("b.example:4433".into());
        inv.trust = RelayTrust::CaForHost;
        let p = Invitation::parse(&inv.encode().unwrap()).unwrap();
        assert_eq!((p.relays.len(), p.forward_key), (2, Some([8; 32])));
        // Without the key the same mailbox is written as before.
        inv.forward_key = None;
        let raw = URL_SAFE_NO_PAD
            .decode(&inv.encode().unwrap()[PREFIX.len()..])
            .unwrap();
        assert_eq!(raw[0], 3);
        inv.forward_key = Some([8; 32]);
        inv.relays.truncate(1);
        inv.trust = RelayTrust::CertificatePin([1; 32]);
        assert_eq!(
            inv.encode().unwrap_err(),
            InvitationError::CertificatePinForwardKey
        );
        // Cut inside the key: truncated, not a panic.
        let cut = {
            let mut raw = raw.clone();
            raw[0] = 4;
            raw.truncate(3 + 16 + 32 + 32 + 10);
            let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
            raw.extend_from_slice(&sum.as_ref()[..4]);
            format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw))
        };
        assert!(matches!(
            Invitation::parse(&cut),
            Err(InvitationError::Truncated { .. })
        ));
    }

    #[test]
    fn relay_lists_are_checked() {
        let mut inv = sample(RelayTrust::CaForHost);
        let err = |inv: &Invitation| inv.encode().unwrap_err();
        inv.relays = vec![];
        assert_eq!(err(&inv), InvitationError::RelayCount(0));
        inv.relays = (0..9).map(|i| format!("r{i}.example:1")).collect();
        assert_eq!(err(&inv), InvitationError::RelayCount(9));
        inv.relays.truncate(8);
        assert_eq!(
            Invitation::parse(&inv.encode().unwrap())
                .unwrap()
                .relays
                .len(),
            8
        );
        inv.relays = vec!["a:1".into(), "a:1".into()];
        assert!(
            err(&inv).to_string().contains("named twice"),
            "{}",
            err(&inv)
        );
        for bad in [
            "a",
            "a:",
            "a:0",
            "a:65536",
            "a:+1",
            ":1",
            "::1:4433",
            "[::1:4433",
            "a b:1",
        ] {
            inv.relays = vec!["ok.example:1".into(), bad.into()];
            assert!(
                matches!(err(&inv), InvitationError::Address(_)),
                "{bad}: {:?}",
                inv.encode()
            );
        }
        inv.relays = vec!["ok.example:1".into(), "[::1]:4433".into()];
        inv.encode().unwrap();
        inv.trust = RelayTrust::CertificatePin([1; 32]);
        assert_eq!(err(&inv), InvitationError::CertificatePinOneRelay);
    }

    impl PartialEq for Invitation {
        fn eq(&self, o: &Self) -> bool {
            self.relays == o.relays && self.trust == o.trust && self.deposit_id == o.deposit_id
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
