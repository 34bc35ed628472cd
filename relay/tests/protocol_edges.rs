//! The corners of docs/PROTOCOL.md that a client written from the text alone would ask
//! about: what the relay does with extra frames after a one-shot reply, an empty stream, a
//! known frame cut off by FIN, an ACK before any delivery, an unknown suite in CREATE, and
//! which application code its STOP_SENDING carries. Each is stated in the text (§2, §4) and
//! checked here.

mod common;

use common::*;
use sealpost_core::Suite;
use sealpost_core::frame::{FrameDecoder, FrameType};
use sealpost_core::status::{DepositStatus, ErrorCode};
use std::time::Duration;

/// Writes `bytes` on a new stream without finishing it, reads the relay's frames until it
/// finishes its side, and returns them with the code of the relay's STOP_SENDING (if any).
async fn exchange_unfinished(
    c: &sealpost_client::Client,
    bytes: &[u8],
) -> (Vec<sealpost_core::frame::Frame>, Option<u64>) {
    let (mut send, mut recv) = c.connection().open_bi().await.expect("open stream");
    send.write_all(bytes).await.expect("write");
    let mut dec = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(1 << 20, true))
            .await
            .expect("the relay ends its side in time")
            .expect("read")
    {
        dec.push(chunk.bytes);
        while let Some(f) = dec.next_frame().expect("relay frames are valid") {
            frames.push(f);
        }
    }
    let stopped = tokio::time::timeout(Duration::from_secs(5), send.stopped())
        .await
        .expect("the relay stops reading in time")
        .expect("stream state");
    (frames, stopped.map(|code| code.into_inner()))
}

#[tokio::test]
async fn frames_after_a_one_shot_reply_are_not_read_and_reading_stops_with_code_0() {
    let r = relay().await;
    let c = r.client().await;
    let mut raw = frame(FrameType::Info, &[]).to_vec();
    raw.extend_from_slice(&frame(FrameType::Info, &[]));
    raw.extend_from_slice(&frame(FrameType::Ack, &1u64.to_be_bytes()));
    let (frames, stopped) = exchange_unfinished(&c, &raw).await;
    // One reply for the first frame; the rest is neither answered nor an error.
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].ty, FrameType::InfoReply);
    assert_eq!(stopped, Some(0));
    r.assert_serves().await;
}

#[tokio::test]
async fn an_error_stops_reading_with_code_0() {
    let r = relay().await;
    let c = r.client().await;
    let (frames, stopped) = exchange_unfinished(&c, &frame(FrameType::Ack, &[0; 8])).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::UnexpectedFrame);
    assert_eq!(stopped, Some(0));
}

#[tokio::test]
async fn an_empty_stream_is_finished_without_a_frame() {
    let r = relay().await;
    let c = r.client().await;
    let frames = raw_exchange(&c, &[], true).await;
    assert!(frames.is_empty(), "{frames:?}");
    r.assert_serves().await;
}

#[tokio::test]
async fn a_known_frame_cut_off_by_fin_is_truncated_whatever_its_type() {
    let r = relay().await;
    let c = r.client().await;
    // A CREATED (relay-to-client type) announced with 10 bytes, 3 sent, then FIN: the frame
    // never completes, so its type is never judged.
    let raw = [0, 0, 0, 10, FrameType::Created as u8, 1, 2, 3];
    let frames = raw_exchange(&c, &raw, true).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::Truncated);
    // Only the length prefix, then FIN.
    let frames = raw_exchange(&c, &[0, 0, 0, 10], true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::Truncated);
    r.assert_serves().await;
}

#[tokio::test]
async fn ack_before_any_delivery() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
    // ACK 0 acknowledges nothing and is ignored: the subscription carries on.
    let mut sub = c.subscribe(&mb.access(), 8).await.expect("subscribe");
    sub.ack(0).await.expect("ack");
    let env = seal(&c, &mb, b"after ack 0").await;
    assert_eq!(c.deposit(env).await.expect("deposit"), DepositStatus::Ok);
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered in time")
        .expect("delivery")
        .expect("not ended");
    assert_eq!(d.seq, 1);
    end_subscription(&mut sub).await;

    // On a new subscription nothing is delivered yet (the envelope above is acknowledged
    // below first); ACK 1 is then beyond the last delivered seq on this stream: BAD_ACK.
    let mut sub = c.subscribe(&mb.access(), 8).await.expect("subscribe");
    let again = sub.next().await.expect("redelivery").expect("not ended");
    sub.ack(again.seq).await.expect("ack");
    end_subscription(&mut sub).await;
    let mut sub = c.subscribe(&mb.access(), 8).await.expect("subscribe");
    assert_eq!(sub.pending_at_start(), 0);
    sub.ack(1).await.expect("ack");
    let err = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("ended in time")
        .expect_err("BAD_ACK");
    assert_eq!(relay_error(err), ErrorCode::BadAck);
    r.assert_serves().await;
}

#[tokio::test]
async fn an_unknown_suite_is_unsupported_in_create_as_in_deposit() {
    let r = relay().await;
    let c = r.client().await;
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[7; 64]);
    let frames = raw_exchange(&c, &frame(FrameType::Create, &payload), true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::Unsupported);
    // The envelope's suite byte: the same number, the same answer (a status).
    let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
    let mut env = seal(&c, &mb, b"x").await.to_vec();
    env[1] = 3;
    assert_eq!(
        c.deposit(env.into()).await.expect("answered"),
        DepositStatus::Unsupported
    );
    r.assert_serves().await;
}

#[tokio::test]
async fn a_client_reset_ends_the_request_without_an_answer() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
    let env = seal(&c, &mb, b"reset").await;
    let (mut send, mut recv) = c.connection().open_bi().await.expect("open stream");
    let raw = frame(FrameType::Deposit, &env);
    // Half a DEPOSIT frame, then RESET_STREAM with an arbitrary code.
    send.write_all(&raw[..raw.len() / 2]).await.expect("write");
    send.reset(7u32.into()).expect("reset");
    let end = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .expect("the relay ends its side in time");
    // No frame: the relay finishes (or the read sees the stream end) with nothing in it.
    if let Ok(bytes) = end {
        assert!(bytes.is_empty(), "{bytes:?}");
    }
    // The envelope was never complete, so it is not stored; resent, it is OK (not DUPLICATE).
    assert_eq!(c.deposit(env).await.expect("deposit"), DepositStatus::Ok);
    r.assert_serves().await;
}
