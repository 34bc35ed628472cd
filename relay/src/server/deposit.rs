//! DEPOSIT streams: the sender pipelines envelopes; the relay takes whatever has arrived as
//! one batch (up to the batch limit), verifies the batch's tags together, stores it with one
//! append, and answers with one DEPOSIT_RESULT covering the batch in order. Batches form from
//! what is already buffered, so a lone envelope is never held back waiting for company, and
//! while a batch is processed QUIC flow control holds back the sender: the buffer is bounded.

use super::Shared;
use crate::store::{Append, AppendOutcome};
use crate::stream::{FrameReader, ReadError, frame_error_reply, refuse};
use quinn::SendStream;
use sealpost_core::batch::verify_batch;
use sealpost_core::envelope::{Envelope, EnvelopeErrorClass};
use sealpost_core::frame::{Frame, FrameType};
use sealpost_core::msg::{encode_deposit_result, frame_with};
use sealpost_core::status::{DepositStatus, ErrorCode};
use std::sync::Arc;

pub(super) async fn run(
    shared: &Arc<Shared>,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let max_batch = shared.limits.max_batch;
    let mut batch: Vec<Frame> = Vec::with_capacity(max_batch);
    batch.push(first);
    loop {
        // Take what is already decoded, without waiting.
        let mut fault = None;
        let mut drained = false;
        while batch.len() < max_batch {
            match reader.buffered_frame() {
                Ok(Some(f)) => batch.push(f),
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            }
        }
        // A non-DEPOSIT frame ends the stream after the deposits before it are answered.
        if let Some(i) = batch.iter().position(|f| f.ty != FrameType::Deposit) {
            let ty = batch[i].ty;
            batch.truncate(i);
            if !batch.is_empty() && !answer(shared, &mut batch, &mut send).await {
                return;
            }
            let msg = format!("only DEPOSIT frames may follow on a deposit stream, got {ty:?}");
            refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::UnexpectedFrame,
                msg,
            )
            .await;
            return;
        }
        if !batch.is_empty() && !answer(shared, &mut batch, &mut send).await {
            return;
        }
        if let Some(e) = fault {
            if let ReadError::Frame(e) = e {
                let (code, msg) = frame_error_reply(&e);
                refuse(&mut send, Some(&mut reader), code, msg).await;
            }
            return;
        }
        if drained {
            match reader.fill().await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = send.finish();
                    return;
                }
                Err(ReadError::Frame(e)) => {
                    let (code, msg) = frame_error_reply(&e);
                    refuse(&mut send, Some(&mut reader), code, msg).await;
                    return;
                }
                Err(ReadError::Stream) => return,
            }
        }
    }
}

/// Verifies, stores and answers one batch, leaving `batch` empty. `false` if the stream died.
async fn answer(shared: &Shared, batch: &mut Vec<Frame>, send: &mut SendStream) -> bool {
    let statuses = process(shared, batch).await;
    batch.clear();
    let frame = frame_with(FrameType::DepositResult, |b| {
        encode_deposit_result(&statuses, b)
    });
    send.write_all(&frame).await.is_ok()
}

/// The status of every frame in the batch, in order.
async fn process(shared: &Shared, batch: &[Frame]) -> Vec<DepositStatus> {
    let mut statuses = vec![DepositStatus::Ok; batch.len()];
    let mut parsed: Vec<(usize, Envelope)> = Vec::with_capacity(batch.len());
    for (i, f) in batch.iter().enumerate() {
        match Envelope::parse(f.payload.clone(), &shared.limits.sizes) {
            Ok(e) => parsed.push((i, e)),
            Err(e) => {
                statuses[i] = match e.status_class() {
                    EnvelopeErrorClass::Malformed => DepositStatus::Malformed,
                    EnvelopeErrorClass::BadSize => DepositStatus::BadSize,
                    EnvelopeErrorClass::Unsupported => DepositStatus::Unsupported,
                }
            }
        }
    }
    if parsed.is_empty() {
        return statuses;
    }
    let ids: Vec<_> = parsed.iter().map(|(_, e)| *e.deposit_id()).collect();
    let records = match shared.store.lookup_deposit(&ids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "mailbox lookup failed");
            for (i, _) in &parsed {
                statuses[*i] = DepositStatus::Unavailable;
            }
            return statuses;
        }
    };
    // Keep the envelopes whose mailbox exists and uses the envelope's suite.
    let mut candidates: Vec<(usize, &Envelope, &crate::store::MailboxRecord)> =
        Vec::with_capacity(parsed.len());
    for ((i, env), rec) in parsed.iter().zip(records.iter()) {
        match rec {
            None => statuses[*i] = DepositStatus::UnknownMailbox,
            Some(r) if r.suite != env.suite() => statuses[*i] = DepositStatus::Unsupported,
            Some(r) => candidates.push((*i, env, r)),
        }
    }
    let jobs: Vec<_> = candidates
        .iter()
        .map(|(_, e, r)| e.verify_job(&r.deposit_key))
        .collect();
    let mut ok = vec![false; jobs.len()];
    if verify_batch(&jobs, &mut ok).is_err() {
        // Shapes are built right above; treat an impossible mismatch as a relay fault.
        for (i, _, _) in &candidates {
            statuses[*i] = DepositStatus::Unavailable;
        }
        return statuses;
    }
    let mut appends = Vec::with_capacity(candidates.len());
    let mut slots = Vec::with_capacity(candidates.len());
    for ((i, env, _), good) in candidates.iter().zip(ok) {
        if good {
            appends.push(Append {
                deposit_id: *env.deposit_id(),
                nonce: *env.nonce(),
                envelope: env.as_bytes().clone(),
            });
            slots.push(*i);
        } else {
            statuses[*i] = DepositStatus::BadTag;
        }
    }
    if appends.is_empty() {
        return statuses;
    }
    match shared.store.append_batch(&appends).await {
        Ok(outcomes) => {
            for (i, o) in slots.iter().zip(outcomes) {
                statuses[*i] = match o {
                    AppendOutcome::Stored(_) => DepositStatus::Ok,
                    AppendOutcome::Duplicate => DepositStatus::Duplicate,
                    AppendOutcome::UnknownMailbox => DepositStatus::UnknownMailbox,
                    AppendOutcome::MailboxFull => DepositStatus::MailboxFull,
                };
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "append failed");
            for i in slots {
                statuses[i] = DepositStatus::Unavailable;
            }
        }
    }
    statuses
}
