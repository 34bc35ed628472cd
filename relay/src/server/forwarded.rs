//! FORWARDED streams, at the destination relay: a request another relay passes on, sealed to
//! this relay's forwarding key. The relay opens it, carries it out as if it had arrived on a
//! stream of its own (an INFO, or DEPOSIT frames, verified and stored as usual: OK only once
//! durable), and answers with one FORWARD_RESULT frame: the frames it would have sent, sealed
//! under a key exported from the request's HPKE context, so that the forwarding relay learns
//! neither the mailbox, the contents nor the statuses.
//!
//! Faults inside a forwarded request are not charged to the source: the source is the
//! forwarding relay, which cannot see what its senders sealed, and charging it would let one
//! sender cut every sender of that relay off.

use super::Shared;
use crate::stream::refuse;
use bytes::Bytes;
use quinn::SendStream;
use sealpost_client::stream::FrameReader;
use sealpost_core::forward::{self, Forwarded, RESPONSE_EXPORT, ResponseKey};
use sealpost_core::frame::{self, Frame, FrameDecoder, FrameType};
use sealpost_core::msg::{ErrorMsg, INFO_WANTS_FORWARD_KEY, encode_deposit_result, frame_with};
use sealpost_core::padding;
use sealpost_core::status::{DepositStatus, ErrorCode};
use std::sync::Arc;

/// What became of a forwarded request, for the metric.
fn count(result: &'static str) {
    metrics::counter!(crate::metrics::FORWARDED, "result" => result).increment(1);
}

pub(super) async fn run(
    shared: &Arc<Shared>,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let req = match Forwarded::decode(first.payload) {
        Ok(r) => r,
        Err(e) => {
            count("malformed");
            return refuse(&mut send, Some(&mut reader), e.code(), e.to_string()).await;
        }
    };
    let bad_seal = "the request does not open under this relay's forwarding key: the sender's \
                    invitation carries another relay's key, or the request was altered";
    // The current key, or a previous one inside its overlap after a rotation.
    let Ok(opened) = shared.forward_key.open(&req.enc, &req.ciphertext) else {
        count("bad_seal");
        return refuse(&mut send, Some(&mut reader), ErrorCode::BadSeal, bad_seal).await;
    };
    if opened.with == crate::forward::key::OpenedWith::Previous {
        metrics::counter!(crate::metrics::FORWARDED_PREVIOUS_KEY).increment(1);
    }
    // The answer is sealed under the export of whichever key's context opened the request:
    // the one the sender sealed to.
    let key = ResponseKey::from_bytes(opened.context.export32(RESPONSE_EXPORT));
    let buf = opened.plain;
    // From here on every answer, refusals included, is sealed for the sender.
    let answer = match padding::unpad(&buf) {
        Ok(content) => {
            let content = Bytes::copy_from_slice(content);
            carry_out(shared, content).await
        }
        Err(e) => error_frame(ErrorCode::MalformedFrame, format!("forwarded request: {e}")),
    };
    let sealed = match key.seal(&answer) {
        Ok(s) => s,
        Err(e) => {
            count("error");
            let msg = format!("sealing the answer failed: {e}");
            return refuse(&mut send, Some(&mut reader), ErrorCode::Unavailable, msg).await;
        }
    };
    count("answered");
    let out = frame::encode_to_bytes(FrameType::ForwardResult, &sealed);
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>) -> Bytes {
    let e = ErrorMsg::new(code, message);
    frame_with(FrameType::Error, |b| e.encode(b))
}

/// The frames answering one opened request: its frames, decoded with this relay's frame
/// limit, must be one INFO or DEPOSIT frames only. A FORWARD or FORWARDED inside is refused:
/// a forwarded request is never forwarded again.
async fn carry_out(shared: &Arc<Shared>, content: Bytes) -> Bytes {
    let limit = shared.limits.frame_limit();
    if content.len() > forward::max_request(limit) {
        return error_frame(
            ErrorCode::FrameTooLarge,
            format!(
                "a forwarded request carries at most {} bytes of frames, this one {}",
                forward::max_request(limit),
                content.len()
            ),
        );
    }
    let mut dec = FrameDecoder::new(limit);
    dec.push(content);
    let mut frames = Vec::new();
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => return error_frame(ErrorCode::from(&e), format!("forwarded request: {e}")),
        }
    }
    if let Err(e) = dec.finish() {
        return error_frame(ErrorCode::from(&e), format!("forwarded request: {e}"));
    }
    let Some(head) = frames.first() else {
        return error_frame(ErrorCode::MalformedFrame, "the forwarded request is empty");
    };
    match head.ty {
        FrameType::Info if frames.len() == 1 => info(shared, &head.payload),
        FrameType::Deposit if frames.iter().all(|f| f.ty == FrameType::Deposit) => {
            deposit(shared, frames).await
        }
        other => error_frame(
            ErrorCode::UnexpectedFrame,
            format!(
                "a forwarded request is one INFO or DEPOSIT frames only, and is never forwarded \
                 again; this one begins with {other:?} and has {} frames",
                frames.len()
            ),
        ),
    }
}

fn info(shared: &Shared, payload: &[u8]) -> Bytes {
    let reply = super::control::info_reply(shared);
    match payload {
        [] => frame_with(FrameType::InfoReply, |b| reply.encode(b)),
        [INFO_WANTS_FORWARD_KEY] => frame_with(FrameType::InfoReply, |b| {
            reply.encode_with_forward_key(&shared.forward_key.public(), b)
        }),
        other => error_frame(
            ErrorCode::MalformedFrame,
            format!(
                "INFO carries no payload or the byte 1, got {} bytes",
                other.len()
            ),
        ),
    }
}

/// Stores the envelopes through the shards, as a deposit stream would, and answers one
/// DEPOSIT_RESULT for all of them once every shard has answered (after its commit).
async fn deposit(shared: &Arc<Shared>, frames: Vec<Frame>) -> Bytes {
    let mut statuses: Vec<DepositStatus> = Vec::with_capacity(frames.len());
    let mut retry_after_ms: Option<u32> = None;
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() {
        let mut batch: Vec<Frame> = frames.by_ref().take(shared.limits.max_batch).collect();
        let answered = super::deposit::submit(shared, &mut batch).await.await;
        retry_after_ms = retry_after_ms.max(answered.retry_after_ms);
        statuses.extend(answered.statuses);
    }
    frame_with(FrameType::DepositResult, |b| {
        encode_deposit_result(&statuses, retry_after_ms, b)
    })
}
