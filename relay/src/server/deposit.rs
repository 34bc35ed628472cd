//! DEPOSIT streams: the sender pipelines envelopes; the relay parses whatever has arrived (up
//! to the batch limit), hands each envelope to the shard that owns its mailbox
//! ([`super::pipeline`]), and answers with one DEPOSIT_RESULT per batch, in order. Several
//! batches of one stream may be with the shards at once, so the stream keeps reading while
//! the store commits; how many is bounded ([`MAX_IN_FLIGHT`]), and beyond that QUIC flow
//! control holds back the sender.
//!
//! This is the async shell: batching, the in-flight bounds, answer order and the stream's
//! ending are decided by the sans-IO [`DepositStream`]; this file reads frames, submits
//! batches to the shards, writes the answers and feeds it what happens.

use super::pipeline::Answered;
use super::proto::{BatchId, DepositAction, DepositLimits, DepositStream, Ending};
use super::{Peer, Shared};
use crate::stream::{frame_error_reply, refuse};
use quinn::SendStream;
use sealpost_client::stream::{FrameReader, ReadError};
use sealpost_core::envelope::{Envelope, EnvelopeErrorClass};
use sealpost_core::frame::{Frame, FrameType};
use sealpost_core::msg::{encode_deposit_result, frame_with};
use sealpost_core::status::{DepositStatus, ErrorCode};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Batches of one stream submitted and not yet answered.
const MAX_IN_FLIGHT: usize = 64;
/// Envelope bytes of one stream submitted and not yet answered. Batches form from whatever
/// QUIC delivered, often a few packets, so the count alone would either starve the shards of
/// work (few small batches) or let a stream of large envelopes hold too much memory.
const MAX_IN_FLIGHT_BYTES: usize = 2 << 20;

/// One batch's statuses, once every shard involved has answered.
type Answer = Pin<Box<dyn Future<Output = Answered> + Send>>;

pub(super) async fn run(
    shared: &Arc<Shared>,
    peer: &Peer,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let max_batch = shared.limits.max_batch;
    let mut ds: DepositStream<Answered> = DepositStream::new(DepositLimits {
        max_batch,
        max_in_flight: MAX_IN_FLIGHT,
        max_in_flight_bytes: MAX_IN_FLIGHT_BYTES,
    });
    // The frames of the batch being collected; the state machine counts them.
    let mut batch: Vec<Frame> = Vec::with_capacity(max_batch);
    take_frame(&mut ds, &mut batch, first);
    // The answers of submitted batches, oldest first.
    let mut in_flight: VecDeque<(BatchId, Answer)> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Take what is already decoded, without waiting.
        while ds.frames_wanted() > 0 {
            match reader.buffered_frame() {
                Ok(Some(f)) if f.ty == FrameType::Deposit => take_frame(&mut ds, &mut batch, f),
                Ok(Some(f)) => {
                    // The deposits before it are answered, then the stream ends.
                    let msg = format!(
                        "only DEPOSIT frames may follow on a deposit stream, got {:?}",
                        f.ty
                    );
                    ds.on_peer_error(ErrorCode::UnexpectedFrame, msg);
                }
                Ok(None) => break,
                Err(ReadError::Frame(e)) => {
                    let (code, msg) = frame_error_reply(&e);
                    ds.on_peer_error(code, msg);
                }
                Err(ReadError::Stream) => ds.on_stream_failed(),
            }
        }
        match ds.poll_action() {
            Some(DepositAction::Submit { id, frames }) => {
                debug_assert_eq!(frames, batch.len());
                in_flight.push_back((id, submit(shared, &mut batch).await));
                continue;
            }
            Some(DepositAction::SendResult(answered)) => {
                let frame = frame_with(FrameType::DepositResult, |b| {
                    encode_deposit_result(&answered.statuses, answered.retry_after_ms, b)
                });
                if send.write_all(&frame).await.is_err() {
                    return;
                }
                let rejected = answered
                    .statuses
                    .iter()
                    .filter(|s| is_rejection(**s))
                    .count();
                if !peer.charge_faults(rejected, std::time::Instant::now()) {
                    // The answers went out; the connection goes now, and its source waits
                    // out the penalty before it may connect again.
                    return;
                }
                continue;
            }
            Some(DepositAction::End(ending)) => {
                match ending {
                    Ending::Finish => {
                        let _ = send.finish();
                    }
                    Ending::Error(code, msg) => {
                        refuse(&mut send, Some(&mut reader), code, msg).await
                    }
                    Ending::Abandon => {}
                }
                return;
            }
            None => {}
        }
        let can_read = ds.wants_read();
        tokio::select! {
            biased;
            statuses = async { in_flight.front_mut().expect("checked non-empty").1.as_mut().await },
                if !in_flight.is_empty() =>
            {
                if let Some((id, _)) = in_flight.pop_front() {
                    ds.on_answer(id, statuses);
                }
            }
            more = reader.fill(), if can_read => match more {
                Ok(true) => {}
                Ok(false) => ds.on_peer_finished(),
                Err(ReadError::Frame(e)) => {
                    let (code, msg) = frame_error_reply(&e);
                    ds.on_peer_error(code, msg);
                }
                Err(ReadError::Stream) => ds.on_stream_failed(),
            },
            // Stop reading; what was read is still answered before the ERROR.
            _ = shutdown.changed(), if !ds.is_ending() => ds.on_shutdown(),
        }
    }
}

/// Adds a DEPOSIT frame to the batch being collected. Only called while the state machine
/// wants frames, so it is never refused; were it refused, dropping the frame unanswered
/// would break the in-order results, so it is kept and submitted with the batch instead.
fn take_frame(ds: &mut DepositStream<Answered>, batch: &mut Vec<Frame>, f: Frame) {
    let _ = ds.on_frame(f.payload.len());
    batch.push(f);
}

/// Parses a batch, hands its envelopes to their shards and returns the future of its
/// statuses; leaves `batch` empty.
pub(super) async fn submit(shared: &Shared, batch: &mut Vec<Frame>) -> Answer {
    let mut statuses = vec![DepositStatus::Ok; batch.len()];
    let pipeline = &shared.pipeline;
    let n = pipeline.len();
    let mut groups: Vec<(Vec<Envelope>, Vec<usize>)> = (0..n).map(|_| Default::default()).collect();
    for (i, f) in batch.drain(..).enumerate() {
        match Envelope::parse(f.payload, &shared.limits.sizes) {
            Ok(e) => {
                let g = &mut groups[pipeline.shard_of(&e)];
                g.0.push(e);
                g.1.push(i);
            }
            Err(e) => {
                let s = match e.status_class() {
                    EnvelopeErrorClass::Malformed => DepositStatus::Malformed,
                    EnvelopeErrorClass::BadSize => DepositStatus::BadSize,
                    EnvelopeErrorClass::Unsupported => DepositStatus::Unsupported,
                };
                metrics::counter!(crate::metrics::DEPOSITS, "status" => crate::metrics::status_label(s))
                    .increment(1);
                statuses[i] = s;
            }
        }
    }
    let mut parts = Vec::with_capacity(n);
    for (shard, (envelopes, slots)) in groups.into_iter().enumerate() {
        if !envelopes.is_empty() {
            parts.push((pipeline.submit(shard, envelopes).await, slots));
        }
    }
    Box::pin(async move {
        let mut retry_after_ms = None;
        for (pending, slots) in parts {
            let answered = pending.statuses(slots.len()).await;
            retry_after_ms = retry_after_ms.max(answered.retry_after_ms);
            for (i, s) in slots.into_iter().zip(answered.statuses) {
                statuses[i] = s;
            }
        }
        Answered {
            statuses,
            retry_after_ms,
        }
    })
}

/// Whether a status rejects the envelope for what it is (not for the relay's state at the
/// moment): what a flood of forgeries or garbage produces, and what a working client does
/// not send in numbers.
fn is_rejection(s: DepositStatus) -> bool {
    matches!(
        s,
        DepositStatus::BadTag
            | DepositStatus::UnknownMailbox
            | DepositStatus::Malformed
            | DepositStatus::BadSize
            | DepositStatus::Unsupported
    )
}
