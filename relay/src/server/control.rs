//! One-shot request streams: CREATE, DELETE and INFO. Each gets one reply and the stream ends.

use super::Shared;
use super::limits::SourceKey;
use super::subscribe::authorize;
use crate::store::{MailboxRecord, StoreError};
use crate::stream::refuse;
use quinn::{Connection, SendStream};
use sealpost_client::stream::FrameReader;
use sealpost_core::frame::{Frame, FrameType};
use sealpost_core::keys::{ProofPurpose, RecipientSecret};
use sealpost_core::msg::{Create, Created, Delete, INFO_WANTS_FORWARD_KEY, InfoReply, frame_with};
use sealpost_core::status::ErrorCode;
use std::sync::Arc;

/// The software version the relay reports in INFO_REPLY.
pub const VERSION: &str = concat!("sealpost-relay ", env!("CARGO_PKG_VERSION"));

async fn reply(send: &mut SendStream, frame: bytes::Bytes) {
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

pub(super) async fn create(
    shared: &Arc<Shared>,
    source: std::net::IpAddr,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let req = match Create::decode(&first.payload) {
        Ok(r) => r,
        Err(e) => return refuse(&mut send, Some(&mut reader), e.code(), e.to_string()).await,
    };
    if !shared.limits.suites.contains(&req.suite) {
        let msg = format!(
            "this relay does not accept suite {} for new mailboxes",
            req.suite
        );
        return refuse(&mut send, Some(&mut reader), ErrorCode::Unsupported, msg).await;
    }
    // Only a request the relay would carry out spends the source's allowance.
    let allowed = {
        let mut creates = shared.creates.lock().unwrap_or_else(|p| p.into_inner());
        creates.try_take(SourceKey::of(source), std::time::Instant::now())
    };
    if let Err(wait) = allowed {
        metrics::counter!(crate::metrics::CREATES_RATE_LIMITED).increment(1);
        let msg = format!(
            "this address creates mailboxes faster than {} a second; retry in {} ms",
            shared.limits.source_create_rate.per_sec,
            wait.as_millis().max(1)
        );
        return refuse(&mut send, Some(&mut reader), ErrorCode::RateLimited, msg).await;
    }
    // The recipient id comes from the OS CSPRNG and the store derives the deposit id from it
    // (a keyed PRF); retry on the (astronomically unlikely) collision.
    for _ in 0..3 {
        let Ok(recipient_id) = sealpost_core::random::array() else {
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::Unavailable,
                "random source failed",
            )
            .await;
        };
        let deposit_id = shared.store.deposit_id_for(&recipient_id);
        let record = MailboxRecord::new(
            recipient_id,
            deposit_id,
            req.suite,
            req.deposit_key,
            RecipientSecret(req.recipient_secret),
        );
        match shared.store.create_mailbox(record).await {
            Ok(()) => {
                let created = Created {
                    recipient_id,
                    deposit_id,
                    limits: shared.limits.wire(),
                };
                return reply(
                    &mut send,
                    frame_with(FrameType::Created, |b| created.encode(b)),
                )
                .await;
            }
            Err(StoreError::Exists) => continue,
            Err(StoreError::StorageFull { .. }) => {
                return refuse(
                    &mut send,
                    Some(&mut reader),
                    ErrorCode::StorageFull,
                    "the relay's disk is nearly full: it accepts no new mailboxes now; retry later",
                )
                .await;
            }
            Err(e @ StoreError::TooManyMailboxes(_)) => {
                return refuse(
                    &mut send,
                    Some(&mut reader),
                    ErrorCode::LimitReached,
                    e.to_string(),
                )
                .await;
            }
            Err(e) => {
                return refuse(
                    &mut send,
                    Some(&mut reader),
                    ErrorCode::Unavailable,
                    format!("store unavailable: {e}"),
                )
                .await;
            }
        }
    }
    refuse(
        &mut send,
        Some(&mut reader),
        ErrorCode::Unavailable,
        "could not allocate mailbox ids",
    )
    .await
}

pub(super) async fn delete(
    shared: &Arc<Shared>,
    conn: &Connection,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let req = match Delete::decode(&first.payload) {
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
    if let Err((code, msg)) = authorize(
        shared,
        conn,
        &req.recipient_id,
        &req.proof,
        ProofPurpose::Delete,
    )
    .await
    {
        return refuse(&mut send, Some(&mut reader), code, msg).await;
    }
    match shared.store.delete_mailbox(&req.recipient_id).await {
        Ok(_) => {
            shared.subscribers.kick_deleted(&req.recipient_id);
            reply(&mut send, frame_with(FrameType::Deleted, |_| {})).await
        }
        Err(e) => {
            refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::Unavailable,
                format!("store unavailable: {e}"),
            )
            .await
        }
    }
}

pub(super) async fn info(
    shared: &Arc<Shared>,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let info = info_reply(shared);
    let frame = match &first.payload[..] {
        [] => frame_with(FrameType::InfoReply, |b| info.encode(b)),
        // The extended reply, with the forwarding key: only to those that ask, since a
        // reader that predates it refuses the longer payload.
        [INFO_WANTS_FORWARD_KEY] => frame_with(FrameType::InfoReply, |b| {
            info.encode_with_forward_key(&shared.forward_key.public(), b)
        }),
        other => {
            let msg = format!(
                "INFO carries no payload, or the byte 1 to ask for the forwarding key; got {} bytes",
                other.len()
            );
            return refuse(&mut send, Some(&mut reader), ErrorCode::MalformedFrame, msg).await;
        }
    };
    reply(&mut send, frame).await
}

/// The relay's INFO_REPLY fields.
pub(super) fn info_reply(shared: &Shared) -> InfoReply {
    InfoReply {
        version: VERSION.to_owned(),
        suites: shared.limits.suites.clone(),
        limits: shared.limits.wire(),
    }
}
