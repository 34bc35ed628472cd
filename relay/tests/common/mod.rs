//! Shared set-up for the relay's integration tests: a relay on a free loopback port over the
//! memory store, and helpers that speak raw frames.
#![allow(dead_code)]

pub mod admin;
pub mod process;
pub mod valkey;

use bytes::{Bytes, BytesMut};
use sealpost_client::{Client, ClientError, Mailbox, Subscription};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::frame::{Frame, FrameDecoder, FrameType};
use sealpost_core::msg::ErrorMsg;
use sealpost_core::status::ErrorCode;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{RelayConfig, RelayHandle, RelayLimits};
use std::sync::Arc;
use std::time::Duration;

pub struct TestRelay {
    pub handle: RelayHandle,
    pub addr: String,
    _dir: tempfile::TempDir,
}

pub async fn relay_with(limits: RelayLimits) -> TestRelay {
    let dir = tempfile::tempdir().expect("temp dir");
    let quotas = limits.quotas();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    cfg.limits = limits;
    let handle = sealpost_relay::start(cfg, Arc::new(MemoryStore::new(quotas)))
        .await
        .expect("relay starts");
    let addr = handle.local_addr().to_string();
    TestRelay {
        handle,
        addr,
        _dir: dir,
    }
}

pub async fn relay() -> TestRelay {
    relay_with(RelayLimits::default()).await
}

impl TestRelay {
    pub async fn client(&self) -> Client {
        Client::connect_pinned(&self.addr, self.handle.pin())
            .await
            .expect("client connects")
    }

    /// A full create → deposit → subscribe → open → ack round trip on fresh connections: the
    /// relay still serves a well-behaved client.
    pub async fn assert_serves(&self) {
        let c = self.client().await;
        let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
        let env = seal(&c, &mb, b"still serving").await;
        assert!(c.deposit(env).await.expect("deposit").is_success());
        let mut sub = c.subscribe(&mb.access(), 8).await.expect("subscribe");
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivery in time")
            .expect("delivery ok")
            .expect("a delivery");
        assert_eq!(&mb.open(&d).expect("opens")[..], b"still serving");
        sub.ack(d.seq).await.expect("ack");
    }
}

pub async fn seal(c: &Client, mb: &Mailbox, content: &[u8]) -> Bytes {
    let _ = c;
    e2e::seal_for_invitation(
        &sealpost_core::engine::Engine::ring(),
        &mb.invitation(),
        &mb.sizes,
        content,
    )
    .expect("seal")
}

/// Finishes a subscription from the client side and reads until the relay ends its side.
/// The relay applies every ACK it read before the FIN, then finishes: once this returns, the
/// acknowledged envelopes are deleted, with no sleep to guess how long that takes.
/// Deliveries still arriving are read and dropped.
pub async fn end_subscription(sub: &mut Subscription) {
    sub.finish();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return,
            Ok(Err(e)) => panic!("subscription ended with {e}"),
            Err(_) => panic!("relay did not end the subscription in time"),
        }
    }
}

/// Opens a raw stream, writes `bytes`, optionally finishes, and returns the frames the relay
/// answers with until it ends the stream.
pub async fn raw_exchange(c: &Client, bytes: &[u8], finish: bool) -> Vec<Frame> {
    let (mut send, mut recv) = c.connection().open_bi().await.expect("open stream");
    send.write_all(bytes).await.expect("write");
    if finish {
        let _ = send.finish();
    }
    let mut dec = FrameDecoder::new(1 << 20);
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(usize::MAX, true)).await
        {
            Ok(Ok(Some(ch))) => {
                dec.push(ch.bytes);
                while let Some(f) = dec.next_frame().expect("relay frames are valid") {
                    out.push(f);
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("relay did not end the stream in time"),
        }
    }
    out
}

pub fn error_code(f: &Frame) -> ErrorCode {
    assert_eq!(f.ty, FrameType::Error, "expected an ERROR frame");
    ErrorMsg::decode(&f.payload)
        .unwrap()
        .known_code()
        .expect("known code")
}

pub fn relay_error(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Relay(m) => m.known_code().expect("known code"),
        other => panic!("expected a relay ERROR, got {other}"),
    }
}

pub fn frame(ty: FrameType, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    sealpost_core::frame::encode(ty, payload, &mut b);
    b.freeze()
}
