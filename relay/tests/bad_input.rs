//! One test per kind of bad input: each checks the exact status or ERROR code, and that the
//! relay still serves a well-behaved client afterwards.

mod common;

use bytes::BytesMut;
use common::*;
use sealpost_core::engine::Engine;
use sealpost_core::envelope;
use sealpost_core::frame::FrameType;
use sealpost_core::keys::{EXPORTER_LABEL, ProofPurpose};
use sealpost_core::msg::{Subscribe, decode_deposit_result};
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_core::{AeadKey, Suite};
use sealpost_relay::RelayLimits;
use std::time::Duration;

#[tokio::test]
async fn forged_tag_is_bad_tag() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let mut env = seal(&c, &mb, b"x").await.to_vec();
    let last = env.len() - 1;
    env[last] ^= 0x01;
    assert_eq!(c.deposit(env.into()).await.unwrap(), DepositStatus::BadTag);
    // A forgery with the wrong key entirely.
    let wrong = AeadKey::new(Suite::ChaCha20Poly1305, [9; 32]);
    let forged = envelope::build(&Engine::ring(), &wrong, &mb.deposit_id, &[1; 12], &[0; 256]);
    assert_eq!(c.deposit(forged).await.unwrap(), DepositStatus::BadTag);
    r.assert_serves().await;
}

#[tokio::test]
async fn wrong_body_size_is_bad_size() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = envelope::build(
        &Engine::ring(),
        &mb.deposit_key,
        &mb.deposit_id,
        &[1; 12],
        &[0; 300],
    );
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::BadSize);
    r.assert_serves().await;
}

#[tokio::test]
async fn unknown_mailbox_is_reported() {
    let r = relay().await;
    let c = r.client().await;
    let key = AeadKey::new(Suite::ChaCha20Poly1305, [3; 32]);
    let env = envelope::build(&Engine::ring(), &key, &[0xEE; 16], &[1; 12], &[0; 256]);
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::UnknownMailbox);
    r.assert_serves().await;
}

#[tokio::test]
async fn malformed_and_unsupported_envelopes() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let good = seal(&c, &mb, b"x").await;
    let mut reserved = good.to_vec();
    reserved[2] = 1;
    let mut version = good.to_vec();
    version[0] = 7;
    let mut suite = good.to_vec();
    suite[1] = 2; // AES in a ChaCha mailbox
    let (mut tx, mut rx) = c.open_deposit().await.unwrap();
    for e in [
        &reserved,
        &version,
        &suite,
        &good[..40].to_vec(),
        &good.to_vec(),
    ] {
        tx.send(&bytes::Bytes::copy_from_slice(e)).await.unwrap();
    }
    tx.finish();
    let mut all = Vec::new();
    while let Some(b) = rx.next().await.unwrap() {
        all.extend(b);
    }
    use DepositStatus::*;
    assert_eq!(
        all,
        vec![Malformed, Unsupported, Unsupported, Malformed, Ok]
    );
    r.assert_serves().await;
}

#[tokio::test]
async fn quota_exceeded_is_mailbox_full() {
    let r = relay_with(RelayLimits {
        max_envelopes: 3,
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let mut got = Vec::new();
    for i in 0..4u8 {
        let env = seal(&c, &mb, &[i]).await;
        got.push(c.deposit(env).await.unwrap());
    }
    use DepositStatus::*;
    assert_eq!(got, vec![Ok, Ok, Ok, MailboxFull]);
    // Byte quota too.
    let r2 = relay_with(RelayLimits {
        max_bytes: 2 * (256 + envelope::OVERHEAD as u64),
        ..RelayLimits::default()
    })
    .await;
    let c2 = r2.client().await;
    let mb2 = c2.create(Suite::ChaCha20Poly1305).await.unwrap();
    let mut got = Vec::new();
    for i in 0..3u8 {
        got.push(c2.deposit(seal(&c2, &mb2, &[i]).await).await.unwrap());
    }
    assert_eq!(got, vec![Ok, Ok, MailboxFull]);
    r.assert_serves().await;
}

#[tokio::test]
async fn truncated_frame_is_reported() {
    let r = relay().await;
    let c = r.client().await;
    // Announce 100 bytes of DEPOSIT, send 10, end the stream.
    let mut raw = vec![0, 0, 0, 100, FrameType::Deposit as u8];
    raw.extend_from_slice(&[0; 9]);
    let frames = raw_exchange(&c, &raw, true).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::Truncated);
    r.assert_serves().await;
}

#[tokio::test]
async fn truncated_frame_after_good_deposits_answers_those_first() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = seal(&c, &mb, b"x").await;
    let mut raw = frame(FrameType::Deposit, &env).to_vec();
    raw.extend_from_slice(&[0, 0, 1, 0, FrameType::Deposit as u8, 1, 2, 3]);
    let frames = raw_exchange(&c, &raw, true).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].ty, FrameType::DepositResult);
    assert_eq!(
        decode_deposit_result(&frames[0].payload).unwrap().statuses,
        vec![DepositStatus::Ok]
    );
    assert_eq!(error_code(&frames[1]), ErrorCode::Truncated);
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_without_allocation() {
    let r = relay().await;
    let c = r.client().await;
    let frames = raw_exchange(
        &c,
        &[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Deposit as u8],
        false,
    )
    .await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::FrameTooLarge);
    // Just over the limit on a deposit stream, after a valid first frame.
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = seal(&c, &mb, b"x").await;
    let mut raw = frame(FrameType::Deposit, &env).to_vec();
    let limit = (1 + envelope::OVERHEAD + 65536) as u32;
    raw.extend_from_slice(&(limit + 1).to_be_bytes());
    raw.push(FrameType::Deposit as u8);
    let frames = raw_exchange(&c, &raw, false).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(
        decode_deposit_result(&frames[0].payload).unwrap().statuses,
        vec![DepositStatus::Ok]
    );
    assert_eq!(error_code(&frames[1]), ErrorCode::FrameTooLarge);
    r.assert_serves().await;
}

#[tokio::test]
async fn unknown_frame_type_is_refused() {
    let r = relay().await;
    let c = r.client().await;
    let frames = raw_exchange(&c, &[0, 0, 0, 3, 0x77, 1, 2], false).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::UnknownFrameType);
    r.assert_serves().await;
}

#[tokio::test]
async fn known_frame_in_the_wrong_place_is_unexpected() {
    let r = relay().await;
    let c = r.client().await;
    // A stream may not start with ACK.
    let frames = raw_exchange(&c, &frame(FrameType::Ack, &5u64.to_be_bytes()), true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::UnexpectedFrame);
    // A deposit stream may not carry INFO.
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = seal(&c, &mb, b"x").await;
    let mut raw = frame(FrameType::Deposit, &env).to_vec();
    raw.extend_from_slice(&frame(FrameType::Info, &[]));
    let frames = raw_exchange(&c, &raw, true).await;
    assert_eq!(
        decode_deposit_result(&frames[0].payload).unwrap().statuses,
        vec![DepositStatus::Ok]
    );
    assert_eq!(error_code(&frames[1]), ErrorCode::UnexpectedFrame);
    r.assert_serves().await;
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let r = relay().await;
    let c = r.client().await;
    // Someone speaking HTTP at the relay: "GET " as a length prefix is far over the limit.
    let frames = raw_exchange(&c, b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n", true).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::FrameTooLarge);
    // A well-formed frame of a control type with a garbage payload.
    let frames = raw_exchange(&c, &frame(FrameType::Create, b"garbage"), true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::MalformedFrame);
    let frames = raw_exchange(&c, &frame(FrameType::Subscribe, &[0xAB; 51]), true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::MalformedFrame);
    // A zero length prefix.
    let frames = raw_exchange(&c, &[0, 0, 0, 0], true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::MalformedFrame);
    r.assert_serves().await;
}

#[tokio::test]
async fn wrong_subscribe_proof_is_bad_proof() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let req = Subscribe {
        recipient_id: mb.recipient_id,
        proof: [0x42; 32],
        window: 8,
    };
    let mut p = BytesMut::new();
    req.encode(&mut p);
    let frames = raw_exchange(&c, &frame(FrameType::Subscribe, &p), false).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadProof);
    // A delete with a wrong proof is refused the same way, and the mailbox survives.
    let mut p = BytesMut::new();
    p.extend_from_slice(&mb.recipient_id);
    p.extend_from_slice(&[0x42; 32]);
    let frames = raw_exchange(&c, &frame(FrameType::Delete, &p), true).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadProof);
    let env = seal(&c, &mb, b"x").await;
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    r.assert_serves().await;
}

#[tokio::test]
async fn proof_replayed_from_another_connection_is_refused() {
    let r = relay().await;
    let a = r.client().await;
    let b = r.client().await;
    let mb = a.create(Suite::ChaCha20Poly1305).await.unwrap();
    let access = mb.access();
    // A valid proof for connection A...
    let mut exp_a = [0u8; 32];
    a.connection()
        .export_keying_material(&mut exp_a, EXPORTER_LABEL, b"")
        .unwrap();
    let proof = access
        .keys
        .auth
        .proof(ProofPurpose::Subscribe, &mb.recipient_id, &exp_a);
    let mut p = BytesMut::new();
    Subscribe {
        recipient_id: mb.recipient_id,
        proof,
        window: 8,
    }
    .encode(&mut p);
    // ...replayed on connection B.
    let frames = raw_exchange(&b, &frame(FrameType::Subscribe, &p), false).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadProof);
    // And it does work on A, where it belongs.
    let (mut send, mut recv) = a.connection().open_bi().await.unwrap();
    send.write_all(&frame(FrameType::Subscribe, &p))
        .await
        .unwrap();
    let ch = tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(usize::MAX, true))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ch.bytes[4], FrameType::Subscribed as u8);
    r.assert_serves().await;
}

#[tokio::test]
async fn ack_beyond_delivered_is_bad_ack() {
    let r = relay().await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    c.deposit(seal(&c, &mb, b"x").await).await.unwrap();
    let mut sub = c.subscribe(&mb.access(), 8).await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    sub.ack(d.seq + 10).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(relay_error(err), ErrorCode::BadAck);
    r.assert_serves().await;
}

#[tokio::test]
async fn unsupported_suite_on_create_is_refused() {
    let r = relay_with(RelayLimits {
        suites: vec![Suite::ChaCha20Poly1305],
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    let err = c.create(Suite::Aes256Gcm).await.err().unwrap();
    assert_eq!(relay_error(err), ErrorCode::Unsupported);
    r.assert_serves().await;
}

#[tokio::test]
async fn mailbox_limit_is_limit_reached() {
    let r = relay_with(RelayLimits {
        max_mailboxes: 2,
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    c.create(Suite::ChaCha20Poly1305).await.unwrap();
    c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let err = c.create(Suite::ChaCha20Poly1305).await.err().unwrap();
    assert_eq!(relay_error(err), ErrorCode::LimitReached);
}

#[tokio::test]
async fn streams_per_connection_are_capped_by_quic() {
    let r = relay_with(RelayLimits {
        max_streams: 4,
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    // The QUIC credit granted: max_streams plus what quinn may withhold from its updates.
    let granted = sealpost_relay::stream_credit(4);
    assert_eq!(granted, 5);
    let mut held = Vec::new();
    for _ in 0..granted {
        let (mut s, r) = c.connection().open_bi().await.unwrap();
        s.write_all(&[0]).await.unwrap(); // make the stream exist on the relay
        held.push((s, r));
    }
    let next = tokio::time::timeout(Duration::from_millis(500), c.connection().open_bi()).await;
    assert!(
        next.is_err(),
        "a stream beyond the credit granted must wait for credit"
    );
    // Streams that send nothing are closed by the first-frame deadline or when dropped; the
    // relay serves other connections meanwhile.
    r.assert_serves().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let r = relay_with(RelayLimits {
        idle_timeout: Duration::from_millis(500),
        ..RelayLimits::default()
    })
    .await;
    // The library client sends keep-alives every 10 s, far beyond the relay's 0.5 s idle
    // timeout (QUIC uses the smaller of the two sides' values), so the connection goes idle.
    let c = r.client().await;
    let conn = c.connection().clone();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(
        matches!(closed, Ok(quinn::ConnectionError::TimedOut)),
        "{closed:?}"
    );
    r.assert_serves().await;
}
