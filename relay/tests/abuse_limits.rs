//! The abuse limits, each against a relay configured tightly enough to reach it: connections
//! per source address and per second, QUIC Retry, deposits per mailbox (RATE_LIMITED with a
//! retry hint), request streams per connection, and the deadline on a begun frame.

mod common;

use common::process::{Serve, http_get};
use common::{error_code, frame, raw_exchange, relay_with, seal};
use sealpost_client::tls::Trust;
use sealpost_client::{Client, ClientError};
use sealpost_core::Suite;
use sealpost_core::frame::FrameType;
use sealpost_core::msg::ErrorMsg;
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_relay::{Rate, RelayLimits, RetryPolicy};
use std::net::SocketAddr;
use std::time::Duration;

fn from(ip: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse().unwrap(), 0))
}

async fn connect_from(addr: &str, pin: [u8; 32], ip: &str) -> Result<Client, ClientError> {
    Client::connect_from(addr, Trust::Pin(pin), from(ip)).await
}

#[tokio::test]
async fn one_source_holds_at_most_its_share_of_connections() {
    let r = relay_with(RelayLimits {
        max_connections_per_source: 2,
        ..RelayLimits::default()
    })
    .await;
    let pin = r.handle.pin();
    let a1 = connect_from(&r.addr, pin, "127.0.0.1")
        .await
        .expect("first");
    let _a2 = connect_from(&r.addr, pin, "127.0.0.1")
        .await
        .expect("second");
    let third = connect_from(&r.addr, pin, "127.0.0.1").await;
    assert!(
        matches!(&third, Err(ClientError::Connect(m)) if m.to_lowercase().contains("refused")),
        "a third connection from the same address is refused: {:?}",
        third.err().map(|e| e.to_string())
    );
    // Another source is not affected.
    let b = connect_from(&r.addr, pin, "127.0.0.2")
        .await
        .expect("another source connects");
    b.info().await.expect("and is served");
    // A closed connection gives its place back.
    a1.close().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = connect_from(&r.addr, pin, "127.0.0.1").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.expect("the place is free again once a connection closed");
}

#[tokio::test]
async fn one_source_opens_connections_at_most_at_its_rate() {
    let r = relay_with(RelayLimits {
        source_connection_rate: Rate::new(1, 2),
        ..RelayLimits::default()
    })
    .await;
    let pin = r.handle.pin();
    for i in 0..2 {
        let c = connect_from(&r.addr, pin, "127.0.0.3")
            .await
            .unwrap_or_else(|e| panic!("connection {i} within the burst: {e}"));
        c.close().await;
    }
    let refused = connect_from(&r.addr, pin, "127.0.0.3").await;
    assert!(refused.is_err(), "the burst is spent");
    connect_from(&r.addr, pin, "127.0.0.4")
        .await
        .expect("another source has its own rate");
}

#[tokio::test]
async fn retry_always_validates_and_still_serves() {
    let r = relay_with(RelayLimits {
        retry: RetryPolicy::Always,
        ..RelayLimits::default()
    })
    .await;
    // quinn's client answers the Retry by itself: the connection costs a round trip more.
    r.assert_serves().await;
}

#[tokio::test]
async fn a_mailbox_over_its_deposit_rate_gets_rate_limited_with_a_hint() {
    let r = relay_with(RelayLimits {
        mailbox_deposit_rate: Rate::new(10, 5),
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
    let other = c.create(Suite::ChaCha20Poly1305).await.expect("create");

    // Forgeries under the mailbox's deposit id do not spend its allowance.
    let (mut tx, mut rx) = c.open_deposit().await.expect("deposit stream");
    for i in 0..20u8 {
        let mut env = seal(&c, &mb, &[i]).await.to_vec();
        let last = env.len() - 1;
        env[last] ^= 1;
        tx.send(&env.into()).await.expect("send");
    }
    tx.finish();
    let mut n = 0;
    while let Some(st) = rx.next().await.expect("results") {
        assert!(st.iter().all(|s| *s == DepositStatus::BadTag), "{st:?}");
        n += st.len();
    }
    assert_eq!(n, 20);

    // Twelve genuine envelopes at once: the burst of five is stored, the rest refused, with
    // a wait until the bucket holds five again (seven refused, at most five fit at once:
    // 500 ms at 10/s).
    let (mut tx, mut rx) = c.open_deposit().await.expect("deposit stream");
    for i in 0..12u8 {
        tx.send(&seal(&c, &mb, &[i]).await).await.expect("send");
    }
    tx.finish();
    let mut statuses = Vec::new();
    let mut hint = None;
    while let Some(st) = rx.next().await.expect("results") {
        if st.contains(&DepositStatus::RateLimited) {
            let h = rx
                .retry_after()
                .expect("a retry hint comes with RATE_LIMITED");
            hint = hint.max(Some(h));
        } else {
            assert_eq!(rx.retry_after(), None, "no hint without RATE_LIMITED");
        }
        statuses.extend(st);
    }
    let ok = statuses.iter().filter(|s| **s == DepositStatus::Ok).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == DepositStatus::RateLimited)
        .count();
    assert_eq!((ok, limited), (5, 7), "{statuses:?}");
    let hint = hint.expect("hint");
    assert!(
        hint > Duration::from_millis(400) && hint <= Duration::from_millis(501),
        "{hint:?}"
    );
    assert!(DepositStatus::RateLimited.is_retryable());

    // Another mailbox has its own bucket.
    assert_eq!(
        c.deposit(seal(&c, &other, b"x").await).await.unwrap(),
        DepositStatus::Ok
    );
    // The client library waits as hinted and sends again until it is accepted.
    let (status, tries) = c
        .deposit_patiently(seal(&c, &mb, b"later").await, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, DepositStatus::Ok, "after {tries} tries");
}

#[tokio::test]
async fn a_connection_opening_streams_too_fast_gets_rate_limited() {
    let r = relay_with(RelayLimits {
        connection_stream_rate: Rate::new(1, 3),
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    for _ in 0..3 {
        c.info().await.expect("within the burst");
    }
    let frames = raw_exchange(&c, &frame(FrameType::Info, &[]), true).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(error_code(&frames[0]), ErrorCode::RateLimited);
    let msg = ErrorMsg::decode(&frames[0].payload).unwrap().message;
    assert!(msg.contains("retry in"), "{msg}");
    // Other connections are not affected.
    r.client().await.info().await.expect("another connection");
}

#[tokio::test]
async fn one_source_creates_mailboxes_at_most_at_its_rate() {
    let r = relay_with(RelayLimits {
        source_create_rate: Rate::new(1, 2),
        ..RelayLimits::default()
    })
    .await;
    let pin = r.handle.pin();
    let a = connect_from(&r.addr, pin, "127.0.0.5").await.unwrap();
    a.create(Suite::ChaCha20Poly1305).await.expect("first");
    a.create(Suite::ChaCha20Poly1305).await.expect("second");
    // A new connection from the same address shares the allowance.
    let a2 = connect_from(&r.addr, pin, "127.0.0.5").await.unwrap();
    let e = a2
        .create(Suite::ChaCha20Poly1305)
        .await
        .expect_err("the burst of two is spent");
    assert!(
        matches!(&e, ClientError::Relay(m) if m.known_code() == Some(ErrorCode::RateLimited)
            && m.message.contains("retry in")),
        "{e}"
    );
    connect_from(&r.addr, pin, "127.0.0.6")
        .await
        .unwrap()
        .create(Suite::ChaCha20Poly1305)
        .await
        .expect("another source has its own allowance");
}

#[tokio::test]
async fn a_frame_trickled_past_the_deadline_is_cut_off() {
    let r = relay_with(RelayLimits {
        frame_timeout: Duration::from_secs(1),
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    // A deposit stream that announces a large frame and then sends almost nothing.
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    let full = frame(FrameType::Deposit, &vec![0u8; 60_000]);
    send.write_all(&full[..5]).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut got = Vec::new();
    let read = async {
        loop {
            // A byte every 200 ms keeps the connection busy but never finishes the frame.
            tokio::select! {
                chunk = recv.read_chunk(usize::MAX, true) => match chunk {
                    Ok(Some(ch)) => got.extend_from_slice(&ch.bytes),
                    _ => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    let _ = send.write_all(&[0]).await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the relay ends the stream");
    let elapsed = t0.elapsed();
    let mut dec = sealpost_core::frame::FrameDecoder::new(1 << 16);
    dec.push(got.into());
    let f = dec.next_frame().unwrap().expect("an ERROR frame");
    assert_eq!(error_code(&f), ErrorCode::Timeout);
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    r.assert_serves().await;
}

/// The same limits set from the command line of the real binary, each counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_counted_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(
        dir.path(),
        &[
            "--store",
            "memory",
            // `auto` with a threshold of 0 handshakes: always under "load", which shows that
            // the automatic switch works (the in-process test covers `always`).
            "--retry",
            "auto",
            "--retry-above-handshakes",
            "0",
            "--max-connections-per-source",
            "1",
            "--mailbox-deposits-per-sec",
            "1",
            "--mailbox-deposit-burst",
            "1",
            "--connection-streams-per-sec",
            "1",
            "--connection-stream-burst",
            "2",
            "--source-creates-per-sec",
            "1",
            "--source-create-burst",
            "1",
        ],
        "warn",
    );
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let c = connect_from(&serve.addr, pin, "127.0.0.1").await.unwrap();
    assert!(
        connect_from(&serve.addr, pin, "127.0.0.1").await.is_err(),
        "a second connection from the source is refused"
    );
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let (mut tx, mut rx) = c.open_deposit().await.unwrap();
    for i in 0..2u8 {
        tx.send(&seal(&c, &mb, &[i]).await).await.unwrap();
    }
    tx.finish();
    let mut statuses = Vec::new();
    while let Some(st) = rx.next().await.unwrap() {
        statuses.extend(st);
    }
    assert_eq!(
        statuses,
        [DepositStatus::Ok, DepositStatus::RateLimited],
        "burst of one"
    );
    let third = c
        .info()
        .await
        .expect_err("the third stream is over the burst");
    assert!(
        matches!(&third, ClientError::Relay(m) if m.known_code() == Some(ErrorCode::RateLimited)),
        "{third}"
    );
    let admin = serve.admin.clone();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(&admin, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{body}"))
    };
    assert!(
        value("sealpost_retries_sent_total") >= 2.0,
        "both connections were validated"
    );
    assert_eq!(
        value("sealpost_connections_refused_total{reason=\"source_connections\"}"),
        1.0
    );
    assert_eq!(
        value("sealpost_deposits_total{status=\"rate_limited\"}"),
        1.0
    );
    assert_eq!(value("sealpost_streams_rate_limited_total"), 1.0);
    assert_eq!(value("sealpost_frame_timeouts_total"), 0.0);
    // The stream allowance is spent; a second connection (after the first closes, since one
    // is allowed per source) tries a second mailbox.
    c.close().await;
    let mut c2 = None;
    for _ in 0..50 {
        if let Ok(c) = connect_from(&serve.addr, pin, "127.0.0.1").await {
            c2 = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c2 = c2.expect("the source's place is free again");
    assert!(c2.create(Suite::ChaCha20Poly1305).await.is_err());
    let admin = serve.admin.clone();
    let (_, body) = tokio::task::spawn_blocking(move || http_get(&admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        body.contains("sealpost_creates_rate_limited_total 1"),
        "{body}"
    );
    serve.stop();
}

/// Sends `frames` on a new stream in pieces that each finish one frame and begin the next,
/// one piece every `every`: no read ever ends on a frame boundary. Returns what the relay
/// answered.
async fn pipeline_across_boundaries(
    c: &Client,
    frames: &[bytes::Bytes],
    every: Duration,
) -> Vec<sealpost_core::frame::Frame> {
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    let mut stream = Vec::new();
    let mut cuts = Vec::new();
    for f in frames {
        cuts.push(stream.len() + f.len() / 2);
        stream.extend_from_slice(f);
    }
    cuts.push(stream.len());
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(ch)) = recv.read_chunk(usize::MAX, true).await {
            got.extend_from_slice(&ch.bytes);
        }
        got
    });
    let mut at = 0;
    for cut in cuts {
        send.write_all(&stream[at..cut]).await.unwrap();
        at = cut;
        tokio::time::sleep(every).await;
    }
    let _ = send.finish();
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the relay answers")
        .unwrap();
    let mut dec = sealpost_core::frame::FrameDecoder::new(1 << 20);
    dec.push(got.into());
    let mut out = Vec::new();
    while let Some(f) = dec.next_frame().unwrap() {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn a_stream_that_keeps_frames_coming_is_never_cut_off() {
    // Each frame arrives within 150 ms, but the stream is mid-frame for well over the 1 s
    // deadline in total: the deadline is per frame.
    let r = relay_with(RelayLimits {
        frame_timeout: Duration::from_secs(1),
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let mut frames = Vec::new();
    for i in 0..12u8 {
        frames.push(frame(FrameType::Deposit, &seal(&c, &mb, &[i]).await));
    }
    let answers = pipeline_across_boundaries(&c, &frames, Duration::from_millis(150)).await;
    let mut statuses = Vec::new();
    for f in &answers {
        assert_eq!(f.ty, FrameType::DepositResult, "no ERROR: {f:?}");
        statuses.extend(
            sealpost_core::msg::decode_deposit_result(&f.payload)
                .unwrap()
                .statuses,
        );
    }
    assert_eq!(statuses, vec![DepositStatus::Ok; 12]);
}

#[tokio::test]
async fn under_memory_pressure_a_trickled_frame_gets_a_second() {
    // Half-received frames may hold only 1000 bytes relay-wide; beyond that a begun frame
    // gets 1 s, not the 30 s configured.
    let r = relay_with(RelayLimits {
        frame_timeout: Duration::from_secs(30),
        partial_frame_budget_bytes: 1000,
        ..RelayLimits::default()
    })
    .await;
    let c = r.client().await;
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    let full = frame(FrameType::Deposit, &vec![0u8; 60_000]);
    send.write_all(&full[..3000]).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut got = Vec::new();
    let read = async {
        loop {
            tokio::select! {
                chunk = recv.read_chunk(usize::MAX, true) => match chunk {
                    Ok(Some(ch)) => got.extend_from_slice(&ch.bytes),
                    _ => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let _ = send.write_all(&[0]).await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the relay ends the stream long before the 30 s deadline");
    let mut dec = sealpost_core::frame::FrameDecoder::new(1 << 16);
    dec.push(got.into());
    let f = dec.next_frame().unwrap().expect("an ERROR frame");
    assert_eq!(error_code(&f), ErrorCode::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    r.assert_serves().await;
}

#[tokio::test]
async fn a_source_flooding_rejected_deposits_is_cut_off_and_refused_for_a_while() {
    let r = relay_with(RelayLimits {
        source_fault_rate: Rate::new(2, 5),
        ..RelayLimits::default()
    })
    .await;
    let pin = r.handle.pin();
    let victim_source = connect_from(&r.addr, pin, "127.0.0.1").await.unwrap();
    let mb = victim_source.create(Suite::ChaCha20Poly1305).await.unwrap();
    let c = connect_from(&r.addr, pin, "127.0.0.9").await.unwrap();
    let (mut tx, mut rx) = c.open_deposit().await.unwrap();
    for i in 0..40u8 {
        let mut env = seal(&c, &mb, &[i]).await.to_vec();
        env[20] ^= 1; // a forged tag, as a flood of guesses would have
        if tx.send(&env.into()).await.is_err() {
            break;
        }
    }
    tx.finish();
    let mut answered = 0;
    loop {
        match rx.next().await {
            Ok(Some(st)) => {
                assert!(st.iter().all(|s| *s == DepositStatus::BadTag), "{st:?}");
                answered += st.len();
            }
            Ok(None) => panic!("the relay let the flood finish ({answered} answered)"),
            Err(_) => break,
        }
    }
    let reason = c.connection().close_reason();
    assert!(
        matches!(&reason, Some(quinn::ConnectionError::ApplicationClosed(a))
            if a.error_code == quinn::VarInt::from_u32(sealpost_relay::server::CLOSE_ABUSE)),
        "{reason:?}"
    );
    // (Answers written just before the close may be lost with it: they were rejections.)
    assert!(answered <= 40);
    // The source is refused while it pays back the excess; others are not affected.
    assert!(connect_from(&r.addr, pin, "127.0.0.9").await.is_err());
    victim_source
        .info()
        .await
        .expect("another source is served");
    assert_eq!(
        victim_source
            .deposit(seal(&victim_source, &mb, b"fine").await)
            .await
            .unwrap(),
        DepositStatus::Ok
    );
}

#[tokio::test]
async fn a_source_holding_streams_that_never_speak_is_cut_off() {
    // Streams that never send their first frame are faults once the relay gives up on them.
    // Here the first-frame wait is the default 10 s; the frame deadline is what a slowloris
    // meets after a first byte, so use that: one byte, then nothing.
    let r = relay_with(RelayLimits {
        frame_timeout: Duration::from_secs(1),
        source_fault_rate: Rate::new(1, 3),
        ..RelayLimits::default()
    })
    .await;
    let pin = r.handle.pin();
    let c = connect_from(&r.addr, pin, "127.0.0.10").await.unwrap();
    let mut held = Vec::new();
    for _ in 0..6 {
        let (mut send, recv) = c.connection().open_bi().await.unwrap();
        send.write_all(&[0]).await.unwrap();
        held.push((send, recv));
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), c.connection().closed())
        .await
        .expect("the relay closes the connection once the source is over its faults");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a)
            if a.error_code == quinn::VarInt::from_u32(sealpost_relay::server::CLOSE_ABUSE)),
        "{closed:?}"
    );
    assert!(connect_from(&r.addr, pin, "127.0.0.10").await.is_err());
    r.assert_serves().await;
}
