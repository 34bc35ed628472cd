//! The recipient's mailbox file: its credentials as JSON, written readable by the owner only.

use crate::Mailbox;
use sealpost_core::e2e::E2eSecretKey;
use sealpost_core::invitation::{RelayTrust, check_relays};
use sealpost_core::keys::RecipientSecret;
use sealpost_core::padding::SizeClasses;
use sealpost_core::{AeadKey, Suite};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// Why a mailbox file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MailboxFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The JSON is not a mailbox file.
    #[error("{path}: not a sealpost mailbox file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Every format: `sealpost-mailbox-v1` has `relay` and `pin` (of the whole certificate),
/// `-v2` has `relay` and `trust` ([`trust_text`]), `-v3` has `relays` (a list of 1 to
/// [`MAX_RELAYS`](sealpost_core::invitation::MAX_RELAYS) addresses) and `trust`.
#[derive(Serialize, Deserialize, Zeroize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relays: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trust: Option<String>,
    suite: String,
    recipient_id: String,
    deposit_id: String,
    deposit_key: String,
    recipient_secret: String,
    e2e_secret: String,
    sizes: Vec<u32>,
    /// The relays' forwarding public key (hex), when known: what a version 4 invitation
    /// carries. Optional in every format; a build that predates forwarding refuses a file
    /// that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forward_key: Option<String>,
}

impl Drop for FileV1 {
    fn drop(&mut self) {
        self.zeroize();
    }
}

const FORMAT_V1: &str = "sealpost-mailbox-v1";
const FORMAT_V2: &str = "sealpost-mailbox-v2";
/// Several relays. A mailbox with one relay is still written as v2, which older builds read.
const FORMAT: &str = "sealpost-mailbox-v3";

/// How a v2 file writes the relay trust: `key-pin:HEX` (SHA-256 of the certificate's
/// SubjectPublicKeyInfo), `certificate-pin:HEX` (of the whole certificate, from a v1 file),
/// or `ca` (a CA-issued certificate for the relay's host name).
fn trust_text(t: RelayTrust) -> String {
    match t {
        RelayTrust::KeyPin(p) => format!("key-pin:{}", hex::encode(p)),
        RelayTrust::CertificatePin(p) => format!("certificate-pin:{}", hex::encode(p)),
        RelayTrust::CaForHost => "ca".into(),
    }
}

fn parse_trust(s: &str) -> Result<RelayTrust, String> {
    if s == "ca" {
        return Ok(RelayTrust::CaForHost);
    }
    if let Some(h) = s.strip_prefix("key-pin:") {
        return Ok(RelayTrust::KeyPin(*hex_field::<32>("trust", h)?));
    }
    if let Some(h) = s.strip_prefix("certificate-pin:") {
        return Ok(RelayTrust::CertificatePin(*hex_field::<32>("trust", h)?));
    }
    Err(format!(
        "field trust is {s:?}; expected \"key-pin:HEX\", \"certificate-pin:HEX\" or \"ca\""
    ))
}

fn hex_field<const N: usize>(name: &str, s: &str) -> Result<Zeroizing<[u8; N]>, String> {
    let mut out = Zeroizing::new([0u8; N]);
    hex::decode_to_slice(s, &mut out[..])
        .map_err(|_| format!("field {name} must be {} hex digits", 2 * N))?;
    Ok(out)
}

/// The text of a mailbox file for `mailbox`: pretty-printed JSON that holds its secrets.
pub fn to_json(mailbox: &Mailbox) -> Result<Zeroizing<String>, serde_json::Error> {
    let (format, relay, relays) = match &mailbox.relays[..] {
        [one] => (FORMAT_V2, Some(one.clone()), None),
        several => (FORMAT, None, Some(several.to_vec())),
    };
    let f = FileV1 {
        format: format.into(),
        relay,
        relays,
        pin: None,
        trust: Some(trust_text(mailbox.trust)),
        suite: mailbox.suite.name().into(),
        recipient_id: hex::encode(mailbox.recipient_id),
        deposit_id: hex::encode(mailbox.deposit_id),
        deposit_key: hex::encode(mailbox.deposit_key.expose()),
        recipient_secret: hex::encode(mailbox.recipient_secret.0),
        e2e_secret: hex::encode(*mailbox.e2e_secret.to_bytes()),
        sizes: mailbox.sizes.as_slice().to_vec(),
        forward_key: mailbox.forward_key.map(hex::encode),
    };
    serde_json::to_string_pretty(&f).map(Zeroizing::new)
}

/// Writes `mailbox` to `path` (mode 0600), refusing to overwrite an existing file.
pub fn write(path: &Path, mailbox: &Mailbox) -> Result<(), MailboxFileError> {
    let io = |source| MailboxFileError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "file exists; choose another --out or remove it first",
        )));
    }
    let json = to_json(mailbox).map_err(|e| MailboxFileError::Format {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    crate::tls::write_private(path, json.as_bytes()).map_err(|e| match e {
        crate::tls::TlsError::Io { source, .. } => io(source),
        other => MailboxFileError::Format {
            path: path.to_owned(),
            why: other.to_string(),
        },
    })
}

/// Reads a mailbox file.
pub fn read(path: &Path) -> Result<Mailbox, MailboxFileError> {
    let data = Zeroizing::new(std::fs::read(path).map_err(|source| MailboxFileError::Io {
        path: path.to_owned(),
        source,
    })?);
    parse(path, &data)
}

/// Parses the contents of a mailbox file; `path` only names the file in errors.
pub fn parse(path: &Path, data: &[u8]) -> Result<Mailbox, MailboxFileError> {
    let fmt = |why: String| MailboxFileError::Format {
        path: path.to_owned(),
        why,
    };
    let f: FileV1 = serde_json::from_slice(data).map_err(|e| fmt(e.to_string()))?;
    let (relays, trust) = match (f.format.as_str(), &f.relay, &f.relays, &f.pin, &f.trust) {
        (FORMAT_V1, Some(relay), None, Some(pin), None) => (
            vec![relay.clone()],
            RelayTrust::CertificatePin(*hex_field::<32>("pin", pin).map_err(fmt)?),
        ),
        (FORMAT_V2, Some(relay), None, None, Some(t)) => {
            (vec![relay.clone()], parse_trust(t).map_err(fmt)?)
        }
        (FORMAT, None, Some(relays), None, Some(t)) => {
            (relays.clone(), parse_trust(t).map_err(fmt)?)
        }
        (FORMAT_V1 | FORMAT_V2 | FORMAT, ..) => {
            return Err(fmt(format!(
                "a {FORMAT_V1} file has `relay` and `pin`, a {FORMAT_V2} file `relay` and \
                 `trust`, a {FORMAT} file `relays` and `trust`"
            )));
        }
        (other, ..) => {
            return Err(fmt(format!(
                "format is {other:?}, expected {FORMAT:?}, {FORMAT_V2:?} or {FORMAT_V1:?}"
            )));
        }
    };
    check_relays(&relays, trust).map_err(|e| fmt(format!("relays: {e}")))?;
    let suite: Suite = f.suite.parse().map_err(fmt)?;
    let recipient_id = hex_field::<16>("recipient_id", &f.recipient_id).map_err(fmt)?;
    let deposit_id = hex_field::<16>("deposit_id", &f.deposit_id).map_err(fmt)?;
    let deposit_key = hex_field::<32>("deposit_key", &f.deposit_key).map_err(fmt)?;
    let secret = hex_field::<32>("recipient_secret", &f.recipient_secret).map_err(fmt)?;
    let e2e = hex_field::<32>("e2e_secret", &f.e2e_secret).map_err(fmt)?;
    let sizes = SizeClasses::new(f.sizes.clone()).map_err(|e| fmt(format!("sizes: {e}")))?;
    let forward_key = match &f.forward_key {
        Some(k) => Some(*hex_field::<32>("forward_key", k).map_err(fmt)?),
        None => None,
    };
    Ok(Mailbox {
        relays,
        trust,
        suite,
        recipient_id: *recipient_id,
        deposit_id: *deposit_id,
        deposit_key: AeadKey::new(suite, *deposit_key),
        recipient_secret: RecipientSecret(*secret),
        e2e_secret: E2eSecretKey::from_bytes(&e2e).map_err(|e| fmt(e.to_string()))?,
        sizes,
        forward_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mailbox file with the given format, relay and trust fields and fixed secrets.
    fn sample(head: &str) -> String {
        format!(
            r#"{{{head},"suite":"aes256gcm","recipient_id":"{}","deposit_id":"{}",
            "deposit_key":"{}","recipient_secret":"{}","e2e_secret":"{}","sizes":[256,1024]}}"#,
            "03".repeat(16),
            "04".repeat(16),
            "05".repeat(32),
            "06".repeat(32),
            "42".repeat(32)
        )
    }

    /// A file of the previous format keeps its whole-certificate pin; written again, it
    /// becomes a v2 file with the same trust.
    #[test]
    fn version_1_files_are_read_and_rewritten_as_version_2() {
        let v1 = sample(&format!(
            r#""format":"sealpost-mailbox-v1","relay":"relay.example:4433","pin":"{}""#,
            "01".repeat(32)
        ));
        let m = parse(Path::new("v1.json"), v1.as_bytes()).unwrap();
        assert_eq!(m.trust, RelayTrust::CertificatePin([1; 32]));
        let json = to_json(&m).unwrap();
        assert!(
            json.contains("\"format\": \"sealpost-mailbox-v2\""),
            "{}",
            *json
        );
        assert!(json.contains(&format!("certificate-pin:{}", "01".repeat(32))));
        let again = parse(Path::new("v2.json"), json.as_bytes()).unwrap();
        assert_eq!(again.trust, m.trust);
        // Both fields, or a v2 file with a pin, are refused.
        let both = v1.replace("\"pin\"", "\"trust\":\"ca\",\"pin\"");
        let err = parse(Path::new("x.json"), both.as_bytes()).err().unwrap();
        assert!(err.to_string().contains("`relay` and `pin`"), "{err}");
    }

    /// Several relays: a v3 file with `relays`, which reads back the same; one relay is
    /// written as v2; a bad list is refused naming the problem.
    #[test]
    fn several_relays_make_a_version_3_file() {
        let v2 = sample(r#""format":"sealpost-mailbox-v2","relay":"a.example:4433","trust":"ca""#);
        let mut m = parse(Path::new("v2.json"), v2.as_bytes()).unwrap();
        assert_eq!(m.relays, ["a.example:4433"]);
        let json = to_json(&m).unwrap();
        assert!(
            json.contains("\"format\": \"sealpost-mailbox-v2\""),
            "{}",
            *json
        );
        m.relays.push("[::1]:4433".into());
        let json = to_json(&m).unwrap();
        assert!(
            json.contains("\"format\": \"sealpost-mailbox-v3\""),
            "{}",
            *json
        );
        assert!(!json.contains("\"relay\":"), "{}", *json);
        let again = parse(Path::new("v3.json"), json.as_bytes()).unwrap();
        assert_eq!(again.relays, m.relays);
        assert_eq!(again.invitation().relays, m.relays);
        let bad = json.replace("[::1]:4433", "a.example:4433");
        let err = parse(Path::new("v3.json"), bad.as_bytes()).err().unwrap();
        assert!(err.to_string().contains("named twice"), "{err}");
        let mixed = json.replace("\"relays\"", "\"relay\": \"x:1\", \"relays\"");
        let err = parse(Path::new("v3.json"), mixed.as_bytes()).err().unwrap();
        assert!(err.to_string().contains("`relays` and `trust`"), "{err}");
    }

    /// A forwarding key is kept in the file and goes into the invitation (version 4); a
    /// file without it reads as before.
    #[test]
    fn the_forwarding_key_survives_the_file() {
        let v2 = sample(r#""format":"sealpost-mailbox-v2","relay":"a.example:4433","trust":"ca""#);
        let mut m = parse(Path::new("v2.json"), v2.as_bytes()).unwrap();
        assert_eq!(m.forward_key, None);
        assert!(!to_json(&m).unwrap().contains("forward_key"));
        m.forward_key = Some([0x33; 32]);
        let json = to_json(&m).unwrap();
        let again = parse(Path::new("v2.json"), json.as_bytes()).unwrap();
        assert_eq!(again.forward_key, Some([0x33; 32]));
        assert_eq!(again.invitation().forward_key, Some([0x33; 32]));
    }
}
