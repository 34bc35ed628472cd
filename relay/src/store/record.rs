//! The stored form of a mailbox record, shared by the disk and cluster stores.
//!
//! A record is `version (1) | flags (1) | deposit_id (16) | suite (1) | created_at ms (8) |
//! secrets`, where secrets is `deposit_key (32) ‖ recipient_secret (32)` in the clear (flags 0)
//! or, with a master key (flags 1), `nonce (12) ‖ ChaCha20-Poly1305 ciphertext (64) ‖ tag (16)`
//! under `HKDF-SHA256(master, "sealpost/1 store secrets")` with AAD `"sealpost/1 record" ‖
//! recipient_id`, which binds the sealed secrets to their mailbox.

use super::MailboxRecord;
use sealpost_core::batch::{OpenJob, SealJob};
use sealpost_core::engine::{Backend, Engine};
use sealpost_core::keys::RecipientSecret;
use sealpost_core::{AeadKey, DepositId, RecipientId, Suite};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The record format's version.
const RECORD_VERSION: u8 = 1;
/// The flag saying the secrets are sealed under the master key.
pub(crate) const FLAG_SEALED: u8 = 1;
/// The deposit key and the recipient secret.
const SECRETS_LEN: usize = 64;
/// The fixed-size head before the secrets.
const HEAD_LEN: usize = 27;

/// Why a stored record cannot be read; each store names its own place in the message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The bytes are not a record.
    #[error("{0}")]
    Corrupt(String),
    /// The secrets are sealed and no master key was given.
    #[error("the mailbox secrets are sealed under a master key and none was given")]
    MasterKeyRequired,
    /// The master key does not open the secrets.
    #[error("the master key does not decrypt the mailbox secrets")]
    WrongMasterKey,
    /// The AEAD engine failed.
    #[error("{0}")]
    Backend(String),
}

/// The key that seals mailbox secrets, derived from the master key.
pub(crate) fn secrets_key(master: &[u8; 32]) -> AeadKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"sealpost/1 store").extract(master);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[b"sealpost/1 store secrets"], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut k[..]))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    AeadKey::new(Suite::ChaCha20Poly1305, *k)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes a record with its secrets sealed under `key`, or in the clear without one.
pub(crate) fn encode(r: &MailboxRecord, key: Option<&AeadKey>) -> Result<Vec<u8>, String> {
    let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
    secrets[..32].copy_from_slice(r.deposit_key.expose());
    secrets[32..].copy_from_slice(&r.recipient_secret.0);
    let mut out = Vec::with_capacity(HEAD_LEN + 12 + SECRETS_LEN + 16);
    out.push(RECORD_VERSION);
    out.push(if key.is_some() { FLAG_SEALED } else { 0 });
    out.extend_from_slice(&r.deposit_id);
    out.push(r.suite as u8);
    out.extend_from_slice(&millis(r.created_at).to_be_bytes());
    match key {
        None => out.extend_from_slice(&secrets[..]),
        Some(k) => {
            let aad = [&b"sealpost/1 record"[..], &r.recipient_id].concat();
            out.extend_from_slice(&seal(k, &aad, &secrets[..])?);
        }
    }
    Ok(out)
}

/// Seals `plaintext` under `key` with a random nonce: `nonce (12) ‖ ciphertext ‖ tag (16)`.
pub(crate) fn seal(key: &AeadKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    let nonce: [u8; 12] = sealpost_core::random::array().map_err(|e| e.to_string())?;
    let mut ct = vec![0u8; plaintext.len() + 16];
    let mut jobs = [SealJob {
        key,
        nonce,
        aad,
        plaintext,
        out: &mut ct,
    }];
    Engine::new(Backend::Portable)
        .map_err(|e| e.to_string())?
        .seal(&mut jobs)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal`] made into `out` (its plaintext's length); `WrongMasterKey` if the
/// key or the AAD do not match.
pub(crate) fn open(
    key: &AeadKey,
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    if sealed.len() != 12 + out.len() + 16 {
        return Err(RecordError::Corrupt(format!(
            "sealed value of {} bytes, expected {}",
            sealed.len(),
            12 + out.len() + 16
        )));
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&sealed[..12]);
    let mut ok = [false];
    let mut jobs = [OpenJob {
        key,
        nonce,
        aad,
        ciphertext: &sealed[12..],
        out,
    }];
    Engine::new(Backend::Portable)
        .map_err(|e| RecordError::Backend(e.to_string()))?
        .open(&mut jobs, &mut ok)
        .map_err(|e| RecordError::Backend(e.to_string()))?;
    if ok[0] {
        Ok(())
    } else {
        Err(RecordError::WrongMasterKey)
    }
}

/// Re-seals what [`seal`] made under `old` (with `aad`; its plaintext `len` bytes) under
/// `new`, for a master-key rotation; `None` if it opens under `new` already (a rotation run
/// again), `WrongMasterKey` if it opens under neither. The plaintext is wiped.
pub(crate) fn reseal(
    old: &AeadKey,
    new: &AeadKey,
    aad: &[u8],
    sealed: &[u8],
    len: usize,
) -> Result<Option<Vec<u8>>, RecordError> {
    let mut plain = Zeroizing::new(vec![0u8; len]);
    if open(new, aad, sealed, &mut plain).is_ok() {
        return Ok(None);
    }
    open(old, aad, sealed, &mut plain)?;
    seal(new, aad, &plain)
        .map(Some)
        .map_err(RecordError::Backend)
}

/// Decodes the record `v` of the mailbox `rid`, opening sealed secrets with `key`.
pub(crate) fn decode(
    rid: &[u8],
    v: &[u8],
    key: Option<&AeadKey>,
) -> Result<MailboxRecord, RecordError> {
    let rid: RecipientId = rid.try_into().map_err(|_| {
        RecordError::Corrupt(format!(
            "mailbox record key of {} bytes, expected 16",
            rid.len()
        ))
    })?;
    let name = hex::encode(&rid[..4]);
    let corrupt = |what: String| RecordError::Corrupt(format!("mailbox record {name}…: {what}"));
    if v.len() < HEAD_LEN {
        return Err(corrupt(format!("truncated ({} bytes)", v.len())));
    }
    if v[0] != RECORD_VERSION {
        return Err(corrupt(format!("unknown version {}", v[0])));
    }
    let sealed = v[1] & FLAG_SEALED != 0;
    let mut deposit_id: DepositId = [0; 16];
    deposit_id.copy_from_slice(&v[2..18]);
    let suite = Suite::from_u8(v[18]).ok_or_else(|| corrupt(format!("unknown suite {}", v[18])))?;
    let mut created = [0u8; 8];
    created.copy_from_slice(&v[19..HEAD_LEN]);
    let rest = &v[HEAD_LEN..];
    let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
    if sealed {
        let Some(k) = key else {
            return Err(RecordError::MasterKeyRequired);
        };
        if rest.len() != 12 + SECRETS_LEN + 16 {
            return Err(corrupt(format!("sealed secrets of {} bytes", rest.len())));
        }
        let aad = [&b"sealpost/1 record"[..], &rid].concat();
        open(k, &aad, rest, &mut secrets[..])?;
    } else {
        if rest.len() != SECRETS_LEN {
            return Err(corrupt(format!("secrets of {} bytes", rest.len())));
        }
        secrets.copy_from_slice(rest);
    }
    let mut dk = Zeroizing::new([0u8; 32]);
    dk.copy_from_slice(&secrets[..32]);
    let mut rs = [0u8; 32];
    rs.copy_from_slice(&secrets[32..]);
    let mut rec = MailboxRecord::new(rid, deposit_id, suite, *dk, RecipientSecret(rs));
    rec.created_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(created));
    Ok(rec)
}
