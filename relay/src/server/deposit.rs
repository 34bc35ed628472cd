//! DEPOSIT streams: the sender pipelines envelopes; the relay parses whatever has arrived (up
//! to the batch limit), hands each envelope to the shard that owns its mailbox
//! ([`super::pipeline`]), and answers with one DEPOSIT_RESULT per batch, in order. Several
//! batches of one stream may be with the shards at once, so the stream keeps reading while
//! the store commits; how many is bounded ([`MAX_IN_FLIGHT`]), and beyond that QUIC flow
//! control holds back the sender.

use super::Shared;
use super::pipeline::Answered;
use crate::stream::{FrameReader, ReadError, frame_error_reply, refuse};
use quinn::SendStream;
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

/// How the stream ends once the answers in flight are sent.
enum End {
    /// The sender finished the stream.
    Finish,
    /// A fault to report with an ERROR.
    Refuse(ErrorCode, String),
    /// The stream or connection is gone.
    Dead,
}

pub(super) async fn run(
    shared: &Arc<Shared>,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let max_batch = shared.limits.max_batch;
    let mut batch: Vec<Frame> = Vec::with_capacity(max_batch);
    batch.push(first);
    let mut in_flight: VecDeque<(Answer, usize)> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let mut in_flight_bytes = 0usize;
    let mut end: Option<End> = None;
    let mut shutdown = shared.shutdown.clone();
    loop {
        if end.is_none() {
            // Take what is already decoded, without waiting.
            while batch.len() < max_batch {
                match reader.buffered_frame() {
                    Ok(Some(f)) if f.ty == FrameType::Deposit => batch.push(f),
                    Ok(Some(f)) => {
                        // The deposits before it are answered, then the stream ends.
                        let msg = format!(
                            "only DEPOSIT frames may follow on a deposit stream, got {:?}",
                            f.ty
                        );
                        end = Some(End::Refuse(ErrorCode::UnexpectedFrame, msg));
                        break;
                    }
                    Ok(None) => break,
                    Err(ReadError::Frame(e)) => {
                        let (code, msg) = frame_error_reply(&e);
                        end = Some(End::Refuse(code, msg));
                        break;
                    }
                    Err(ReadError::Stream) => {
                        end = Some(End::Dead);
                        break;
                    }
                }
            }
        }
        let room = in_flight.len() < MAX_IN_FLIGHT && in_flight_bytes < MAX_IN_FLIGHT_BYTES;
        if !batch.is_empty() && room {
            let bytes = batch.iter().map(|f| f.payload.len()).sum::<usize>();
            in_flight_bytes += bytes;
            in_flight.push_back((submit(shared, &mut batch).await, bytes));
            continue;
        }
        if in_flight.is_empty()
            && batch.is_empty()
            && let Some(end) = end
        {
            match end {
                End::Finish => {
                    let _ = send.finish();
                }
                End::Refuse(code, msg) => refuse(&mut send, Some(&mut reader), code, msg).await,
                End::Dead => {}
            }
            return;
        }
        // Read more only while there is room to submit it.
        let can_read = end.is_none() && batch.is_empty() && room;
        tokio::select! {
            biased;
            answered = async { in_flight.front_mut().expect("checked non-empty").0.as_mut().await },
                if !in_flight.is_empty() =>
            {
                if let Some((_, bytes)) = in_flight.pop_front() {
                    in_flight_bytes -= bytes;
                }
                let frame = frame_with(FrameType::DepositResult, |b| {
                    encode_deposit_result(&answered.statuses, answered.retry_after_ms, b)
                });
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            more = reader.fill(), if can_read => match more {
                Ok(true) => {}
                Ok(false) => end = Some(End::Finish),
                Err(ReadError::Frame(e)) => {
                    let (code, msg) = frame_error_reply(&e);
                    end = Some(End::Refuse(code, msg));
                }
                Err(ReadError::Stream) => end = Some(End::Dead),
            },
            // Stop reading; what was read is still answered before the ERROR.
            _ = shutdown.changed(), if end.is_none() => {
                end = Some(End::Refuse(
                    ErrorCode::ShuttingDown,
                    "relay shutting down; reconnect and resend what was not answered".into(),
                ));
            }
        }
    }
}

/// Parses a batch, hands its envelopes to their shards and returns the future of its
/// statuses; leaves `batch` empty.
async fn submit(shared: &Shared, batch: &mut Vec<Frame>) -> Answer {
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
