//! What the at-rest sweep's listing of mailbox heads costs on the cluster store
//! (`Store::held_heads`, docs/AT-REST.md "Several relays"): fills N mailbox streams with one
//! envelope each (written directly, as `sp_deposit` lays them out), then lists every head a
//! few times and prints mailboxes per second. Figures: docs/CLUSTER.md.
//!
//! `SEALPOST_CLUSTER_NODES=$(deploy/valkey/cluster.sh up) cargo run --release -p sealpost-relay
//! --example heads_listing [MAILBOXES]` on a cluster of its own: it adds MAILBOXES streams.
#![forbid(unsafe_code)]

use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
use sealpost_relay::store::{Quotas, Store};
use std::time::Instant;
use zeroize::Zeroizing;

/// Streams written concurrently.
const CHUNK: usize = 2000;
/// Listings timed.
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes: Vec<String> = std::env::var("SEALPOST_CLUSTER_NODES")
        .map_err(|_| "set SEALPOST_CLUSTER_NODES to the cluster's nodes (deploy/valkey/cluster.sh up prints them)")?
        .split(',')
        .map(|n| n.trim().to_owned())
        .collect();
    let mailboxes: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let quotas = Quotas {
        max_envelopes: 1000,
        max_bytes: 1 << 30,
        max_mailboxes: 1 << 40,
        dedupe_window: 64,
    };
    let store = ClusterStore::open(ClusterOptions::new(
        nodes.clone(),
        Some(Zeroizing::new([0x5e; 32])),
        quotas,
    ))
    .await?;
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
    let conn = redis::cluster::ClusterClient::new(urls)?
        .get_async_connection()
        .await?;
    let body = vec![0xabu8; 1024 + 54];
    let t0 = Instant::now();
    for start in (0..mailboxes).step_by(CHUNK) {
        let writes = (start..(start + CHUNK).min(mailboxes)).map(|i| {
            let mut rid = [0u8; 16];
            rid[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let key = format!("{{m:{}}}:q", hex::encode(rid));
            let mut c = conn.clone();
            let body = &body;
            async move {
                redis::cmd("XADD")
                    .arg(key)
                    .arg("1-0")
                    .arg("t")
                    .arg(1_700_000_000_000u64 + i as u64)
                    .arg("o")
                    .arg(&[0u8; 12][..])
                    .arg("e")
                    .arg(&body[..])
                    .query_async::<redis::Value>(&mut c)
                    .await
            }
        });
        for r in futures_util::future::join_all(writes).await {
            // An existing stream from an earlier run refuses the id: still a stream to list.
            if let Err(e) = r
                && e.code() != Some("ERR")
            {
                return Err(e.into());
            }
        }
    }
    eprintln!(
        "{mailboxes} streams written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let heads = store
            .held_heads()
            .await?
            .ok_or("the cluster's slots moved during the listing")?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "listed {} heads in {s:.2} s: {:.0} mailboxes/s",
            heads.heads.len(),
            heads.heads.len() as f64 / s
        );
    }
    Ok(())
}
