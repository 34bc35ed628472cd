//! Invitations: everything a sender needs to deposit into one mailbox, as one string.
//!
//! `sealpost1:` followed by unpadded base64url of
//! `version (1) | suite (1) | pin (32) | deposit_id (16) | deposit_key (32) | e2e_public (32) |
//! addr_len (1) | relay address (UTF-8) | checksum (4)`, where the checksum is the first four
//! bytes of SHA-256 over everything before it, to catch copy-and-paste damage.

use crate::e2e::{E2E_KEY_LEN, E2ePublicKey};
use crate::envelope::DepositId;
use crate::suite::{AeadKey, KEY_LEN, Suite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

/// The string prefix of every invitation.
pub const PREFIX: &str = "sealpost1:";
const VERSION: u8 = 1;
const FIXED: usize = 1 + 1 + 32 + 16 + KEY_LEN + E2E_KEY_LEN + 1;
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
    #[error("invitation version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// An unknown suite number.
    #[error("invitation names suite {0}, which this build does not know")]
    Suite(u8),
    /// The relay address is empty, not UTF-8, or its length does not match the data.
    #[error("invitation relay address is invalid: {0}")]
    Address(String),
}

/// A parsed invitation.
#[derive(Clone, Debug)]
pub struct Invitation {
    /// The relay's address, `host:port`.
    pub relay: String,
    /// SHA-256 of the relay's end-entity certificate.
    pub pin: [u8; 32],
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
        let mut raw = Zeroizing::new(Vec::with_capacity(FIXED + addr.len() + CHECKSUM));
        raw.push(VERSION);
        raw.push(self.suite() as u8);
        raw.extend_from_slice(&self.pin);
        raw.extend_from_slice(&self.deposit_id);
        raw.extend_from_slice(self.deposit_key.expose());
        raw.extend_from_slice(&self.e2e_public.0);
        raw.push(addr.len() as u8);
        raw.extend_from_slice(addr);
        let sum = ring::digest::digest(&ring::digest::SHA256, &raw);
        raw.extend_from_slice(&sum.as_ref()[..CHECKSUM]);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw[..])))
    }

    /// Parses an invitation string; surrounding white space is ignored.
    pub fn parse(s: &str) -> Result<Self, InvitationError> {
        let s = s.trim();
        let rest = s.strip_prefix(PREFIX).ok_or(InvitationError::Prefix)?;
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(rest)
                .map_err(|e| InvitationError::Base64(e.to_string()))?,
        );
        if raw.len() < FIXED + 1 + CHECKSUM {
            return Err(InvitationError::Truncated {
                got: raw.len(),
                need: FIXED + 1 + CHECKSUM,
            });
        }
        let (body, sum) = raw.split_at(raw.len() - CHECKSUM);
        let want = ring::digest::digest(&ring::digest::SHA256, body);
        if &want.as_ref()[..CHECKSUM] != sum {
            return Err(InvitationError::Checksum);
        }
        if body[0] != VERSION {
            return Err(InvitationError::Version(body[0]));
        }
        let suite = Suite::from_u8(body[1]).ok_or(InvitationError::Suite(body[1]))?;
        let mut pin = [0u8; 32];
        pin.copy_from_slice(&body[2..34]);
        let mut deposit_id = [0u8; 16];
        deposit_id.copy_from_slice(&body[34..50]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&body[50..82]);
        let mut e2e = [0u8; E2E_KEY_LEN];
        e2e.copy_from_slice(&body[82..114]);
        let alen = body[114] as usize;
        let addr = &body[FIXED..];
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
            pin,
            deposit_id,
            deposit_key: AeadKey::new(suite, *key),
            e2e_public: E2ePublicKey(e2e),
        })
    }
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

    fn sample() -> Invitation {
        Invitation {
            relay: "relay.example:4433".into(),
            pin: [1; 32],
            deposit_id: [2; 16],
            deposit_key: AeadKey::new(Suite::Aes256Gcm, [3; 32]),
            e2e_public: E2ePublicKey([4; 32]),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample().encode().unwrap();
        assert!(s.starts_with(PREFIX));
        let p = Invitation::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(p.relay, "relay.example:4433");
        assert_eq!(p.pin, [1; 32]);
        assert_eq!(p.deposit_id, [2; 16]);
        assert_eq!(p.deposit_key.expose(), &[3; 32]);
        assert_eq!(p.suite(), Suite::Aes256Gcm);
        assert_eq!(p.e2e_public, E2ePublicKey([4; 32]));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let s = sample().encode().unwrap();
        assert_eq!(
            Invitation::parse("hello"),
            Err(InvitationError::Prefix).map(|_: ()| unreachable!())
        );
        assert!(matches!(
            Invitation::parse("sealpost1:!!!"),
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
    }

    impl PartialEq for Invitation {
        fn eq(&self, o: &Self) -> bool {
            self.relay == o.relay && self.pin == o.pin && self.deposit_id == o.deposit_id
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Invitation::parse(&format!("{PREFIX}{s}"));
        }
    }
}
