//! Payload layouts of the control frames (everything but DEPOSIT, whose payload is an
//! envelope). All integers are big-endian. Each decoder checks the exact length.

use crate::envelope::DepositId;
use crate::frame::FrameType;
use crate::keys::{PROOF_LEN, RecipientId};
use crate::padding::SizeClasses;
use crate::status::{DepositStatus, ErrorCode};
use crate::suite::{KEY_LEN, NONCE_LEN, Suite};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why a control payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// The payload is shorter or longer than its type requires.
    #[error("{frame:?} payload is {got} bytes, expected {expected}")]
    Length {
        /// The frame type.
        frame: FrameType,
        /// What the layout needs (a minimum for variable-length payloads).
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A field holds a value its type does not allow.
    #[error("{frame:?} field {field}: {problem}")]
    Field {
        /// The frame type.
        frame: FrameType,
        /// The field's name in docs/PROTOCOL.md.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A suite number this implementation does not know: answered UNSUPPORTED (as an
    /// envelope's unknown suite is), not MALFORMED_FRAME, since a newer peer may know it.
    #[error(
        "{frame:?} field suite: {suite} is not a suite this relay knows (1 = ChaCha20-Poly1305, 2 = AES-256-GCM)"
    )]
    UnknownSuite {
        /// The frame type.
        frame: FrameType,
        /// The number given.
        suite: u8,
    },
}

impl MsgError {
    /// The ERROR code that answers this fault.
    pub fn code(&self) -> crate::status::ErrorCode {
        match self {
            Self::Length { .. } | Self::Field { .. } => crate::status::ErrorCode::MalformedFrame,
            Self::UnknownSuite { .. } => crate::status::ErrorCode::Unsupported,
        }
    }
}

fn exact(frame: FrameType, p: &[u8], n: usize) -> Result<(), MsgError> {
    if p.len() != n {
        return Err(MsgError::Length {
            frame,
            expected: n,
            got: p.len(),
        });
    }
    Ok(())
}

fn at_least(frame: FrameType, p: &[u8], n: usize) -> Result<(), MsgError> {
    if p.len() < n {
        return Err(MsgError::Length {
            frame,
            expected: n,
            got: p.len(),
        });
    }
    Ok(())
}

fn take<const N: usize>(p: &mut &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&p[..N]);
    p.advance(N);
    a
}

/// The longest prefix of `s` that has at most `max` bytes and ends on a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// CREATE: ask the relay for a new mailbox. Carries secrets, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Create {
    /// The suite for deposit tags and deliveries.
    #[zeroize(skip)]
    pub suite: Suite,
    /// The key senders will use for deposit tags.
    pub deposit_key: [u8; KEY_LEN],
    /// The secret the relay derives the delivery and auth keys from.
    pub recipient_secret: [u8; KEY_LEN],
}

impl std::fmt::Debug for Create {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Create({}, <secrets redacted>)", self.suite)
    }
}

impl Create {
    /// Payload length.
    pub const LEN: usize = 1 + 2 * KEY_LEN;

    /// Appends the payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.suite as u8);
        out.put_slice(&self.deposit_key);
        out.put_slice(&self.recipient_secret);
    }

    /// Decodes a payload.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        exact(FrameType::Create, p, Self::LEN)?;
        let s = p.get_u8();
        let suite = Suite::from_u8(s).ok_or(MsgError::UnknownSuite {
            frame: FrameType::Create,
            suite: s,
        })?;
        Ok(Self {
            suite,
            deposit_key: take(&mut p),
            recipient_secret: take(&mut p),
        })
    }
}

/// The limits a relay applies, sent in CREATED and INFO_REPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame length prefix the relay accepts.
    pub max_frame: u32,
    /// Envelopes a mailbox may hold.
    pub max_envelopes: u32,
    /// Envelope bytes a mailbox may hold.
    pub max_bytes: u64,
    /// Seconds an envelope is kept before it expires unacknowledged.
    pub retention_secs: u64,
    /// Largest subscribe window the relay honours.
    pub max_window: u32,
    /// Allowed body sizes.
    pub sizes: SizeClasses,
}

impl Limits {
    const FIXED: usize = 4 + 4 + 8 + 8 + 4 + 1;

    fn encoded_len(&self) -> usize {
        Self::FIXED + 4 * self.sizes.as_slice().len()
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.max_frame);
        out.put_u32(self.max_envelopes);
        out.put_u64(self.max_bytes);
        out.put_u64(self.retention_secs);
        out.put_u32(self.max_window);
        let sizes = self.sizes.as_slice();
        out.put_u8(u8::try_from(sizes.len()).unwrap_or(u8::MAX));
        for s in sizes.iter().take(255) {
            out.put_u32(*s);
        }
    }

    fn decode(frame: FrameType, p: &mut &[u8]) -> Result<Self, MsgError> {
        at_least(frame, p, Self::FIXED)?;
        let max_frame = p.get_u32();
        let max_envelopes = p.get_u32();
        let max_bytes = p.get_u64();
        let retention_secs = p.get_u64();
        let max_window = p.get_u32();
        let n = p.get_u8() as usize;
        if p.len() != 4 * n {
            return Err(MsgError::Field {
                frame,
                field: "sizes",
                problem: format!("count {n} needs {} bytes, {} present", 4 * n, p.len()),
            });
        }
        let sizes = (0..n).map(|_| p.get_u32()).collect();
        let sizes = SizeClasses::new(sizes).map_err(|e| MsgError::Field {
            frame,
            field: "sizes",
            problem: e.to_string(),
        })?;
        Ok(Self {
            max_frame,
            max_envelopes,
            max_bytes,
            retention_secs,
            max_window,
            sizes,
        })
    }
}

/// CREATED: the new mailbox's identifiers and the limits that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Identifies the mailbox to its recipient (SUBSCRIBE, DELETE).
    pub recipient_id: RecipientId,
    /// Identifies the mailbox to senders (envelopes).
    pub deposit_id: DepositId,
    /// The relay's limits.
    pub limits: Limits,
}

impl Created {
    /// Appends the payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(32 + self.limits.encoded_len());
        out.put_slice(&self.recipient_id);
        out.put_slice(&self.deposit_id);
        self.limits.encode(out);
    }

    /// Decodes a payload.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        at_least(FrameType::Created, p, 32)?;
        let recipient_id = take(&mut p);
        let deposit_id = take(&mut p);
        let limits = Limits::decode(FrameType::Created, &mut p)?;
        Ok(Self {
            recipient_id,
            deposit_id,
            limits,
        })
    }
}

/// A DEPOSIT_RESULT: one status per envelope, and how long to wait before retrying the
/// envelopes answered `RATE_LIMITED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositResult {
    /// The statuses, in the order the envelopes were sent.
    pub statuses: Vec<DepositStatus>,
    /// Milliseconds after which the `RATE_LIMITED` envelopes may be sent again; present
    /// exactly when one of `statuses` is `RATE_LIMITED`.
    pub retry_after_ms: Option<u32>,
}

/// Encodes a DEPOSIT_RESULT payload: `count: u16 | status[count] | [retry_after_ms: u32]`,
/// the last field present exactly when a status is `RATE_LIMITED` (a missing hint is sent
/// as 0, "retry when you like"; a hint without such a status is dropped).
pub fn encode_deposit_result(
    statuses: &[DepositStatus],
    retry_after_ms: Option<u32>,
    out: &mut BytesMut,
) {
    debug_assert!(statuses.len() <= u16::MAX as usize);
    out.reserve(2 + statuses.len() + 4);
    out.put_u16(statuses.len() as u16);
    let mut limited = false;
    for s in statuses {
        limited |= *s == DepositStatus::RateLimited;
        out.put_u8(*s as u8);
    }
    if limited {
        out.put_u32(retry_after_ms.unwrap_or(0));
    }
}

/// Decodes a DEPOSIT_RESULT payload.
pub fn decode_deposit_result(mut p: &[u8]) -> Result<DepositResult, MsgError> {
    at_least(FrameType::DepositResult, p, 2)?;
    let n = p.get_u16() as usize;
    let statuses = p
        .get(..n)
        .ok_or(MsgError::Length {
            frame: FrameType::DepositResult,
            expected: 2 + n,
            got: 2 + p.len(),
        })?
        .iter()
        .map(|&b| {
            DepositStatus::from_u8(b).ok_or_else(|| MsgError::Field {
                frame: FrameType::DepositResult,
                field: "status",
                problem: format!("{b} is not a status code"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    p.advance(n);
    let limited = statuses.contains(&DepositStatus::RateLimited);
    let want = if limited { 4 } else { 0 };
    if p.len() != want {
        return Err(MsgError::Length {
            frame: FrameType::DepositResult,
            expected: 2 + n + want,
            got: 2 + n + p.len(),
        });
    }
    let retry_after_ms = limited.then(|| p.get_u32());
    Ok(DepositResult {
        statuses,
        retry_after_ms,
    })
}

/// SUBSCRIBE: receive a mailbox's envelopes on this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The mailbox.
    pub recipient_id: RecipientId,
    /// Proof of the auth key, bound to this connection.
    pub proof: [u8; PROOF_LEN],
    /// Most unacknowledged deliveries in flight.
    pub window: u32,
}

impl Subscribe {
    /// Payload length.
    pub const LEN: usize = 16 + PROOF_LEN + 4;

    /// Appends the payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.recipient_id);
        out.put_slice(&self.proof);
        out.put_u32(self.window);
    }

    /// Decodes a payload.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        exact(FrameType::Subscribe, p, Self::LEN)?;
        let recipient_id = take(&mut p);
        let proof = take(&mut p);
        let window = p.get_u32();
        if window == 0 {
            return Err(MsgError::Field {
                frame: FrameType::Subscribe,
                field: "window",
                problem: "must be at least 1".into(),
            });
        }
        Ok(Self {
            recipient_id,
            proof,
            window,
        })
    }
}

/// SUBSCRIBED: the relay accepted a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Envelopes waiting in the mailbox when the subscription started.
    pub pending: u64,
    /// The window the relay will honour (the requested one, capped by the relay's limit).
    pub window: u32,
}

impl Subscribed {
    /// Payload length.
    pub const LEN: usize = 12;

    /// Appends the payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.pending);
        out.put_u32(self.window);
    }

    /// Decodes a payload.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        exact(FrameType::Subscribed, p, Self::LEN)?;
        Ok(Self {
            pending: p.get_u64(),
            window: p.get_u32(),
        })
    }
}

/// Bytes of a DELIVER payload before the sealed envelope.
pub const DELIVER_PREFIX: usize = 8 + NONCE_LEN;

/// DELIVER: one envelope, re-sealed under the mailbox's delivery key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// The envelope's sequence number in its mailbox.
    pub seq: u64,
    /// The delivery nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The sealed envelope followed by its tag (shares memory with the frame).
    pub sealed: Bytes,
}

impl Deliver {
    /// Splits a payload without copying the sealed part.
    pub fn decode(mut p: Bytes) -> Result<Self, MsgError> {
        at_least(
            FrameType::Deliver,
            &p,
            DELIVER_PREFIX + crate::suite::TAG_LEN,
        )?;
        let seq = p.get_u64();
        let mut nonce = [0u8; NONCE_LEN];
        p.copy_to_slice(&mut nonce);
        Ok(Self {
            seq,
            nonce,
            sealed: p,
        })
    }
}

/// Encodes an ACK payload.
pub fn encode_ack(seq: u64, out: &mut BytesMut) {
    out.put_u64(seq);
}

/// Decodes an ACK payload: the highest sequence number the recipient has processed.
pub fn decode_ack(mut p: &[u8]) -> Result<u64, MsgError> {
    exact(FrameType::Ack, p, 8)?;
    Ok(p.get_u64())
}

/// DELETE: remove a mailbox and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The mailbox.
    pub recipient_id: RecipientId,
    /// Proof of the auth key, bound to this connection.
    pub proof: [u8; PROOF_LEN],
}

impl Delete {
    /// Payload length.
    pub const LEN: usize = 16 + PROOF_LEN;

    /// Appends the payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.recipient_id);
        out.put_slice(&self.proof);
    }

    /// Decodes a payload.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        exact(FrameType::Delete, p, Self::LEN)?;
        Ok(Self {
            recipient_id: take(&mut p),
            proof: take(&mut p),
        })
    }
}

/// INFO_REPLY: what the relay is and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoReply {
    /// The relay's software version, free text.
    pub version: String,
    /// Suites the relay accepts for new mailboxes.
    pub suites: Vec<Suite>,
    /// The relay's limits.
    pub limits: Limits,
}

impl InfoReply {
    /// Appends the payload: `version_len: u8 | version | n_suites: u8 | suites | limits`.
    /// A version longer than 255 bytes is cut at a character boundary, so that the payload
    /// stays decodable.
    pub fn encode(&self, out: &mut BytesMut) {
        let v = cut_at_char(&self.version, 255).as_bytes();
        out.put_u8(v.len() as u8);
        out.put_slice(v);
        out.put_u8(self.suites.len().min(255) as u8);
        for s in self.suites.iter().take(255) {
            out.put_u8(*s as u8);
        }
        self.limits.encode(out);
    }

    /// Decodes a payload. Unknown suite numbers are skipped, so a newer relay stays readable.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        let f = FrameType::InfoReply;
        at_least(f, p, 1)?;
        let vlen = p.get_u8() as usize;
        at_least(f, p, vlen + 1)?;
        let version = std::str::from_utf8(&p[..vlen])
            .map_err(|_| MsgError::Field {
                frame: f,
                field: "version",
                problem: "not UTF-8".into(),
            })?
            .to_owned();
        p.advance(vlen);
        let n = p.get_u8() as usize;
        at_least(f, p, n)?;
        let suites = p[..n].iter().filter_map(|&b| Suite::from_u8(b)).collect();
        p.advance(n);
        let limits = Limits::decode(f, &mut p)?;
        Ok(Self {
            version,
            suites,
            limits,
        })
    }
}

/// The one-byte INFO payload that asks for the extended INFO_REPLY, which ends with the
/// relay's forwarding key. An empty INFO gets the reply without it, as before forwarding.
pub const INFO_WANTS_FORWARD_KEY: u8 = 1;

impl InfoReply {
    /// Appends the extended payload: the INFO_REPLY fields, then the relay's 32-byte
    /// forwarding public key.
    pub fn encode_with_forward_key(&self, forward_key: &[u8; 32], out: &mut BytesMut) {
        self.encode(out);
        out.put_slice(forward_key);
    }

    /// Decodes an extended payload (the answer to an INFO carrying
    /// [`INFO_WANTS_FORWARD_KEY`]): the reply and the forwarding key at its end.
    pub fn decode_with_forward_key(p: &[u8]) -> Result<(Self, [u8; 32]), MsgError> {
        at_least(FrameType::InfoReply, p, 32)?;
        let (fields, key) = p.split_at(p.len() - 32);
        let reply = Self::decode(fields)?;
        let mut k = [0u8; 32];
        k.copy_from_slice(key);
        Ok((reply, k))
    }
}

/// Longest ERROR message, in bytes; longer ones are cut at a character boundary.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// ERROR: a refusal with a code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// The code, if this implementation knows it; unknown codes keep their number.
    pub code: u16,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorMsg {
    /// An error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as u16,
            message: message.into(),
        }
    }

    /// The code as an enum, if known.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }

    /// Appends the payload: `code: u16 | message (UTF-8, rest of the payload)`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.code);
        out.put_slice(cut_at_char(&self.message, MAX_ERROR_MESSAGE).as_bytes());
    }

    /// Decodes a payload; invalid UTF-8 in the message is replaced, not refused.
    pub fn decode(mut p: &[u8]) -> Result<Self, MsgError> {
        at_least(FrameType::Error, p, 2)?;
        let code = p.get_u16();
        Ok(Self {
            code,
            message: String::from_utf8_lossy(p).into_owned(),
        })
    }
}

impl std::fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.known_code() {
            Some(c) => write!(f, "{c}: {}", self.message),
            None => write!(f, "error {}: {}", self.code, self.message),
        }
    }
}

/// Encodes a whole frame whose payload is written by `f`.
pub fn frame_with(ty: FrameType, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(&[0; crate::frame::HEADER_LEN]);
    f(&mut out);
    let payload_len = out.len() - crate::frame::HEADER_LEN;
    out[..crate::frame::HEADER_LEN].copy_from_slice(&crate::frame::header(ty, payload_len));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_frame: 70000,
            max_envelopes: 10,
            max_bytes: 1 << 20,
            retention_secs: 3600,
            max_window: 256,
            sizes: SizeClasses::default(),
        }
    }

    #[test]
    fn round_trips() {
        let c = Create {
            suite: Suite::Aes256Gcm,
            deposit_key: [1; 32],
            recipient_secret: [2; 32],
        };
        let mut b = BytesMut::new();
        c.encode(&mut b);
        let d = Create::decode(&b).unwrap();
        assert_eq!(
            (d.suite, d.deposit_key, d.recipient_secret),
            (c.suite, c.deposit_key, c.recipient_secret)
        );

        let cr = Created {
            recipient_id: [3; 16],
            deposit_id: [4; 16],
            limits: limits(),
        };
        let mut b = BytesMut::new();
        cr.encode(&mut b);
        assert_eq!(Created::decode(&b).unwrap(), cr);

        let ir = InfoReply {
            version: "sealpost 0.1".into(),
            suites: vec![Suite::ChaCha20Poly1305, Suite::Aes256Gcm],
            limits: limits(),
        };
        let mut b = BytesMut::new();
        ir.encode(&mut b);
        assert_eq!(InfoReply::decode(&b).unwrap(), ir);
        let mut b = BytesMut::new();
        ir.encode_with_forward_key(&[6; 32], &mut b);
        assert_eq!(
            InfoReply::decode_with_forward_key(&b).unwrap(),
            (ir.clone(), [6; 32])
        );
        assert!(
            InfoReply::decode(&b).is_err(),
            "an old reader refuses the extension"
        );

        let st = [
            DepositStatus::Ok,
            DepositStatus::BadTag,
            DepositStatus::Duplicate,
        ];
        let mut b = BytesMut::new();
        encode_deposit_result(&st, Some(5), &mut b);
        assert_eq!(b.len(), 2 + 3, "no hint without RATE_LIMITED");
        let r = decode_deposit_result(&b).unwrap();
        assert_eq!((r.statuses.as_slice(), r.retry_after_ms), (&st[..], None));

        let st = [DepositStatus::Ok, DepositStatus::RateLimited];
        let mut b = BytesMut::new();
        encode_deposit_result(&st, Some(250), &mut b);
        assert_eq!(b.len(), 2 + 2 + 4);
        let r = decode_deposit_result(&b).unwrap();
        assert_eq!(
            (r.statuses.as_slice(), r.retry_after_ms),
            (&st[..], Some(250))
        );
        // The hint is required with RATE_LIMITED and refused without it.
        assert!(decode_deposit_result(&b[..4]).is_err());
        assert!(decode_deposit_result(&[0, 1, 0, 0, 0, 0, 1]).is_err());

        let e = ErrorMsg::new(ErrorCode::BadProof, "nope");
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(ErrorMsg::decode(&b).unwrap(), e);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut p = vec![9u8];
        p.extend_from_slice(&[0; 64]);
        let err = Create::decode(&p).unwrap_err();
        assert_eq!(
            err,
            MsgError::UnknownSuite {
                frame: FrameType::Create,
                suite: 9
            }
        );
        assert!(err.to_string().contains("suite: 9"), "{err}");
        assert_eq!(err.code(), crate::status::ErrorCode::Unsupported);
        let mut b = BytesMut::new();
        Subscribe {
            recipient_id: [0; 16],
            proof: [0; 32],
            window: 0,
        }
        .encode(&mut b);
        assert!(matches!(
            Subscribe::decode(&b),
            Err(MsgError::Field {
                field: "window",
                ..
            })
        ));
        assert!(matches!(
            decode_ack(&[0; 7]),
            Err(MsgError::Length {
                expected: 8,
                got: 7,
                ..
            })
        ));
        assert!(matches!(
            decode_deposit_result(&[0, 3, 0]),
            Err(MsgError::Length { .. })
        ));
    }

    /// Found by the `control` fuzz target: a version of more than 255 bytes was cut in the
    /// middle of a character, and the INFO_REPLY it produced did not decode.
    #[test]
    fn long_info_reply_version_is_cut_at_a_character() {
        let ir = InfoReply {
            version: format!("{}é and more", "v".repeat(254)),
            suites: vec![Suite::ChaCha20Poly1305],
            limits: limits(),
        };
        let mut b = BytesMut::new();
        ir.encode(&mut b);
        let back = InfoReply::decode(&b).unwrap();
        assert_eq!(back.version, "v".repeat(254));
        assert_eq!(back.limits, ir.limits);
    }

    proptest! {
        #[test]
        fn created_rejects_any_mutated_size_count(n in any::<u8>()) {
            let cr = Created { recipient_id: [3; 16], deposit_id: [4; 16], limits: limits() };
            let mut b = BytesMut::new();
            cr.encode(&mut b);
            let idx = b.len() - 4 * 5 - 1;
            prop_assume!(n != 5);
            b[idx] = n;
            prop_assert!(Created::decode(&b).is_err());
        }

        #[test]
        fn decoders_never_panic(p in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Create::decode(&p);
            let _ = Created::decode(&p);
            let _ = Subscribe::decode(&p);
            let _ = Subscribed::decode(&p);
            let _ = Delete::decode(&p);
            let _ = InfoReply::decode(&p);
            let _ = InfoReply::decode_with_forward_key(&p);
            let _ = crate::forward::Forward::decode(Bytes::from(p.clone()));
            let _ = crate::forward::Forwarded::decode(Bytes::from(p.clone()));
            let _ = ErrorMsg::decode(&p);
            let _ = decode_ack(&p);
            let _ = decode_deposit_result(&p);
            let _ = Deliver::decode(Bytes::from(p.clone()));
        }
    }
}
