//! A client can always hold `max_streams` concurrent streams, whatever requests it made before.
//!
//! quinn-proto 0.11 announces freed stream credit only once more than 1/8 of the limit has
//! built up; a client that made a few short requests and then opens long-lived subscriptions
//! used to end up one or more streams short, forever (docs/QUINN-STREAM-CREDIT.md). This is
//! that reproduction, for several limits and numbers of earlier requests.

mod common;

use common::relay_with;
use sealpost_core::Suite;
use sealpost_relay::{Rate, RelayLimits};
use std::time::Duration;

/// On a relay allowing `limit` streams: `requests` INFO requests that complete (written,
/// finished, read to the end), then `limit` subscriptions held open at once on the same
/// connection. Every one must open.
async fn holds_the_advertised_streams(limit: u32, requests: usize) {
    let relay = relay_with(RelayLimits {
        max_streams: limit,
        // Up to a hundred mailboxes and requests in a moment from one address: the abuse
        // limits would refuse them, and they are not what this checks.
        source_create_rate: Rate::UNLIMITED,
        connection_stream_rate: Rate::UNLIMITED,
        ..RelayLimits::default()
    })
    .await;
    // The mailboxes are made on another connection, so this one's credit is untouched by them.
    let maker = relay.client().await;
    let mut mailboxes = Vec::new();
    for _ in 0..limit {
        mailboxes.push(maker.create(Suite::ChaCha20Poly1305).await.expect("create"));
    }
    let c = relay.client().await;
    for _ in 0..requests {
        c.info().await.expect("info");
    }
    let mut held = Vec::new();
    for (i, mb) in mailboxes.iter().enumerate() {
        let sub = tokio::time::timeout(Duration::from_secs(5), c.subscribe(&mb.access(), 4))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "subscription {} of {limit} never opened after {requests} finished requests: \
                     the connection is short of stream credit",
                    i + 1
                )
            })
            .expect("subscribe");
        held.push(sub);
    }
    assert_eq!(held.len(), limit as usize);
}

#[tokio::test]
async fn the_reported_case_limit_16_after_one_request() {
    holds_the_advertised_streams(16, 1).await;
}

#[tokio::test]
async fn limits_and_request_counts() {
    for limit in [1, 2, 7, 8, 9, 16, 33] {
        for requests in [0, 1, 2, 3, 5, 12] {
            holds_the_advertised_streams(limit, requests).await;
        }
    }
}

#[tokio::test]
async fn a_limit_of_100_after_many_requests() {
    for requests in [1, 12, 13, 100] {
        holds_the_advertised_streams(100, requests).await;
    }
}

#[test]
fn the_credit_granted_covers_what_quinn_withholds() {
    for limit in 1..=10_000u32 {
        let granted = sealpost_relay::stream_credit(limit);
        // quinn withholds at most ⌊granted / 8⌋ freed streams from its MAX_STREAMS updates.
        assert!(
            granted - granted / 8 >= limit,
            "limit {limit}: granted {granted}"
        );
        assert!(
            granted <= limit + limit / 7 + 1,
            "limit {limit}: granted {granted}"
        );
    }
}
