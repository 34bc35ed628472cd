//! The relay's probes on the cluster store (issue 12): `/readyz` never claims readiness while
//! the Valkey cluster cannot confirm deposits durable, and an outage of the cluster is a
//! transient state the relay waits out, not a store failure it exits on.

mod common;

use common::admin::{await_metrics, get};
use common::{seal, valkey};
use sealpost_client::Client;
use sealpost_core::Suite;
use sealpost_core::status::DepositStatus;
use sealpost_relay::store::Store;
use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
use sealpost_relay::{RelayConfig, RelayLimits};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Polls `path` until it answers `code`, for at most `secs`; returns the body.
async fn await_probe(admin: &str, path: &'static str, code: u16, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (c, body) = get(admin, path).await;
        if c == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {c} after {secs} s, not {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deposits `env` until it is stored, for at most `secs`: UNAVAILABLE (never a false OK) until
/// the relay's connections to the cluster are back; a resend is safe.
async fn deposit_until_stored(c: &Client, env: bytes::Bytes, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match c.deposit(env.clone()).await.unwrap() {
            DepositStatus::Ok | DepositStatus::Duplicate => return,
            DepositStatus::Unavailable if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("deposit: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_cluster_outage_and_a_lost_replica_and_recovers_without_a_restart() {
    let Some(cluster) = valkey::private_cluster(
        "cluster_health::readyz_follows_a_cluster_outage_and_a_lost_replica_and_recovers_without_a_restart",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits::default();
    let store = Arc::new(
        ClusterStore::open(ClusterOptions::new(
            cluster.nodes().to_vec(),
            Some(Zeroizing::new(valkey::MASTER_KEY)),
            limits.quotas(),
        ))
        .await
        .expect("the test cluster passes the start-up checks"),
    );
    let prom = sealpost_relay::admin::install_recorder().unwrap();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    cfg.limits = limits;
    let handle = sealpost_relay::start(cfg, store.clone()).await.unwrap();
    let (admin, _task) =
        sealpost_relay::admin::serve("127.0.0.1:0".parse().unwrap(), prom, handle.readiness())
            .await
            .unwrap();
    let admin = admin.to_string();
    let c = Client::connect_pinned(&handle.local_addr().to_string(), handle.pin())
        .await
        .unwrap();
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = seal(&c, &mb, b"before").await;
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    assert_eq!(get(&admin, "/servingz").await.0, 200);
    await_metrics(
        &admin,
        &[("sealpost_ready", 1.0), ("sealpost_store_unavailable", 0.0)],
    )
    .await;

    // Every node stops: the background probe notices within a few seconds (a probe a second,
    // each bounded by a timeout), without any deposit asking.
    tokio::task::block_in_place(|| cluster.down());
    let body = await_probe(&admin, "/readyz", 503, 15).await;
    assert!(
        body.contains("store unreachable") && body.contains("CLUSTER SLOTS"),
        "{body}"
    );
    // Nothing of the store answers: the relay serves nothing, so a load balancer should send
    // its clients to a relay that reaches the cluster.
    let (code, body) = get(&admin, "/servingz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store unreachable"), "{body}");
    assert_eq!(get(&admin, "/healthz").await.0, 200, "alive all the same");
    await_metrics(
        &admin,
        &[("sealpost_ready", 0.0), ("sealpost_store_unavailable", 1.0)],
    )
    .await;
    // Transient, not the failed state that makes `serve` exit.
    let health = store.health();
    assert_eq!(health.failed, None);
    assert!(health.unavailable.is_some());

    // The nodes come back with their data: so do readiness and deposits, in the same relay.
    tokio::task::block_in_place(|| cluster.up());
    await_probe(&admin, "/readyz", 200, 30).await;
    assert_eq!(get(&admin, "/servingz").await.0, 200);
    await_metrics(
        &admin,
        &[("sealpost_ready", 1.0), ("sealpost_store_unavailable", 0.0)],
    )
    .await;
    let env = seal(&c, &mb, b"after").await;
    deposit_until_stored(&c, env, 20).await;
    assert_eq!(store.pending(&mb.recipient_id).await.unwrap(), 2);

    // One replica is lost: its primary can no longer confirm a write on two nodes, so the
    // relay takes no deposits for that shard and says so; but it still serves the rest, as
    // every relay of the deployment would, so /servingz stays 200.
    let replica = replica_port(cluster.nodes()).await;
    cluster.kill_node(replica);
    let body = await_probe(&admin, "/readyz", 503, 15).await;
    assert!(
        body.contains("store unavailable") && body.contains("replica"),
        "{body}"
    );
    let (code, body) = get(&admin, "/servingz").await;
    assert_eq!(code, 200, "{body}");
    tokio::task::block_in_place(|| cluster.up());
    await_probe(&admin, "/readyz", 200, 30).await;
    c.close().await;
    handle.shutdown_within(Duration::from_secs(3)).await;
}

/// The port of some replica of the cluster (ROLE on each node).
async fn replica_port(nodes: &[String]) -> u16 {
    for node in nodes {
        let client = redis::Client::open(format!("redis://{node}/")).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
        if let redis::Value::Array(v) = role
            && matches!(v.first(), Some(redis::Value::BulkString(r)) if r == b"slave")
        {
            let port = node.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            return port.expect("node addresses are HOST:PORT");
        }
    }
    panic!("no replica among {nodes:?}");
}
