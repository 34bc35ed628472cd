//! FORWARD streams, at the forwarding relay: a sender names a destination relay and hands
//! over a request sealed to that relay's forwarding key. The relay checks only what it can
//! see (forwarding on, the destination allowed, the source's forwarding rate), passes the
//! sealed bytes on as FORWARDED over its pooled connection to the destination, and hands the
//! destination's answer back unopened: it learns the sender's address, the destination and
//! the size class, never the mailbox, the contents or the statuses.

use super::limits::SourceKey;
use super::{Peer, Shared};
use crate::forward::pool::PoolError;
use crate::stream::refuse;
use quinn::SendStream;
use sealpost_client::stream::FrameReader;
use sealpost_core::forward::Forward;
use sealpost_core::frame::{Frame, FrameType};
use sealpost_core::msg::frame_with;
use sealpost_core::status::ErrorCode;
use std::sync::Arc;

fn count(result: &'static str) {
    metrics::counter!(crate::metrics::FORWARDS, "result" => result).increment(1);
}

pub(super) async fn run(
    shared: &Arc<Shared>,
    peer: &Peer,
    first: Frame,
    mut reader: FrameReader,
    mut send: SendStream,
) {
    let Some(pool) = shared.pool.as_ref() else {
        count("refused");
        return refuse(
            &mut send,
            Some(&mut reader),
            ErrorCode::ForwardRefused,
            "this relay does not forward requests to other relays (forwarding is off); deposit \
             directly, or through a relay that forwards",
        )
        .await;
    };
    let req = match Forward::decode(first.payload) {
        Ok(r) => r,
        Err(e) => {
            count("malformed");
            peer.charge_faults(1, std::time::Instant::now());
            return refuse(&mut send, Some(&mut reader), e.code(), e.to_string()).await;
        }
    };
    let allow = &shared.forward.allow;
    if !allow.is_empty() && !allow.contains(&req.destination) {
        count("refused");
        let msg = format!(
            "this relay forwards only to its allow-list, which does not name {}",
            req.destination
        );
        return refuse(&mut send, Some(&mut reader), ErrorCode::ForwardRefused, msg).await;
    }
    let source = peer.conn.remote_address().ip();
    let allowed = {
        let mut forwards = shared.forwards.lock().unwrap_or_else(|p| p.into_inner());
        forwards.try_take(SourceKey::of(source), std::time::Instant::now())
    };
    if let Err(wait) = allowed {
        count("rate_limited");
        let msg = format!(
            "this address forwards faster than {} requests a second; retry in {} ms",
            shared.forward.source_rate.per_sec,
            wait.as_millis().max(1)
        );
        return refuse(&mut send, Some(&mut reader), ErrorCode::RateLimited, msg).await;
    }
    let onward = frame_with(FrameType::Forwarded, |b| req.sealed.encode(b));
    // A destination the operator named may be anywhere; any other only on the internet.
    let any_address = shared.forward.private_destinations || !allow.is_empty();
    let answer = tokio::time::timeout(
        shared.forward.timeout,
        pool.ask(&req.destination, onward, any_address),
    )
    .await;
    let why = match answer {
        Ok(Ok(f)) if matches!(f.ty, FrameType::ForwardResult | FrameType::Error) => {
            // The sealed answer, or the destination's refusal of the sealed request as a
            // whole (BAD_SEAL, RATE_LIMITED, SHUTTING_DOWN, ...), which says nothing about
            // the mailbox: passed on as it came.
            count(if f.ty == FrameType::Error {
                "destination_error"
            } else {
                "answered"
            });
            let out = sealpost_core::frame::encode_to_bytes(f.ty, &f.payload);
            if send.write_all(&out).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
        Ok(Ok(f)) => format!("the destination answered {:?}, not FORWARD_RESULT", f.ty),
        Ok(Err(e @ PoolError::NotPublic(..))) => {
            count("refused");
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::ForwardRefused,
                e.to_string(),
            )
            .await;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "no answer from the destination within {} s",
            shared.forward.timeout.as_secs_f64()
        ),
    };
    count("unreachable");
    let msg =
        format!("{why}; retry later (a deposit that arrived meanwhile is answered DUPLICATE)");
    refuse(&mut send, Some(&mut reader), ErrorCode::Unreachable, msg).await
}
