//! The bodies of sealpost's fuzz targets, as plain functions.
//!
//! Each function takes the fuzzer's bytes and panics when a property of the code under test
//! fails; returning means the input was fine, and the value returned says whether it was
//! accepted (and its round trip checked) or refused. The libFuzzer harnesses in `fuzz_targets/` call
//! them, and so does `tests/replay.rs`, which runs every file of `corpus/<target>/` through
//! its target in an ordinary `cargo test`. docs/FUZZING.md says how to run the fuzzers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::{Bytes, BytesMut};
use sealpost_client::mailbox_file;
use sealpost_core::envelope::{self, Envelope, OVERHEAD};
use sealpost_core::frame::{self, Frame, FrameDecoder, FrameError, FrameType};
use sealpost_core::invitation::{Invitation, PREFIX};
use sealpost_core::msg::{self, Create, Created, Delete, Deliver, ErrorMsg, InfoReply};
use sealpost_core::msg::{Subscribe, Subscribed};
use sealpost_core::padding::SizeClasses;
use sealpost_core::suite::TAG_LEN;
use sealpost_relay::settings::Settings;
use std::path::Path;

/// A fuzz target: a name (its harness binary and its corpus directory) and its body.
pub struct Target {
    /// The harness binary and the directory under `corpus/`.
    pub name: &'static str,
    /// Checks one input; panics if a property fails. Returns whether the input was accepted
    /// (parsed, so that the round-trip properties were checked) rather than refused.
    pub run: fn(&[u8]) -> bool,
}

/// Every target, in the order `run.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decoder",
        run: frame_decoder,
    },
    Target {
        name: "envelope",
        run: envelope,
    },
    Target {
        name: "control",
        run: control,
    },
    Target {
        name: "invitation",
        run: invitation,
    },
    Target {
        name: "settings",
        run: settings,
    },
    Target {
        name: "mailbox_file",
        run: mailbox_file,
    },
    Target {
        name: "subscription",
        run: subscription,
    },
    Target {
        name: "deposit_stream",
        run: deposit_stream,
    },
];

/// The relay's SUBSCRIBE state machine driven by `data` read as events (store appends, ACKs
/// good and bad, wake-ups, clock ticks, replacement, shutdown, store failures) through the
/// simulated harness, which checks on every step that nothing acknowledged is skipped,
/// nothing is delivered out of order, the window is never exceeded and memory stays bounded,
/// and at the end that the mailbox drains. Every input is a valid event sequence.
pub fn subscription(data: &[u8]) -> bool {
    sealpost_relay::fuzzing::fuzz_subscription(data);
    true
}

/// The relay's DEPOSIT stream state machine driven by `data` read as events (deposits,
/// shard answers in any order, reads, the sender's end or fault, shutdown), checking that
/// answers go out in order, the in-flight bounds hold, and every deposit read is answered.
pub fn deposit_stream(data: &[u8]) -> bool {
    sealpost_relay::fuzzing::fuzz_deposit(data);
    true
}

/// What a decoder made of a whole stream: its frames, and how the stream ended.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Frame>,
    end: Result<(), FrameError>,
}

/// Feeds `chunks` to a decoder; after each chunk whose flag is false it pushes the next
/// one without draining first, which the decoder must also handle.
fn decode_chunks(max: u32, chunks: &[(Bytes, bool)]) -> Decoded {
    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let last = chunks.len().saturating_sub(1);
    for (i, (c, drain)) in chunks.iter().enumerate() {
        dec.push(c.clone());
        if i != last && !drain {
            continue;
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        f.payload.len() < max as usize,
                        "a frame above the limit was returned"
                    );
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        dec.next_frame().is_err(),
                        "a failed decoder must stay failed"
                    );
                    return Decoded {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
    }
    let end = dec.finish();
    if end.is_ok() {
        assert!(dec.is_idle(), "finish succeeded with bytes buffered");
    }
    Decoded { frames, end }
}

/// The frame decoder (`FrameDecoder`).
///
/// Input: two bytes of frame limit (u16 BE); a count `n`; `n` chunking bytes; the stream.
/// The stream is decoded whole, and again cut into chunks whose lengths are the chunking
/// bytes' low 7 bits, used in turn (one-byte chunks if `n` is 0); a set high bit pushes the
/// next chunk without draining the decoder in between. Both must give the same frames and
/// the same ending, and the frames re-encoded must be exactly the bytes that were consumed.
/// Accepted means the stream ended cleanly.
pub fn frame_decoder(data: &[u8]) -> bool {
    let [a, b, n, ref rest @ ..] = *data else {
        return false;
    };
    let max = u32::from(u16::from_be_bytes([a, b]));
    let Some((cuts, stream)) = rest.split_at_checked(usize::from(n)) else {
        return false;
    };
    let stream = Bytes::copy_from_slice(stream);
    let whole = decode_chunks(max, &[(stream.clone(), true)]);

    let mut chunks = Vec::new();
    let mut at = 0;
    let mut i = 0;
    // Zero-length chunks are allowed, but never more than a few in a row.
    let mut empty_run = 0;
    while at < stream.len() {
        let cut = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(1);
        i += 1;
        let mut len = usize::from(cut & 0x7F);
        if len == 0 {
            empty_run += 1;
            if empty_run > 3 {
                len = 1;
                empty_run = 0;
            }
        }
        let end = (at + len).min(stream.len());
        chunks.push((stream.slice(at..end), cut & 0x80 == 0));
        at = end;
    }
    let split = decode_chunks(max, &chunks);
    assert_eq!(whole, split, "chunking changed what was decoded");

    let mut wire = BytesMut::new();
    for f in &whole.frames {
        frame::encode(f.ty, &f.payload, &mut wire);
    }
    assert_eq!(
        &wire[..],
        &stream[..wire.len().min(stream.len())],
        "re-encoded frames differ from the stream"
    );
    if whole.end.is_ok() {
        assert_eq!(wire.len(), stream.len(), "a clean end left bytes unread");
    }
    whole.end.is_ok()
}

/// Envelope parsing (`Envelope::parse` and `Envelope::parse_any_size`).
///
/// Input: one byte choosing the size policy (the default classes, a single class taken from
/// the input's own body_len, or any size), then the envelope. Nothing may panic; an accepted
/// envelope must own exactly the input bytes and re-serialise from its fields to them.
pub fn envelope(data: &[u8]) -> bool {
    let [mode, ref rest @ ..] = *data else {
        return false;
    };
    let bytes = Bytes::copy_from_slice(rest);
    let parsed = match mode % 3 {
        0 => Envelope::parse(bytes, &SizeClasses::default()),
        1 => {
            let own = rest
                .get(4..8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(256);
            match SizeClasses::single(own) {
                Ok(sizes) => Envelope::parse(bytes, &sizes),
                Err(_) => return false,
            }
        }
        _ => Envelope::parse_any_size(bytes),
    };
    let env = match parsed {
        Ok(env) => env,
        Err(e) => {
            // The refusal maps to a status class and prints without panicking.
            let _ = (e.status_class(), e.to_string());
            return false;
        }
    };
    assert_eq!(&env.as_bytes()[..], rest, "parse changed the bytes");
    assert!(
        Envelope::parse_any_size(env.as_bytes().clone()).is_ok(),
        "an envelope one policy accepts is refused by parse_any_size"
    );
    assert_eq!(env.body_len() + OVERHEAD, rest.len());
    let mut again = Vec::with_capacity(rest.len());
    again.push(envelope::VERSION);
    again.push(env.suite().to_u8());
    again.extend_from_slice(&[0, 0]);
    let body_len = u32::try_from(env.body_len()).unwrap_or(u32::MAX);
    again.extend_from_slice(&body_len.to_be_bytes());
    again.extend_from_slice(env.deposit_id());
    again.extend_from_slice(env.nonce());
    again.extend_from_slice(env.body());
    again.extend_from_slice(env.tag());
    assert_eq!(again, rest, "fields do not re-serialise to the envelope");
    assert_eq!(env.authenticated().len() + TAG_LEN, rest.len());
    true
}

/// Checks that `payload` survives a trip through a whole frame and the frame decoder.
fn through_frame(ty: FrameType, payload: &[u8]) {
    let wire = msg::frame_with(ty, |out| out.extend_from_slice(payload));
    let mut dec = FrameDecoder::new(u32::MAX);
    dec.push(wire);
    match dec.next_frame() {
        Ok(Some(f)) => {
            assert_eq!(f.ty, ty);
            assert_eq!(&f.payload[..], payload);
        }
        other => panic!("frame_with output does not decode: {other:?}"),
    }
    assert!(dec.finish().is_ok());
}

/// For a layout with more than one spelling: `m` re-encoded decodes to `m` again, that
/// encoding is its own re-encoding, and it survives framing. Returns the encoding.
fn canonical<M: PartialEq + std::fmt::Debug>(
    ty: FrameType,
    m: &M,
    encode: fn(&M, &mut BytesMut),
    decode: fn(&[u8]) -> Result<M, msg::MsgError>,
) -> BytesMut {
    let re = encoded(|o| encode(m, o));
    let m2 = decode(&re).unwrap_or_else(|e| panic!("re-encoded {ty:?} does not decode: {e}"));
    assert_eq!(&m2, m, "{ty:?} changed on re-encoding");
    assert_eq!(encoded(|o| encode(&m2, o)), re, "{ty:?} is not canonical");
    through_frame(ty, &re);
    re
}

/// Encodes with `f` into a fresh buffer.
fn encoded(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    f(&mut out);
    out
}

/// Every control payload of `msg.rs`: CREATE, CREATED (and with it the limits),
/// DEPOSIT_RESULT, SUBSCRIBE, SUBSCRIBED, DELIVER, ACK, DELETE, INFO_REPLY and ERROR.
///
/// Input: one byte choosing the message, then its payload. A payload that decodes must encode
/// back to the same bytes where the layout has one spelling, and otherwise to a canonical form
/// that decodes to the same message and is its own re-encoding (size lists are sorted, unknown
/// suites dropped, long error messages cut). Two more selectors encode messages built from
/// arbitrary text, which must decode back.
pub fn control(data: &[u8]) -> bool {
    let [sel, ref p @ ..] = *data else {
        return false;
    };
    let (ty, re) = match sel % 12 {
        0 => {
            let Ok(m) = Create::decode(p) else {
                return false;
            };
            (FrameType::Create, encoded(|o| m.encode(o)))
        }
        1 => {
            let Ok(m) = Created::decode(p) else {
                return false;
            };
            let re = canonical(FrameType::Created, &m, Created::encode, Created::decode);
            // Ids (32 bytes) and the fixed limits (29) come before the size list; a list
            // that is already sorted and free of duplicates has only one spelling.
            if sorted_unique(&p[61..]) {
                assert_eq!(&re[..], p, "CREATED with a canonical size list changed");
            }
            return true;
        }
        2 => {
            let Ok(m) = msg::decode_deposit_result(p) else {
                return false;
            };
            (
                FrameType::DepositResult,
                encoded(|o| msg::encode_deposit_result(&m.statuses, m.retry_after_ms, o)),
            )
        }
        3 => {
            let Ok(m) = Subscribe::decode(p) else {
                return false;
            };
            (FrameType::Subscribe, encoded(|o| m.encode(o)))
        }
        4 => {
            let Ok(m) = Subscribed::decode(p) else {
                return false;
            };
            (FrameType::Subscribed, encoded(|o| m.encode(o)))
        }
        5 => {
            let Ok(m) = Deliver::decode(Bytes::copy_from_slice(p)) else {
                return false;
            };
            // DELIVER has no encoder of its own: the relay writes its parts directly.
            let mut re = BytesMut::new();
            re.extend_from_slice(&m.seq.to_be_bytes());
            re.extend_from_slice(&m.nonce);
            re.extend_from_slice(&m.sealed);
            assert!(m.sealed.len() >= TAG_LEN);
            (FrameType::Deliver, re)
        }
        6 => {
            let Ok(seq) = msg::decode_ack(p) else {
                return false;
            };
            (FrameType::Ack, encoded(|o| msg::encode_ack(seq, o)))
        }
        7 => {
            let Ok(m) = Delete::decode(p) else {
                return false;
            };
            (FrameType::Delete, encoded(|o| m.encode(o)))
        }
        8 => {
            let Ok(m) = InfoReply::decode(p) else {
                return false;
            };
            canonical(
                FrameType::InfoReply,
                &m,
                InfoReply::encode,
                InfoReply::decode,
            );
            return true;
        }
        9 => {
            let Ok(m) = ErrorMsg::decode(p) else {
                return false;
            };
            let re = encoded(|o| m.encode(o));
            let m2 = ErrorMsg::decode(&re).expect("re-encoded ERROR decodes");
            assert_eq!(m2.code, m.code);
            assert!(m2.message.len() <= msg::MAX_ERROR_MESSAGE);
            assert!(
                m.message.starts_with(&m2.message),
                "ERROR message was not cut at its end"
            );
            let exact =
                std::str::from_utf8(&p[2..]).is_ok_and(|s| s.len() <= msg::MAX_ERROR_MESSAGE);
            if exact {
                assert_eq!(&re[..], p);
            }
            let _ = m.to_string();
            through_frame(FrameType::Error, &re);
            return true;
        }
        10 => {
            // An ERROR built from any text must encode to something that decodes.
            let [c0, c1, ref text @ ..] = *p else {
                return false;
            };
            let m = ErrorMsg {
                code: u16::from_be_bytes([c0, c1]),
                message: String::from_utf8_lossy(text).into_owned(),
            };
            let re = encoded(|o| m.encode(o));
            let m2 = ErrorMsg::decode(&re).expect("an encoded ERROR decodes");
            assert!(m.message.starts_with(&m2.message));
            return true;
        }
        _ => {
            // An INFO_REPLY built from any version text must encode to something that decodes.
            let m = InfoReply {
                version: String::from_utf8_lossy(p).into_owned(),
                suites: sealpost_core::Suite::ALL.to_vec(),
                limits: sample_limits(),
            };
            let re = encoded(|o| m.encode(o));
            let m2 = InfoReply::decode(&re).expect("an encoded INFO_REPLY decodes");
            assert!(m.version.starts_with(&m2.version));
            assert!(m2.version.len() <= 255);
            return true;
        }
    };
    assert_eq!(&re[..], p, "{ty:?} payload does not re-encode to itself");
    through_frame(ty, &re);
    true
}

fn sorted_unique(sizes: &[u8]) -> bool {
    let v: Vec<u32> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    v.windows(2).all(|w| w[0] < w[1])
}

fn sample_limits() -> msg::Limits {
    msg::Limits {
        max_frame: 70_000,
        max_envelopes: 10,
        max_bytes: 1 << 20,
        retention_secs: 3600,
        max_window: 256,
        sizes: SizeClasses::default(),
    }
}

/// Compares two invitations field by field (the type has no `PartialEq`: it holds a key).
fn same_invitation(a: &Invitation, b: &Invitation) -> bool {
    a.relays == b.relays
        && a.trust == b.trust
        && a.deposit_id == b.deposit_id
        && a.suite() == b.suite()
        && a.deposit_key.expose() == b.deposit_key.expose()
        && a.e2e_public == b.e2e_public
}

/// Invitations (`Invitation::parse` and `encode`).
///
/// Input: one mode byte. Even: the rest is the invitation text. Odd: the rest is the
/// decoded body of an invitation, which gets its checksum and prefix here, so that the
/// fuzzer reaches the field checks behind the checksum. An invitation that parses must
/// encode to a string that parses to the same fields and encodes to itself again.
pub fn invitation(data: &[u8]) -> bool {
    let [mode, ref rest @ ..] = *data else {
        return false;
    };
    let text = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return false,
        }
    } else {
        invitation_text(rest)
    };
    let Ok(inv) = Invitation::parse(&text) else {
        return false;
    };
    let s = inv.encode().expect("a parsed invitation encodes");
    let again = Invitation::parse(&s).expect("an encoded invitation parses");
    assert!(same_invitation(&inv, &again), "invitation fields changed");
    assert_eq!(
        again.encode().ok(),
        Some(s.clone()),
        "encoding is not stable"
    );
    if mode % 2 == 1 {
        assert_eq!(s, text, "a canonical invitation re-encodes differently");
    }
    true
}

/// `sealpost1:` and the base64url of `body` followed by its checksum.
pub fn invitation_text(body: &[u8]) -> String {
    use base64::Engine;
    let mut raw = body.to_vec();
    let sum = ring::digest::digest(&ring::digest::SHA256, body);
    raw.extend_from_slice(&sum.as_ref()[..4]);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// The relay's settings file (`Settings::from_toml`, then `validate`).
///
/// Input: the file's text. Nothing may panic; settings that validate must print (as
/// `check-config` does) to TOML that parses and validates to the same printout.
pub fn settings(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(s) = Settings::from_toml(text) else {
        return false;
    };
    let Ok(v) = s.validate() else { return false };
    let printed = v.to_toml(false);
    let back = Settings::from_toml(&printed)
        .unwrap_or_else(|e| panic!("printed settings do not parse: {e}\n{printed}"));
    let v2 = back
        .validate()
        .unwrap_or_else(|e| panic!("printed settings do not validate: {e}\n{printed}"));
    assert_eq!(
        v2.to_toml(false),
        printed,
        "settings printout is not stable"
    );
    true
}

/// The recipient's mailbox file (`mailbox_file::parse`, then `to_json`).
///
/// Input: the file's bytes. Nothing may panic; a file that parses must write out (as
/// `to_json` does) to JSON that parses to the same mailbox and writes out the same again.
pub fn mailbox_file(data: &[u8]) -> bool {
    let path = Path::new("fuzz-input.json");
    let Ok(m) = mailbox_file::parse(path, data) else {
        return false;
    };
    let json = mailbox_file::to_json(&m).expect("a parsed mailbox serialises");
    let m2 = mailbox_file::parse(path, json.as_bytes()).expect("a written mailbox parses");
    let json2 = mailbox_file::to_json(&m2).expect("a parsed mailbox serialises");
    assert_eq!(*json, *json2, "mailbox file is not stable");
    assert_eq!(m2.relays, m.relays);
    assert_eq!(m2.invitation().encode().ok(), m.invitation().encode().ok());
    true
}
