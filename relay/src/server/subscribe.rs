//! SUBSCRIBE streams: after a connection-bound proof, the relay sends the mailbox's pending
//! envelopes in sequence order and then new ones as they arrive, never more than the window
//! unacknowledged, each re-sealed under the mailbox's delivery key with a fresh random nonce.
//! Cumulative ACKs delete what they cover. Whatever is unacknowledged when the stream ends is
//! delivered again on the next subscription.

use super::Shared;
use super::registry::Kick;
use crate::store::StoredEnvelope;
use crate::stream::{FrameReader, ReadError, frame_error_reply, refuse};
use bytes::{Bytes, BytesMut};
use quinn::{Connection, SendStream};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sealpost_core::batch::SealJob;
use sealpost_core::engine::Engine;
use sealpost_core::frame::{self, Frame, FrameType, HEADER_LEN};
use sealpost_core::keys::{
    DELIVERY_AAD_LEN, EXPORTER_LABEL, EXPORTER_LEN, ProofPurpose, delivery_aad,
};
use sealpost_core::msg::{DELIVER_PREFIX, Subscribe, Subscribed, decode_ack, frame_with};
use sealpost_core::status::ErrorCode;
use sealpost_core::suite::TAG_LEN;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the ACK reader reports.
enum FromPeer {
    Ack(u64),
    Refuse(ErrorCode, String),
    Closed,
}

/// Checks a recipient's connection-bound proof for a mailbox; on success returns the mailbox's
/// delivery and auth keys, otherwise the ERROR to send.
pub(super) async fn authorize(
    shared: &Shared,
    conn: &Connection,
    recipient_id: &sealpost_core::RecipientId,
    proof: &[u8; sealpost_core::keys::PROOF_LEN],
    purpose: ProofPurpose,
) -> Result<sealpost_core::keys::MailboxKeys, (ErrorCode, String)> {
    let record = match shared.store.mailbox(recipient_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err((
                ErrorCode::UnknownMailbox,
                "no mailbox has this recipient id".into(),
            ));
        }
        Err(e) => return Err((ErrorCode::Unavailable, format!("store unavailable: {e}"))),
    };
    let Some(exp) = exporter(conn) else {
        return Err((ErrorCode::Unavailable, "TLS exporter unavailable".into()));
    };
    let keys = record.keys();
    if !keys.auth.verify(purpose, recipient_id, &exp, proof) {
        let what = match purpose {
            ProofPurpose::Subscribe => "subscribe",
            ProofPurpose::Delete => "delete",
        };
        return Err((
            ErrorCode::BadProof,
            format!("{what} proof does not verify for this mailbox on this connection"),
        ));
    }
    Ok(keys)
}

/// The connection's exporter value that proofs are bound to.
pub(super) fn exporter(conn: &Connection) -> Option<[u8; EXPORTER_LEN]> {
    let mut out = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

pub(super) async fn run(
    shared: &Arc<Shared>,
    conn: &Connection,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let req = match Subscribe::decode(&first.payload) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::MalformedFrame,
                e.to_string(),
            )
            .await;
        }
    };
    // Derived per subscription, not kept per mailbox: idle mailboxes stay small.
    let keys = match authorize(
        shared,
        conn,
        &req.recipient_id,
        &req.proof,
        ProofPurpose::Subscribe,
    )
    .await
    {
        Ok(k) => k,
        Err((code, msg)) => return refuse(&mut send, Some(&mut reader), code, msg).await,
    };
    let Some(mut wake) = shared.store.watch(&req.recipient_id) else {
        return refuse(
            &mut send,
            Some(&mut reader),
            ErrorCode::UnknownMailbox,
            "mailbox was deleted",
        )
        .await;
    };
    let (_registration, mut kicked) = shared.subscribers.register(req.recipient_id);
    let window = req.window.min(shared.limits.max_window);
    let pending = shared.store.pending(&req.recipient_id).await.unwrap_or(0);
    let hello = frame_with(FrameType::Subscribed, |b| {
        Subscribed { pending, window }.encode(b)
    });
    if send.write_all(&hello).await.is_err() {
        return;
    }

    let (tx, mut rx) = mpsc::channel(64);
    let ack_reader = tokio::spawn(read_acks(reader, tx));
    let mut shutdown = shared.shutdown.clone();
    let mut rng = StdRng::from_os_rng();
    let mut sent_upto = 0u64; // highest seq sent on this stream
    let mut stalled = false;
    let mut acked_upto = 0u64; // highest seq acknowledged on this stream
    // Sequence numbers delivered on this stream and not yet acknowledged, ascending.
    let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(window as usize);
    // A non-ACK message found while draining queued ACKs, handled on the next turn.
    let mut pending_msg: Option<FromPeer> = None;
    let outcome: Option<(ErrorCode, String)> = 'serve: loop {
        match pending_msg.take() {
            Some(FromPeer::Refuse(code, msg)) => break 'serve Some((code, msg)),
            Some(FromPeer::Closed) => break 'serve None,
            Some(FromPeer::Ack(_)) | None => {}
        }
        // Mark the signal seen before fetching, so an append racing with the fetch still wakes us.
        wake.borrow_and_update();
        if in_flight.len() >= window as usize {
            // A full window waits for ACKs, not for the store.
            stalled = false;
        }
        while in_flight.len() < window as usize {
            let room = window as usize - in_flight.len();
            let batch = match shared
                .store
                .fetch(
                    &req.recipient_id,
                    sent_upto,
                    room.min(shared.limits.max_batch),
                )
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    break 'serve Some((ErrorCode::Unavailable, format!("store unavailable: {e}")));
                }
            };
            if batch.is_empty() {
                // Held envelopes beyond what this stream delivered, yet none came back: they are
                // not durable or not readable yet. Look again shortly, in case the write that
                // completes them wakes only other mailboxes.
                let held = shared.store.pending(&req.recipient_id).await.unwrap_or(0);
                stalled = held > in_flight.len() as u64;
                break;
            }
            stalled = false;
            let last = batch[batch.len() - 1].seq;
            let t0 = std::time::Instant::now();
            let mut frames = seal_deliveries(
                &shared.engine,
                &req.recipient_id,
                &keys.deliver,
                &batch,
                &mut rng,
            );
            metrics::histogram!(crate::metrics::BATCH_SEAL).record(t0.elapsed().as_secs_f64());
            metrics::counter!(crate::metrics::DELIVERIES).increment(batch.len() as u64);
            metrics::counter!(crate::metrics::BYTES_OUT)
                .increment(frames.iter().map(|f| f.len() as u64).sum());
            if send.write_all_chunks(&mut frames).await.is_err() {
                break 'serve None;
            }
            in_flight.extend(batch.iter().map(|e| e.seq));
            sent_upto = last;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)), if stalled => {}
            msg = rx.recv() => match msg {
                Some(FromPeer::Ack(mut seq)) => {
                    // ACKs are cumulative: take every one already queued and apply only the
                    // highest, one store write for many ACK frames.
                    let mut after = None;
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            FromPeer::Ack(s) => seq = seq.max(s),
                            other => {
                                after = Some(other);
                                break;
                            }
                        }
                    }
                    if let Some(other) = after {
                        pending_msg = Some(other);
                    }
                    if seq > sent_upto {
                        break 'serve Some((ErrorCode::BadAck, format!("ACK {seq} is beyond the last delivered seq {sent_upto}")));
                    }
                    if seq > acked_upto {
                        if let Err(e) = shared.store.ack(&req.recipient_id, seq).await {
                            break 'serve Some((ErrorCode::Unavailable, format!("store unavailable: {e}")));
                        }
                        acked_upto = seq;
                        metrics::counter!(crate::metrics::ACKS).increment(1);
                        while in_flight.front().is_some_and(|s| *s <= seq) {
                            in_flight.pop_front();
                        }
                    }
                }
                Some(FromPeer::Refuse(code, msg)) => break 'serve Some((code, msg)),
                Some(FromPeer::Closed) | None => break 'serve None,
            },
            changed = wake.changed() => {
                if changed.is_err() {
                    break 'serve Some((ErrorCode::UnknownMailbox, "mailbox was deleted".into()));
                }
            }
            k = &mut kicked => {
                break 'serve Some(match k {
                    Ok(Kick::Deleted) => (ErrorCode::UnknownMailbox, "mailbox was deleted".into()),
                    _ => (ErrorCode::Replaced, "a newer subscription for this mailbox took over".into()),
                });
            }
            _ = shutdown.changed() => break 'serve Some((ErrorCode::ShuttingDown, "relay shutting down; reconnect".into())),
        }
    };
    ack_reader.abort();
    match outcome {
        Some((code, msg)) => refuse(&mut send, None, code, msg).await,
        None => {
            let _ = send.finish();
        }
    }
}

/// Reads ACK frames and forwards them; anything else ends the subscription with an error.
async fn read_acks(mut reader: FrameReader, tx: mpsc::Sender<FromPeer>) {
    loop {
        let msg = match reader.next_frame().await {
            Ok(Some(f)) if f.ty == FrameType::Ack => match decode_ack(&f.payload) {
                Ok(seq) => FromPeer::Ack(seq),
                Err(e) => FromPeer::Refuse(ErrorCode::MalformedFrame, e.to_string()),
            },
            Ok(Some(f)) => FromPeer::Refuse(
                ErrorCode::UnexpectedFrame,
                format!(
                    "only ACK frames may follow on a subscribe stream, got {:?}",
                    f.ty
                ),
            ),
            Ok(None) | Err(ReadError::Stream) => FromPeer::Closed,
            Err(ReadError::Frame(e)) => {
                let (code, msg) = frame_error_reply(&e);
                FromPeer::Refuse(code, msg)
            }
        };
        let last = !matches!(msg, FromPeer::Ack(_));
        if tx.send(msg).await.is_err() || last {
            if last {
                reader.stop();
            }
            return;
        }
    }
}

/// Seals a batch of stored envelopes into DELIVER frames, all in one allocation.
fn seal_deliveries(
    engine: &Engine,
    recipient_id: &sealpost_core::RecipientId,
    deliver: &sealpost_core::AeadKey,
    batch: &[StoredEnvelope],
    rng: &mut StdRng,
) -> Vec<Bytes> {
    let frame_len = |e: &StoredEnvelope| HEADER_LEN + DELIVER_PREFIX + e.envelope.len() + TAG_LEN;
    let total: usize = batch.iter().map(frame_len).sum();
    let mut buf = BytesMut::zeroed(total);
    let aads: Vec<[u8; DELIVERY_AAD_LEN]> = batch
        .iter()
        .map(|e| delivery_aad(recipient_id, e.seq))
        .collect();
    {
        let mut rest: &mut [u8] = &mut buf[..];
        let mut jobs = Vec::with_capacity(batch.len());
        for (e, aad) in batch.iter().zip(&aads) {
            let (this, tail) = rest.split_at_mut(frame_len(e));
            rest = tail;
            let (head, out) = this.split_at_mut(HEADER_LEN + DELIVER_PREFIX);
            head[..HEADER_LEN].copy_from_slice(&frame::header(
                FrameType::Deliver,
                DELIVER_PREFIX + e.envelope.len() + TAG_LEN,
            ));
            head[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&e.seq.to_be_bytes());
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut nonce);
            head[HEADER_LEN + 8..].copy_from_slice(&nonce);
            jobs.push(SealJob {
                key: deliver,
                nonce,
                aad,
                plaintext: &e.envelope,
                out,
            });
        }
        engine
            .seal(&mut jobs)
            .expect("output buffers are sized from their plaintexts");
    }
    let mut all = buf.freeze();
    batch.iter().map(|e| all.split_to(frame_len(e))).collect()
}
