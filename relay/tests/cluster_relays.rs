//! Several relays on one Valkey cluster (issue 12), in process: one subscriber per mailbox
//! across relays (a subscription moving from relay A to relay B ends A's with REPLACED),
//! DUPLICATE across relays, quota and retention counted and enforced across relays, and
//! relays carrying on after a whole-cluster restart. A relay killed mid-subscription is in
//! `cluster_serve.rs` (it needs a process to SIGKILL).

mod common;

use common::{end_subscription, relay_error, seal, valkey};
use sealpost_client::{Client, Mailbox, Subscription};
use sealpost_core::Suite;
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_relay::store::Store;
use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
use sealpost_relay::{RelayConfig, RelayHandle, RelayLimits};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// One test at a time: a retention sweep removes old envelopes of every mailbox in the
/// cluster, including other tests'.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two relays, each with a store of its own on one cluster (as two relay processes would
/// have), serving one certificate.
struct Pair {
    a: RelayHandle,
    b: RelayHandle,
    /// Relay A's store, to look at what the cluster holds.
    store: Arc<ClusterStore>,
    _dirs: [tempfile::TempDir; 2],
}

async fn store(nodes: &[String], limits: &RelayLimits) -> Arc<ClusterStore> {
    let opts = ClusterOptions::new(
        nodes.to_vec(),
        Some(Zeroizing::new(valkey::MASTER_KEY)),
        limits.quotas(),
    );
    Arc::new(
        ClusterStore::open(opts)
            .await
            .expect("the test cluster passes the start-up checks"),
    )
}

/// Relays A and B on the cluster at `nodes` with these limits.
async fn pair(nodes: &[String], limits_a: RelayLimits, limits_b: RelayLimits) -> Pair {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let store_a = store(nodes, &limits_a).await;
    let store_b = store(nodes, &limits_b).await;
    let mut first = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dirs[0].path().to_owned());
    first.limits = limits_a;
    let a = sealpost_relay::start(first, store_a.clone()).await.unwrap();
    let tls = dirs[0].path().join("tls");
    let mut second = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dirs[1].path().to_owned());
    second.cert = Some(tls.join("cert.pem"));
    second.key = Some(tls.join("key.pem"));
    second.limits = limits_b;
    let b = sealpost_relay::start(second, store_b).await.unwrap();
    assert_eq!(a.pin(), b.pin(), "both relays serve one certificate");
    Pair {
        a,
        b,
        store: store_a,
        _dirs: dirs,
    }
}

async fn connect(relay: &RelayHandle) -> Client {
    Client::connect_pinned(&relay.local_addr().to_string(), relay.pin())
        .await
        .unwrap()
}

/// Relays A and B ([`pair`]), a client of each, and a mailbox created through A.
async fn scene(
    nodes: &[String],
    limits_a: RelayLimits,
    limits_b: RelayLimits,
    suite: Suite,
) -> (Pair, Client, Client, Mailbox) {
    let p = pair(nodes, limits_a, limits_b).await;
    let on_a = connect(&p.a).await;
    let on_b = connect(&p.b).await;
    let mb = on_a.create(suite).await.unwrap();
    (p, on_a, on_b, mb)
}

impl Pair {
    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// Deposits `text` through `c`, returning the status.
async fn deposit(c: &Client, mb: &Mailbox, text: &str) -> DepositStatus {
    c.deposit(seal(c, mb, text.as_bytes()).await).await.unwrap()
}

/// The next delivery on `sub` as (seq, text), within a bound far above what it takes.
async fn next_text(sub: &mut Subscription, mb: &Mailbox) -> (u64, String) {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("delivery ok")
        .expect("a delivery");
    let text = String::from_utf8(mb.open(&d).unwrap().to_vec()).unwrap();
    (d.seq, text)
}

/// Polls the cluster until the mailbox holds `want` envelopes (within 10 s).
async fn wait_pending(store: &ClusterStore, mb: &Mailbox, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = store.pending(&mb.access().recipient_id).await.unwrap();
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n} held, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A subscription moves from relay A to relay B: subscribing on B ends A's subscription with
/// ERROR REPLACED; B delivers what A delivered but was not acknowledged, then the rest
/// (including what is deposited through A afterwards), nothing acknowledged lost and nothing
/// at or below the acknowledged position delivered again. A deletion through one relay ends
/// the subscription on the other with UNKNOWN_MAILBOX.
#[tokio::test]
async fn a_subscription_on_another_relay_replaces_the_old_one() {
    let Some(cluster) =
        valkey::cluster("cluster_relays::a_subscription_on_another_relay_replaces_the_old_one")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let (p, on_a, on_b, mb) = scene(
        cluster.nodes(),
        RelayLimits::default(),
        RelayLimits::default(),
        Suite::ChaCha20Poly1305,
    )
    .await;
    for i in 1..=4 {
        assert!(deposit(&on_a, &mb, &format!("m{i}")).await.is_success());
    }

    let mut sub_a = on_a.subscribe(&mb.access(), 8).await.unwrap();
    let (s1, t1) = next_text(&mut sub_a, &mb).await;
    assert_eq!(t1, "m1");
    sub_a.ack(s1).await.unwrap();
    // m2 is delivered on A and never acknowledged.
    let (s2, t2) = next_text(&mut sub_a, &mb).await;
    assert_eq!(t2, "m2");
    // The ACK of m1 has taken effect before the subscription moves.
    wait_pending(&p.store, &mb, 3, "m1 acknowledged on A").await;

    let mut sub_b = on_b.subscribe(&mb.access(), 8).await.unwrap();
    // A's stream ends with REPLACED; deliveries it sent before that may still be read.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_a.next())
            .await
            .expect("A's subscription ends in time")
        {
            Ok(Some(d)) => assert!(d.seq > s2, "A delivers in order"),
            Ok(None) => panic!("A's subscription finished instead of REPLACED"),
            Err(e) => break relay_error(e),
        }
    };
    assert_eq!(ended, ErrorCode::Replaced);

    assert_eq!(next_text(&mut sub_b, &mb).await, (s2, "m2".into()));
    let (s3, t3) = next_text(&mut sub_b, &mb).await;
    let (s4, t4) = next_text(&mut sub_b, &mb).await;
    assert_eq!((t3.as_str(), t4.as_str()), ("m3", "m4"));
    assert!(s2 < s3 && s3 < s4);
    // Deposited through A, pushed to the subscriber on B.
    assert!(deposit(&on_a, &mb, "m5").await.is_success());
    let (s5, t5) = next_text(&mut sub_b, &mb).await;
    assert_eq!(t5, "m5");
    assert!(s5 > s4);
    sub_b.ack(s5).await.unwrap();
    end_subscription(&mut sub_b).await;
    wait_pending(&p.store, &mb, 0, "everything acknowledged on B").await;

    // And back: a subscription on A ends B's. This one on B stays open meanwhile.
    let mut sub_b = on_b.subscribe(&mb.access(), 8).await.unwrap();
    let mut sub_a = on_a.subscribe(&mb.access(), 8).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub_b.next())
        .await
        .expect("B's subscription ends in time")
        .expect_err("B's subscription ends with an error");
    assert_eq!(relay_error(e), ErrorCode::Replaced);

    // Deleting the mailbox through B ends the subscription on A as on one relay.
    on_b.delete(&mb.access()).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub_a.next())
        .await
        .expect("A's subscription ends in time")
        .expect_err("A's subscription ends with an error");
    assert_eq!(relay_error(e), ErrorCode::UnknownMailbox);
    p.shutdown().await;
}

/// The same envelope deposited through A and then through B: OK, then DUPLICATE, and the
/// mailbox holds it once.
#[tokio::test]
async fn a_duplicate_is_recognised_across_relays() {
    let Some(cluster) = valkey::cluster("cluster_relays::a_duplicate_is_recognised_across_relays")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let (p, on_a, on_b, mb) = scene(
        cluster.nodes(),
        RelayLimits::default(),
        RelayLimits::default(),
        Suite::Aes256Gcm,
    )
    .await;
    let env = seal(&on_a, &mb, b"once").await;
    assert_eq!(on_a.deposit(env.clone()).await.unwrap(), DepositStatus::Ok);
    assert_eq!(on_b.deposit(env).await.unwrap(), DepositStatus::Duplicate);
    wait_pending(&p.store, &mb, 1, "one copy held").await;
    on_b.delete(&mb.access()).await.unwrap();
    p.shutdown().await;
}

/// Deposits split over A and B count against one quota (MAILBOX_FULL through either), and
/// an envelope deposited through A is removed by B's retention sweep (A's sweep does not run
/// during the test).
#[tokio::test]
async fn quota_and_retention_hold_across_relays() {
    let Some(cluster) = valkey::cluster("cluster_relays::quota_and_retention_hold_across_relays")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let small = RelayLimits {
        max_envelopes: 3,
        ..RelayLimits::default()
    };
    let (p, on_a, on_b, mb) = scene(
        cluster.nodes(),
        small.clone(),
        small,
        Suite::ChaCha20Poly1305,
    )
    .await;
    assert_eq!(deposit(&on_a, &mb, "1").await, DepositStatus::Ok);
    assert_eq!(deposit(&on_b, &mb, "2").await, DepositStatus::Ok);
    assert_eq!(deposit(&on_a, &mb, "3").await, DepositStatus::Ok);
    assert_eq!(deposit(&on_b, &mb, "4").await, DepositStatus::MailboxFull);
    assert_eq!(deposit(&on_a, &mb, "5").await, DepositStatus::MailboxFull);
    on_a.delete(&mb.access()).await.unwrap();
    p.shutdown().await;

    // Retention: A's sweep runs once at start and then not for an hour; B's every 100 ms.
    let retention = Duration::from_millis(1500);
    let lazy = RelayLimits {
        retention,
        expire_interval: Duration::from_secs(3600),
        ..RelayLimits::default()
    };
    let busy = RelayLimits {
        retention,
        expire_interval: Duration::from_millis(100),
        ..RelayLimits::default()
    };
    let p = pair(cluster.nodes(), lazy, busy).await;
    let on_a = connect(&p.a).await;
    let mb = on_a.create(Suite::ChaCha20Poly1305).await.unwrap();
    assert_eq!(deposit(&on_a, &mb, "old").await, DepositStatus::Ok);
    let deposited = Instant::now();
    wait_pending(&p.store, &mb, 0, "expired by B's sweep").await;
    assert!(
        deposited.elapsed() >= retention - Duration::from_millis(200),
        "expired before its retention was up"
    );
    on_a.delete(&mb.access()).await.unwrap();
    p.shutdown().await;
}

/// After a whole-cluster restart under running relays (not restarted themselves), a deposit
/// through either relay is stored again once the cluster is back (the server-side functions
/// came back with the append-only files) and what was held before is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_carry_on_after_a_cluster_restart() {
    let Some(cluster) =
        valkey::private_cluster("cluster_relays::relays_carry_on_after_a_cluster_restart")
    else {
        return;
    };
    let (p, on_a, on_b, mb) = scene(
        cluster.nodes(),
        RelayLimits::default(),
        RelayLimits::default(),
        Suite::ChaCha20Poly1305,
    )
    .await;
    assert_eq!(deposit(&on_a, &mb, "before").await, DepositStatus::Ok);
    // The relays keep running on the other worker while the nodes restart.
    tokio::task::block_in_place(|| cluster.restart());

    // Until the relay's connections are back the store answers UNAVAILABLE (never a false
    // OK); the same envelope is sent again, which is safe (DUPLICATE if it was stored).
    let env = seal(&on_b, &mb, b"after").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match on_b.deposit(env.clone()).await.unwrap() {
            DepositStatus::Ok | DepositStatus::Duplicate => break,
            DepositStatus::Unavailable if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("deposit after the restart: {other:?}"),
        }
    }
    let mut sub = on_a.subscribe(&mb.access(), 8).await.unwrap();
    assert_eq!(next_text(&mut sub, &mb).await.1, "before");
    let (last, text) = next_text(&mut sub, &mb).await;
    assert_eq!(text, "after");
    sub.ack(last).await.unwrap();
    end_subscription(&mut sub).await;
    wait_pending(&p.store, &mb, 0, "both acknowledged").await;
    p.shutdown().await;
}
