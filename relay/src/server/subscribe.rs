//! SUBSCRIBE streams: after a connection-bound proof, the relay sends the mailbox's pending
//! envelopes in sequence order and then new ones as they arrive, never more than the window
//! unacknowledged, each re-sealed under the mailbox's delivery key with a fresh random nonce.
//! Cumulative ACKs delete what they cover. Whatever is unacknowledged when the stream ends is
//! delivered again on the next subscription.
//!
//! This is the async shell: the rules (window, ACKs, when to fetch, how the stream ends) are
//! in the sans-IO [`Subscription`]; this file carries out its actions against the store and
//! the stream and feeds it what happens.

use super::Shared;
use super::proto::{Ending, SubAction, Subscription};
use super::registry::Kick;
use crate::store::{Claim, ClaimEnd, StoredEnvelope, SubscriberClaim};
use crate::stream::{frame_error_reply, refuse};
use bytes::{Bytes, BytesMut};
use quinn::{Connection, SendStream};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sealpost_client::stream::{FrameReader, ReadError};
use sealpost_core::batch::SealJob;
use sealpost_core::engine::Engine;
use sealpost_core::frame::{self, Frame, FrameType, HEADER_LEN};
use sealpost_core::keys::{
    DELIVERY_AAD_LEN, EXPORTER_LABEL, EXPORTER_LEN, ProofPurpose, delivery_aad,
};
use sealpost_core::msg::{DELIVER_PREFIX, Subscribe, Subscribed, decode_ack, frame_with};
use sealpost_core::status::ErrorCode;
use sealpost_core::suite::TAG_LEN;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

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
    let (mut wake, mut claim) = match hold(shared, &req.recipient_id).await {
        Ok(held) => held,
        Err((code, msg)) => return refuse(&mut send, Some(&mut reader), code, msg).await,
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
    let mut sub = Subscription::new(window, shared.limits.max_batch);
    // The last fetch; `Deliver` sends a prefix of it.
    let mut batch: Vec<StoredEnvelope> = Vec::new();
    let ending = 'serve: loop {
        // Carry out what the state machine asks, one store operation at a time.
        while let Some(action) = sub.poll_action() {
            match action {
                SubAction::Fetch { after, max } => {
                    // Mark the signal seen before fetching, so an append racing with the
                    // fetch still wakes us.
                    wake.borrow_and_update();
                    match shared.store.fetch(&req.recipient_id, after, max).await {
                        Ok(b) => {
                            batch = b;
                            sub.on_fetched(batch.iter().map(|e| e.seq));
                        }
                        Err(e) => sub.on_store_failed(e),
                    }
                }
                SubAction::CountHeld => {
                    let held = shared.store.pending(&req.recipient_id).await.unwrap_or(0);
                    sub.on_held(held, std::time::Instant::now());
                }
                SubAction::Deliver { count } => {
                    let batch = &batch[..count];
                    let t0 = std::time::Instant::now();
                    let mut frames = seal_deliveries(
                        &shared.engine,
                        &req.recipient_id,
                        &keys.deliver,
                        batch,
                        &mut rng,
                    );
                    metrics::histogram!(crate::metrics::BATCH_SEAL)
                        .record(t0.elapsed().as_secs_f64());
                    metrics::counter!(crate::metrics::DELIVERIES).increment(batch.len() as u64);
                    metrics::counter!(crate::metrics::BYTES_OUT)
                        .increment(frames.iter().map(|f| f.len() as u64).sum());
                    if send.write_all_chunks(&mut frames).await.is_err() {
                        sub.on_stream_closed();
                    }
                }
                SubAction::DeleteUpTo(seq) => {
                    match shared.store.ack(&req.recipient_id, seq).await {
                        Ok(_) => {
                            metrics::counter!(crate::metrics::ACKS).increment(1);
                            sub.on_deleted(seq);
                        }
                        Err(e) => sub.on_store_failed(e),
                    }
                }
                SubAction::End(ending) => break 'serve ending,
            }
        }
        let stall = sub.poll_timeout();
        tokio::select! {
            _ = sleep_until(stall), if stall.is_some() => {
                sub.handle_timeout(std::time::Instant::now());
            }
            msg = rx.recv() => match msg {
                Some(FromPeer::Ack(seq)) => {
                    sub.on_ack(seq);
                    // ACKs are cumulative: take every one already queued before acting, one
                    // store write for many ACK frames.
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            FromPeer::Ack(s) => sub.on_ack(s),
                            other => {
                                from_peer_end(&mut sub, other);
                                break;
                            }
                        }
                    }
                }
                Some(other) => from_peer_end(&mut sub, other),
                None => sub.on_stream_closed(),
            },
            changed = wake.changed() => match changed {
                Ok(()) => sub.on_wake(),
                Err(_) => sub.on_mailbox_deleted(),
            },
            k = &mut kicked => match k {
                Ok(Kick::Deleted) => sub.on_mailbox_deleted(),
                _ => sub.on_replaced(),
            },
            ended = claim_ended(&mut claim) => match ended {
                Some(ClaimEnd::Replaced) => sub.on_replaced(),
                Some(ClaimEnd::Deleted) => sub.on_mailbox_deleted(),
                // The store let go of the signal without ending the claim (it is going
                // away): nothing more will come from it.
                None => claim = None,
            },
            _ = shutdown.changed() => sub.on_shutdown(),
        }
    };
    ack_reader.abort();
    match ending {
        Ending::Error(code, msg) => refuse(&mut send, None, code, msg).await,
        Ending::Finish => {
            let _ = send.finish();
        }
        Ending::Abandon => {}
    }
}

/// The mailbox's wake-up signal, and its one subscription claimed for this subscriber: across
/// the relays sharing the store (the store's claim), while the relay's registry keeps one per
/// mailbox on this relay (the only rule for a store no other relay uses). Otherwise the ERROR
/// to send.
async fn hold(
    shared: &Shared,
    recipient_id: &sealpost_core::RecipientId,
) -> Result<(watch::Receiver<u64>, Option<SubscriberClaim>), (ErrorCode, String)> {
    let deleted = || (ErrorCode::UnknownMailbox, "mailbox was deleted".to_owned());
    let wake = shared.store.watch(recipient_id).ok_or_else(deleted)?;
    match shared.store.claim_subscriber(recipient_id).await {
        Ok(Claim::Held(c)) => Ok((wake, Some(c))),
        Ok(Claim::Unshared) => Ok((wake, None)),
        Ok(Claim::UnknownMailbox) => Err(deleted()),
        Err(e) => Err((ErrorCode::Unavailable, format!("store unavailable: {e}"))),
    }
}

/// Sleeps until `deadline`; only polled when there is one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Waits until the claim ends (a newer subscription on some relay, or the mailbox deleted
/// through some relay) or the store drops the signal (`None`); never returns without a claim.
async fn claim_ended(claim: &mut Option<SubscriberClaim>) -> Option<ClaimEnd> {
    match claim {
        Some(c) => c
            .kicked
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|k| *k),
        None => std::future::pending().await,
    }
}

/// A message from the ACK reader that ends the subscription.
fn from_peer_end(sub: &mut Subscription, msg: FromPeer) {
    match msg {
        FromPeer::Refuse(code, msg) => sub.on_peer_error(code, msg),
        FromPeer::Closed => sub.on_stream_closed(),
        // Not an ending; the caller handles ACKs.
        FromPeer::Ack(seq) => sub.on_ack(seq),
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
