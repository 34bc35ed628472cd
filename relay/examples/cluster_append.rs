//! The cluster store's hot path, measured: batches of 256 deposits of 1 KiB into one mailbox
//! (one pipeline of function calls and WAITAOF on its primary per batch), each batch acked
//! afterwards. Figures and the crate comparison: docs/CLUSTER.md.
//!
//! `SEALPOST_CLUSTER_NODES=$(deploy/valkey/cluster.sh up) cargo run --release -p sealpost-relay
//! --example cluster_append [ITERATIONS]` (SEALPOST_MASTER_KEY: the cluster's master key)
#![forbid(unsafe_code)]

use bytes::Bytes;
use sealpost_core::Suite;
use sealpost_core::keys::RecipientSecret;
use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
use sealpost_relay::store::{Append, AppendOutcome, MailboxRecord, Quotas, Store};
use std::time::Instant;
use zeroize::Zeroizing;

const BATCH: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes: Vec<String> = std::env::var("SEALPOST_CLUSTER_NODES")
        .map_err(|_| "set SEALPOST_CLUSTER_NODES to the cluster's nodes (deploy/valkey/cluster.sh up prints them)")?
        .split(',')
        .map(|n| n.trim().to_owned())
        .collect();
    let iterations: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 300,
    };
    let quotas = Quotas {
        max_envelopes: 1_000_000,
        max_bytes: 1 << 40,
        max_mailboxes: 1 << 40,
        dedupe_window: 64,
    };
    // Every relay of a cluster shares one master key: SEALPOST_MASTER_KEY (64 hex digits), or
    // the tests' fixed key, so that this runs against a cluster the tests used.
    let mut master = [0x5e; 32];
    if let Ok(hex_key) = std::env::var("SEALPOST_MASTER_KEY") {
        hex::decode_to_slice(hex_key.trim(), &mut master)
            .map_err(|e| format!("SEALPOST_MASTER_KEY: {e} (64 hex digits)"))?;
    }
    let store = ClusterStore::open(ClusterOptions::new(
        nodes,
        Some(Zeroizing::new(master)),
        quotas,
    ))
    .await?;
    let rid: [u8; 16] = rand::random();
    let deposit_id = store.deposit_id_for(&rid);
    store
        .create_mailbox(MailboxRecord::new(
            rid,
            deposit_id,
            Suite::ChaCha20Poly1305,
            [1; 32],
            RecipientSecret([2; 32]),
        ))
        .await?;
    let body = Bytes::from(vec![0x5a; 1024]);
    let mut lat = Vec::with_capacity(iterations);
    let mut n = 0u64;
    let t0 = Instant::now();
    for _ in 0..iterations {
        let batch: Vec<Append> = (0..BATCH)
            .map(|_| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&n.to_be_bytes());
                Append {
                    deposit_id,
                    nonce,
                    envelope: body.clone(),
                    not_after: None,
                }
            })
            .collect();
        let t = Instant::now();
        let out = store.append_batch(&batch).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.iter().all(|o| matches!(o, AppendOutcome::Stored(_))) {
            return Err(format!("not all stored: {:?}", out.first()).into());
        }
        store.ack(&rid, u64::MAX).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "{iterations} batches of {BATCH} x 1 KiB: {:.0} deposits/s; append_batch p50 {:.1} ms, p99 {:.1} ms",
        (iterations * BATCH) as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    store.delete_mailbox(&rid).await?;
    Ok(())
}
