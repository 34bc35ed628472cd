//! The cluster store against a real Valkey cluster (`common::valkey`): the store contract as
//! the memory and disk stores keep it, wake-ups across two relays' stores, and refusals at
//! start-up.

mod common;

use bytes::Bytes;
use common::valkey;
use futures_util::FutureExt;
use sealpost_core::Suite;
use sealpost_core::keys::RecipientSecret;
use sealpost_relay::store::cluster::{ClusterError, ClusterOptions, ClusterStore};
use sealpost_relay::store::{
    Append, AppendOutcome, Claim, ClaimEnd, MailboxRecord, Quotas, Store, StoreError, StoreStats,
    SubscriberClaim,
};
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

/// The tests of this file share one cluster, and expiry sweeps every mailbox in it: one test
/// at a time, so that one test's expiry does not remove another's envelopes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MASTER: [u8; 32] = valkey::MASTER_KEY;

fn quotas() -> Quotas {
    Quotas {
        max_envelopes: 3,
        max_bytes: 1000,
        max_mailboxes: 1_000_000,
        dedupe_window: 2,
    }
}

async fn open(nodes: &[String]) -> ClusterStore {
    ClusterStore::open(ClusterOptions::new(
        nodes.to_vec(),
        Some(Zeroizing::new(MASTER)),
        quotas(),
    ))
    .await
    .expect("the test cluster passes the start-up checks")
}

/// A mailbox with a fresh random id (the cluster may outlive this test run).
async fn mailbox(s: &ClusterStore) -> [u8; 16] {
    let (rid, made) = try_mailbox(s).await;
    made.expect("mailbox created");
    rid
}

/// Tries to create a mailbox with a fresh random id: the id and what the store answered.
async fn try_mailbox(s: &ClusterStore) -> ([u8; 16], Result<(), StoreError>) {
    let rid: [u8; 16] = rand::random();
    let rec = MailboxRecord::new(
        rid,
        s.deposit_id_for(&rid),
        Suite::ChaCha20Poly1305,
        [7; 32],
        RecipientSecret([9; 32]),
    );
    (rid, s.create_mailbox(rec).await)
}

fn app(s: &ClusterStore, rid: &[u8; 16], nonce: u8, body: &[u8]) -> Append {
    Append {
        deposit_id: s.deposit_id_for(rid),
        nonce: [nonce; 12],
        envelope: Bytes::copy_from_slice(body),
        not_after: None,
    }
}

#[tokio::test]
async fn deposits_dedupe_quota_ack_expire_and_delete_as_on_the_disk_store() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::deposits_dedupe_quota_ack_expire_and_delete_as_on_the_disk_store",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let s = open(cluster.nodes()).await;
    // Other runs may have left mailboxes in a shared cluster: count from here.
    let base = s.stats().await;
    let a = mailbox(&s).await;
    let b = mailbox(&s).await;
    assert!(matches!(
        s.create_mailbox(MailboxRecord::new(
            a,
            s.deposit_id_for(&a),
            Suite::ChaCha20Poly1305,
            [1; 32],
            RecipientSecret([2; 32]),
        ))
        .await,
        Err(StoreError::Exists)
    ));

    // The record comes back whole, by either id, with its secrets.
    let rec = s.mailbox(&a).await.unwrap().expect("mailbox a");
    assert_eq!(rec.recipient_id, a);
    assert_eq!(rec.recipient_secret.0, [9; 32]);
    assert_eq!(rec.deposit_key.expose(), &[7; 32]);
    let unknown: [u8; 16] = rand::random();
    let found = s
        .lookup_deposit(&[s.deposit_id_for(&b), s.deposit_id_for(&unknown)])
        .await
        .unwrap();
    assert_eq!(found[0].as_ref().map(|r| r.recipient_id), Some(b));
    assert!(found[1].is_none());

    use AppendOutcome::*;
    let out = s
        .append_batch(&[
            app(&s, &a, 1, b"one"),
            app(&s, &a, 1, b"one"),
            app(&s, &a, 1, b"uno"),
            app(&s, &b, 1, b"bee"),
            app(&s, &unknown, 1, b"nobody"),
            app(&s, &a, 2, b"two"),
            app(&s, &a, 3, b"three"),
            app(&s, &a, 4, b"four"),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Stored(1),
            Duplicate,
            IdReused,
            Stored(1),
            UnknownMailbox,
            Stored(2),
            Stored(3),
            MailboxFull
        ]
    );
    assert_eq!(s.pending(&a).await.unwrap(), 3);
    assert_eq!(
        s.stats().await,
        StoreStats {
            mailboxes: base.mailboxes + 2,
            envelopes: base.envelopes + 4,
            bytes: base.bytes + 14
        }
    );
    let got = s.fetch(&a, 1, 10).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|e| (e.seq, e.envelope.clone()))
            .collect::<Vec<_>>(),
        vec![
            (2, Bytes::from_static(b"two")),
            (3, Bytes::from_static(b"three"))
        ]
    );
    assert_eq!(s.fetch(&a, 0, 1).await.unwrap()[0].seq, 1);

    assert_eq!(s.ack(&a, 2).await.unwrap(), 2);
    assert_eq!(s.pending(&a).await.unwrap(), 1);
    // Acknowledged nonces stay in the dedupe window, with their digests.
    assert_eq!(
        s.append_batch(&[app(&s, &a, 1, b"one"), app(&s, &a, 2, b"dos")])
            .await
            .unwrap(),
        vec![Duplicate, IdReused]
    );
    // The byte quota.
    assert_eq!(
        s.append_batch(&[app(&s, &a, 9, &[0; 996])]).await.unwrap(),
        vec![MailboxFull]
    );

    // Retention: everything stored before the cutoff goes.
    assert_eq!(
        s.expire(SystemTime::now() + Duration::from_secs(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.pending(&a).await.unwrap(), 0);
    assert_eq!(s.pending(&b).await.unwrap(), 0);
    // Window of 2: nonces 1 and 2 were removed first and are forgotten by now.
    assert_eq!(
        s.append_batch(&[app(&s, &a, 1, b"again")]).await.unwrap(),
        vec![Stored(4)]
    );

    assert!(s.delete_mailbox(&a).await.unwrap());
    assert!(!s.delete_mailbox(&a).await.unwrap());
    assert!(s.mailbox(&a).await.unwrap().is_none());
    assert!(s.lookup_deposit(&[s.deposit_id_for(&a)]).await.unwrap()[0].is_none());
    assert_eq!(
        s.append_batch(&[app(&s, &a, 7, b"late")]).await.unwrap(),
        vec![UnknownMailbox]
    );
    assert!(s.delete_mailbox(&b).await.unwrap());
    assert_eq!(s.stats().await, base);
}

#[tokio::test]
async fn a_deposit_through_one_relay_wakes_a_subscriber_on_another() {
    let Some(cluster) =
        valkey::cluster("cluster_store::a_deposit_through_one_relay_wakes_a_subscriber_on_another")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let relay_a = open(cluster.nodes()).await;
    let relay_b = open(cluster.nodes()).await;
    let rid = mailbox(&relay_a).await;
    // Both relays derive the same deposit ids (the PRF key is shared through the cluster).
    assert_eq!(relay_a.deposit_id_for(&rid), relay_b.deposit_id_for(&rid));
    let mut wake = relay_b.watch(&rid).expect("watch");

    // The subscription is set up in the background: deposit until B is woken.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut nonce = 0u8;
    let high = loop {
        nonce += 1;
        let out = relay_a
            .append_batch(&[app(&relay_a, &rid, nonce, b"canary-sealpost-plaintext")])
            .await
            .unwrap();
        assert!(matches!(out[0], AppendOutcome::Stored(_)), "{out:?}");
        relay_a.ack(&rid, u64::MAX).await.unwrap();
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await {
            break *wake.borrow_and_update();
        }
        assert!(Instant::now() < deadline, "relay B was never woken");
    };
    assert!(high >= 1 && high <= u64::from(nonce), "{high}");

    // Once subscribed, each deposit wakes B with its sequence number.
    let out = relay_a
        .append_batch(&[app(&relay_a, &rid, 200, b"next")])
        .await
        .unwrap();
    let AppendOutcome::Stored(seq) = out[0] else {
        panic!("{out:?}")
    };
    tokio::time::timeout(Duration::from_secs(5), wake.wait_for(|h| *h >= seq))
        .await
        .expect("woken within 5 s")
        .expect("watch open");
    let got = relay_b.fetch(&rid, seq - 1, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope, Bytes::from_static(b"next"));
    assert!(relay_b.delete_mailbox(&rid).await.unwrap());
}

#[tokio::test]
async fn start_up_refuses_without_master_key_nodes_or_a_reachable_cluster() {
    let no_key = ClusterStore::open(ClusterOptions::new(
        vec!["127.0.0.1:1".into()],
        None,
        quotas(),
    ))
    .await;
    assert!(
        matches!(
            no_key,
            Err(StoreError::Cluster(ClusterError::MasterKeyRequired))
        ),
        "{:?}",
        no_key.err()
    );
    let no_nodes = ClusterStore::open(ClusterOptions::new(
        vec![],
        Some(Zeroizing::new(MASTER)),
        quotas(),
    ))
    .await;
    assert!(matches!(
        no_nodes,
        Err(StoreError::Cluster(ClusterError::NoNodes))
    ));
    // Port 1 on loopback: nothing listens there.
    let err = ClusterStore::open(ClusterOptions::new(
        vec!["127.0.0.1:1".into()],
        Some(Zeroizing::new(MASTER)),
        quotas(),
    ))
    .await
    .err()
    .expect("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Cluster(ClusterError::Unreachable { .. }))
            && msg.contains("127.0.0.1:1")
            && msg.contains("cluster.sh status"),
        "{msg}"
    );
}

/// Polls `check` until it holds, failing after `secs` with what it last saw.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A node's answer to one command, as text.
async fn ask(addr: &str, args: &[&str]) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let v: redis::Value = cmd.query_async(&mut c).await.map_err(|e| e.to_string())?;
    Ok(format!("{v:?}"))
}

#[tokio::test]
async fn start_up_refuses_an_unready_or_unfsynced_cluster_and_no_replica_means_no_ok() {
    let Some(node) = valkey::single_node(
        "cluster_store::start_up_refuses_an_unready_or_unfsynced_cluster_and_no_replica_means_no_ok",
        "everysec",
    ) else {
        return;
    };
    let addr = node.addr.clone();
    eventually(10, "valkey-server answers PING", || {
        ask(&addr, &["PING"]).map(|r| r.map(|_| ()))
    })
    .await;
    let open_it = |timeout: Duration| {
        let mut o = ClusterOptions::new(vec![addr.clone()], Some(Zeroizing::new(MASTER)), quotas());
        o.durable_timeout = timeout;
        ClusterStore::open(o)
    };

    // No slot served yet: not cluster_state:ok.
    let e = open_it(Duration::from_secs(1))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(e, StoreError::Cluster(ClusterError::NotOk { .. }))
            && e.to_string().contains("cluster_state"),
        "{e}"
    );

    ask(&addr, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        .await
        .unwrap();
    eventually(10, "cluster_state:ok", || async {
        let info = ask(&addr, &["CLUSTER", "INFO"]).await?;
        if info.contains("cluster_state:ok") {
            Ok(())
        } else {
            Err(info)
        }
    })
    .await;

    // appendfsync everysec: WAITAOF's local count would not mean "on disk" per write.
    let e = open_it(Duration::from_secs(1))
        .await
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(
        matches!(e, StoreError::Cluster(ClusterError::NotFsyncing { .. }))
            && msg.contains("everysec")
            && msg.contains(&addr),
        "{msg}"
    );

    // Fsynced, but no replica: nothing can be confirmed on two nodes, so nothing is OK.
    ask(&addr, &["CONFIG", "SET", "appendfsync", "always"])
        .await
        .unwrap();
    let s = open_it(Duration::from_millis(300))
        .await
        .expect("opens: the checks pass");
    let secret: [u8; 32] = rand::random();
    let deposit_key: [u8; 32] = rand::random();
    let rid: [u8; 16] = rand::random();
    let rec = MailboxRecord::new(
        rid,
        s.deposit_id_for(&rid),
        Suite::ChaCha20Poly1305,
        deposit_key,
        RecipientSecret(secret),
    );
    let e = s
        .create_mailbox(rec)
        .await
        .expect_err("not confirmed durable");
    assert!(e.to_string().contains("WAITAOF"), "{e}");

    assert!(
        s.mailbox(&rid).await.unwrap().is_none(),
        "a mailbox whose creation was not confirmed is not there"
    );
}

#[tokio::test]
async fn mailbox_secrets_reach_valkey_only_sealed() {
    let Some(cluster) = valkey::cluster("cluster_store::mailbox_secrets_reach_valkey_only_sealed")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let s = open(cluster.nodes()).await;
    let secret: [u8; 32] = rand::random();
    let deposit_key: [u8; 32] = rand::random();
    let rid: [u8; 16] = rand::random();
    s.create_mailbox(MailboxRecord::new(
        rid,
        s.deposit_id_for(&rid),
        Suite::ChaCha20Poly1305,
        deposit_key,
        RecipientSecret(secret),
    ))
    .await
    .unwrap();
    let rec = s.mailbox(&rid).await.unwrap().expect("created");
    assert_eq!(rec.recipient_secret.0, secret);

    // The stored record, as any client of the cluster reads it.
    let tag = format!("{{m:{}}}", hex::encode(rid));
    let client = redis::cluster::ClusterClient::new(
        cluster
            .nodes()
            .iter()
            .map(|n| format!("redis://{n}/"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut c = client.get_async_connection().await.unwrap();
    let stored: Vec<u8> = redis::cmd("HGET")
        .arg(&tag)
        .arg("rec")
        .query_async(&mut c)
        .await
        .unwrap();
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(stored.len() > 64, "{} bytes", stored.len());
    assert!(!has(&stored, &secret) && !has(&stored, &deposit_key));

    // And the nodes' files, when this test started the cluster and knows where they are.
    if let Some(dir) = cluster.dir() {
        use common::process::files_containing;
        assert!(
            !files_containing(dir, tag.as_bytes()).is_empty(),
            "the mailbox is in the AOF"
        );
        assert_eq!(
            files_containing(dir, &secret),
            Vec::<std::path::PathBuf>::new()
        );
        assert_eq!(
            files_containing(dir, &deposit_key),
            Vec::<std::path::PathBuf>::new()
        );
    }
    assert!(s.delete_mailbox(&rid).await.unwrap());
}

#[tokio::test]
async fn mailboxes_and_functions_survive_a_cluster_restart_under_a_running_store() {
    let Some(cluster) = valkey::private_cluster(
        "cluster_store::mailboxes_and_functions_survive_a_cluster_restart_under_a_running_store",
    ) else {
        return;
    };
    let s = open(cluster.nodes()).await;
    let rid = mailbox(&s).await;
    assert_eq!(
        s.append_batch(&[app(&s, &rid, 1, b"before")])
            .await
            .unwrap(),
        vec![AppendOutcome::Stored(1)]
    );

    cluster.restart();

    // The same store, not opened again (so the functions were not loaded again): once its
    // connections are back, the deposit from before is there and new ones are stored.
    let mut last: String;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match s.append_batch(&[app(&s, &rid, 2, b"after")]).await {
            Ok(out) => {
                assert_eq!(out, vec![AppendOutcome::Stored(2)]);
                break;
            }
            // UNAVAILABLE while connections come back; never a wrong answer.
            Err(e) => last = e.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "no deposit after the restart: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = s.fetch(&rid, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.envelope.clone()).collect::<Vec<_>>(),
        vec![Bytes::from_static(b"before"), Bytes::from_static(b"after")]
    );
    // A retry of the first deposit is still a duplicate: the dedupe window survived too.
    assert_eq!(
        s.append_batch(&[app(&s, &rid, 1, b"before")])
            .await
            .unwrap(),
        vec![AppendOutcome::Duplicate]
    );
}

/// The port of the primary serving `slot`, as `node` sees it (CLUSTER SLOTS).
async fn primary_port(node: &str, slot: u16) -> Result<u16, String> {
    use redis::Value;
    let client = redis::Client::open(format!("redis://{node}/")).map_err(|e| e.to_string())?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    let Value::Array(ranges) = v else {
        return Err(format!("{v:?}"));
    };
    for r in ranges {
        if let Value::Array(r) = r
            && let [
                Value::Int(first),
                Value::Int(last),
                Value::Array(primary),
                ..,
            ] = &r[..]
            && (*first..=*last).contains(&i64::from(slot))
            && let Some(Value::Int(port)) = primary.get(1)
        {
            return u16::try_from(*port).map_err(|e| e.to_string());
        }
    }
    Err(format!("no primary for slot {slot}"))
}

#[tokio::test]
async fn no_acknowledged_deposit_is_lost_when_a_primary_is_killed() {
    use sealpost_relay::store::cluster::keys::MailboxKeys;
    let Some(cluster) = valkey::private_cluster(
        "cluster_store::no_acknowledged_deposit_is_lost_when_a_primary_is_killed",
    ) else {
        return;
    };
    let mut q = quotas();
    q.max_envelopes = 10_000;
    q.max_bytes = 1 << 30;
    let s = ClusterStore::open(ClusterOptions::new(
        cluster.nodes().to_vec(),
        Some(Zeroizing::new(MASTER)),
        q,
    ))
    .await
    .unwrap();
    let rid = mailbox(&s).await;
    let deposit = |i: u32| Append {
        deposit_id: s.deposit_id_for(&rid),
        nonce: {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&i.to_be_bytes());
            n
        },
        envelope: Bytes::from(format!("envelope {i}")),
        not_after: None,
    };
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    let send = async |from: u32, acknowledged: &mut Vec<u32>| {
        let batch: Vec<Append> = (from..from + 8).map(deposit).collect();
        match s.append_batch(&batch).await {
            Ok(out) => {
                for (i, o) in (from..).zip(out) {
                    assert!(
                        matches!(o, AppendOutcome::Stored(_) | AppendOutcome::Duplicate),
                        "{o:?}"
                    );
                    acknowledged.push(i);
                }
                true
            }
            Err(_) => false,
        }
    };
    let mut next = 0;
    for _ in 0..5 {
        assert!(send(next, &mut acknowledged).await);
        next += 8;
    }
    // A watcher on another relay, woken through the mailbox's shard channel; subscribed in
    // the background, so deposit until it is woken.
    let relay_b = ClusterStore::open(ClusterOptions::new(
        cluster.nodes().to_vec(),
        Some(Zeroizing::new(MASTER)),
        q,
    ))
    .await
    .unwrap();
    let mut wake = relay_b.watch(&rid).expect("watch");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(send(next, &mut acknowledged).await);
        next += 8;
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await {
            break;
        }
        assert!(Instant::now() < deadline, "relay B was never woken");
    }
    let before_kill = *wake.borrow_and_update();

    let slot = MailboxKeys::new(&rid).slot();
    let victim = primary_port(&cluster.nodes()[0], slot).await.unwrap();
    cluster.kill_node(victim);
    // Until the replica has taken over and has a replica of its own again, nothing for this
    // mailbox can be fsynced on two nodes: UNAVAILABLE, never OK.
    let others: Vec<&String> = cluster
        .nodes()
        .iter()
        .filter(|n| !n.ends_with(&format!(":{victim}")))
        .collect();
    eventually(30, "a replica took over", || async {
        match primary_port(others[0], slot).await {
            Ok(p) if p != victim => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    if send(next, &mut acknowledged).await {
        panic!("a deposit was acknowledged while its slot's primary had no replica");
    }
    unavailable += 1;
    next += 8;

    // The killed node comes back as the new primary's replica; deposits are confirmed again.
    cluster.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !send(next, &mut acknowledged).await {
        unavailable += 1;
        assert!(
            Instant::now() < deadline,
            "no deposit confirmed after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next += 8;

    // Relay B's subscription moved to the new primary by itself: deposits wake it again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let woken = tokio::time::timeout(
            Duration::from_millis(300),
            wake.wait_for(|h| *h > before_kill),
        )
        .await;
        if let Ok(Ok(_)) = woken {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay B not woken after the failover"
        );
        if send(next, &mut acknowledged).await {
            next += 8;
        }
    }

    // Every acknowledged deposit is there, exactly once.
    let held: Vec<Bytes> = s
        .fetch(&rid, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.envelope)
        .collect();
    for i in &acknowledged {
        let body = Bytes::from(format!("envelope {i}"));
        assert_eq!(
            held.iter().filter(|b| **b == body).count(),
            1,
            "envelope {i} after {unavailable} unavailable batches"
        );
    }
}

#[tokio::test]
async fn a_deposit_removes_envelopes_past_retention_before_the_quota_counts() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::a_deposit_removes_envelopes_past_retention_before_the_quota_counts",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let mut o = ClusterOptions::new(
        cluster.nodes().to_vec(),
        Some(Zeroizing::new(MASTER)),
        quotas(),
    );
    o.retention = Some(Duration::from_millis(1));
    let s = ClusterStore::open(o).await.unwrap();
    let rid = mailbox(&s).await;
    use AppendOutcome::*;
    for nonce in 1..=3 {
        assert!(matches!(
            s.append_batch(&[app(&s, &rid, nonce, b"old")])
                .await
                .unwrap()[..],
            [Stored(_)]
        ));
    }
    // A fourth would be MAILBOX_FULL (max_envelopes 3) but for the retention of 1 ms: by
    // the server's clock the others are older than that once a millisecond has passed.
    let mut nonce = 4;
    eventually(
        5,
        "a deposit past the quota once the others expired",
        || {
            nonce += 1;
            let a = app(&s, &rid, nonce, b"new");
            let s = &s;
            async move {
                match s.append_batch(&[a]).await.map_err(|e| e.to_string())?[..] {
                    [Stored(_)] => Ok(()),
                    ref other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let held = s.fetch(&rid, 0, 10).await.unwrap();
    assert!(
        held.iter()
            .all(|e| e.envelope == Bytes::from_static(b"new")),
        "{held:?}"
    );
    assert!(s.delete_mailbox(&rid).await.unwrap());
}

/// The claim of a [`Claim::Held`] answer.
fn held(c: Claim) -> SubscriberClaim {
    match c {
        Claim::Held(c) => c,
        other => panic!("expected a held claim, got {other:?}"),
    }
}

#[tokio::test]
async fn a_new_subscriber_claim_on_one_relay_ends_the_old_one_on_another() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::a_new_subscriber_claim_on_one_relay_ends_the_old_one_on_another",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let relay_a = open(cluster.nodes()).await;
    let relay_b = open(cluster.nodes()).await;
    let rid = mailbox(&relay_a).await;
    let unknown: [u8; 16] = rand::random();
    assert!(matches!(
        relay_a.claim_subscriber(&unknown).await.unwrap(),
        Claim::UnknownMailbox
    ));

    let mut on_a = held(relay_a.claim_subscriber(&rid).await.unwrap());
    let mut on_b = held(relay_b.claim_subscriber(&rid).await.unwrap());
    assert!(on_b.epoch > on_a.epoch);
    assert_eq!(ended(&mut on_a, "A").await, ClaimEnd::Replaced);
    assert_eq!(*on_b.kicked.borrow(), None, "the newest claim stands");

    // And back: a claim on A ends B's.
    let mut on_a_again = held(relay_a.claim_subscriber(&rid).await.unwrap());
    assert_eq!(ended(&mut on_b, "B").await, ClaimEnd::Replaced);
    assert_eq!(*on_a_again.kicked.borrow(), None);
    // Deleting the mailbox (through B) ends A's claim as deleted.
    assert!(relay_b.delete_mailbox(&rid).await.unwrap());
    assert_eq!(ended(&mut on_a_again, "A").await, ClaimEnd::Deleted);
}

/// How `claim` (on relay `relay`) ends, within 5 s.
async fn ended(claim: &mut SubscriberClaim, relay: &str) -> ClaimEnd {
    tokio::time::timeout(
        Duration::from_secs(5),
        claim.kicked.wait_for(Option::is_some),
    )
    .await
    .unwrap_or_else(|_| panic!("{relay}'s claim ended within 5 s"))
    .expect("signal open")
    .expect("ended")
}

/// The cluster-wide mailbox count (`max_mailboxes` is checked against it).
async fn mailbox_count(nodes: &[String]) -> i64 {
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
    let mut c = redis::cluster::ClusterClient::new(urls)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let n: Option<i64> = redis::cmd("GET")
        .arg(sealpost_relay::store::cluster::keys::MAILBOX_COUNT)
        .query_async(&mut c)
        .await
        .unwrap();
    n.unwrap_or(0)
}

#[tokio::test]
async fn concurrent_creates_through_two_relays_never_exceed_max_mailboxes() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::concurrent_creates_through_two_relays_never_exceed_max_mailboxes",
    ) else {
        return;
    };
    // One at a time: the other tests create mailboxes, which the count includes.
    let _one = SERIAL.lock().await;
    let before = mailbox_count(cluster.nodes()).await;
    let max = u64::try_from(before).unwrap() + 5;
    let open_with_max = || {
        let mut q = quotas();
        q.max_mailboxes = max;
        ClusterStore::open(ClusterOptions::new(
            cluster.nodes().to_vec(),
            Some(Zeroizing::new(MASTER)),
            q,
        ))
    };
    let (a, b) = (
        open_with_max().await.unwrap(),
        open_with_max().await.unwrap(),
    );
    // 16 creations at once, 8 through each relay, for 5 places left.
    let results = futures_util::future::join_all(
        (0..8).flat_map(|_| [try_mailbox(&a).boxed(), try_mailbox(&b).boxed()]),
    )
    .await;
    let made: Vec<[u8; 16]> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(rid, _)| *rid)
        .collect();
    let refused = results
        .iter()
        .filter(|(_, r)| matches!(r, Err(StoreError::TooManyMailboxes(m)) if *m == max))
        .count();
    assert_eq!((made.len(), refused), (5, 11), "{results:?}");
    assert_eq!(mailbox_count(cluster.nodes()).await, before + 5);
    // A deletion through either relay makes room for one more.
    assert!(b.delete_mailbox(&made[0]).await.unwrap());
    assert_eq!(mailbox_count(cluster.nodes()).await, before + 4);
    let (again, r) = try_mailbox(&a).await;
    r.expect("room for one after a deletion");
    assert!(matches!(
        try_mailbox(&b).await.1,
        Err(StoreError::TooManyMailboxes(_))
    ));
    for rid in made[1..].iter().chain([&again]) {
        assert!(a.delete_mailbox(rid).await.unwrap());
    }
    assert_eq!(mailbox_count(cluster.nodes()).await, before);
}

#[tokio::test]
async fn the_retention_sweep_covers_every_primary_and_spares_newer_envelopes() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::the_retention_sweep_covers_every_primary_and_spares_newer_envelopes",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let s = open(cluster.nodes()).await;
    // Enough mailboxes that every primary holds some (48 random slots missing one of three
    // primaries: about 1 in 10^8).
    let rids = futures_util::future::try_join_all(
        (0..48).map(|_| async { Ok::<_, StoreError>(mailbox(&s).await) }),
    )
    .await
    .unwrap();
    let mut primaries = std::collections::HashSet::new();
    for rid in &rids {
        let slot = sealpost_relay::store::cluster::keys::MailboxKeys::new(rid).slot();
        primaries.insert(primary_port(&cluster.nodes()[0], slot).await.unwrap());
    }
    assert_eq!(primaries.len(), 3, "the mailboxes span every primary");
    let batch: Vec<Append> = rids.iter().map(|r| app(&s, r, 1, b"old")).collect();
    let stored = s.append_batch(&batch).await.unwrap();
    assert!(stored.iter().all(|o| matches!(o, AppendOutcome::Stored(_))));
    // The cutoff lies after every "old" envelope; "new" is stored once the clock (the nodes'
    // and ours are this machine's) has passed it.
    let cutoff = SystemTime::now() + Duration::from_millis(2);
    while SystemTime::now() <= cutoff + Duration::from_millis(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let late = s
        .append_batch(&[app(&s, &rids[0], 2, b"new")])
        .await
        .unwrap();
    assert!(matches!(late[..], [AppendOutcome::Stored(_)]));

    // Others' envelopes left in a shared cluster may go too: at least these 48.
    let removed = s.expire(cutoff).await.unwrap();
    assert!(removed >= 48, "{removed}");
    for rid in &rids[1..] {
        assert_eq!(s.pending(rid).await.unwrap(), 0);
    }
    let left = s.fetch(&rids[0], 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope, Bytes::from_static(b"new"));
    // An expired nonce is still remembered (window 2): its resend is no new envelope.
    assert_eq!(
        s.append_batch(&[app(&s, &rids[1], 1, b"old")])
            .await
            .unwrap(),
        vec![AppendOutcome::Duplicate]
    );
    for rid in &rids {
        assert!(s.delete_mailbox(rid).await.unwrap());
    }
}

#[tokio::test]
async fn a_mailbox_deleted_through_another_relay_takes_no_deposit_through_this_one() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::a_mailbox_deleted_through_another_relay_takes_no_deposit_through_this_one",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let (a, b) = (open(cluster.nodes()).await, open(cluster.nodes()).await);
    let rid = mailbox(&b).await;
    // A looks the mailbox up (and keeps its record: cache.rs) and takes a deposit.
    let found = a.lookup_deposit(&[a.deposit_id_for(&rid)]).await.unwrap();
    assert_eq!(found[0].as_ref().map(|r| r.recipient_id), Some(rid));
    assert!(matches!(
        a.append_batch(&[app(&a, &rid, 1, b"kept")]).await.unwrap()[..],
        [AppendOutcome::Stored(_)]
    ));
    // Deleted through B: whatever A still remembers, the cluster decides.
    assert!(b.delete_mailbox(&rid).await.unwrap());
    assert_eq!(
        a.append_batch(&[app(&a, &rid, 2, b"late")]).await.unwrap(),
        vec![AppendOutcome::UnknownMailbox]
    );
    assert!(matches!(
        a.claim_subscriber(&rid).await.unwrap(),
        Claim::UnknownMailbox
    ));
    assert!(a.fetch(&rid, 0, 10).await.unwrap().is_empty());
    assert!(!a.delete_mailbox(&rid).await.unwrap());
}

/// The deadline the at-rest layer gives appends on a shared store (`Append::not_after`: an
/// epoch's window end plus its settle grace) is enforced by the node's clock: a deposit past
/// it is refused (`Late`) and nothing of it is kept, not even for duplicate detection, so a
/// retry (sealed under the current epoch) is stored. And the listing of the mailboxes' oldest
/// envelopes the at-rest sweep uses shows each mailbox's head by the node's clock, drained
/// and empty mailboxes not at all, with the time it started.
#[tokio::test]
async fn a_deposit_past_its_deadline_is_refused_and_heads_list_each_mailboxs_oldest_envelope() {
    let Some(cluster) = valkey::cluster(
        "cluster_store::a_deposit_past_its_deadline_is_refused_and_heads_list_each_mailboxs_oldest_envelope",
    ) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let s = open(cluster.nodes()).await;
    let (a, b, empty) = (mailbox(&s).await, mailbox(&s).await, mailbox(&s).await);
    // The nodes run on this machine: their clock is this one, read in whole milliseconds.
    let ms = |t: SystemTime| {
        std::time::UNIX_EPOCH
            + Duration::from_millis(
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
            )
    };
    let t0 = ms(SystemTime::now());
    let now = SystemTime::now();
    let late = Append {
        not_after: Some(now - Duration::from_secs(60)),
        ..app(&s, &a, 1, b"sealed under a closed epoch")
    };
    let in_time = Append {
        not_after: Some(now + Duration::from_secs(60)),
        ..app(&s, &a, 2, b"sealed under the current epoch")
    };
    assert_eq!(
        s.append_batch(&[late.clone(), in_time]).await.unwrap(),
        [AppendOutcome::Late, AppendOutcome::Stored(1)]
    );
    assert_eq!(s.pending(&a).await.unwrap(), 1);
    let held = s.fetch(&a, 0, 10).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(&held[0].envelope[..], b"sealed under the current epoch");
    // The retry, under the same nonce, is stored: the refusal kept nothing.
    let retry = Append {
        not_after: Some(now + Duration::from_secs(60)),
        ..late
    };
    assert_eq!(
        s.append_batch(&[retry]).await.unwrap(),
        [AppendOutcome::Stored(2)]
    );

    // A mailbox's stamps never go down: after an envelope stamped by a clock ahead of this
    // one (here: the last stamp set a minute ahead, as a node with a fast clock, or the
    // primary before a failover to a slower one, would have left it), an envelope whose
    // deadline has not passed by this clock is still refused, since it would be stamped
    // after its deadline, behind an envelope that looks newer than its epoch.
    let ahead = SystemTime::now() + Duration::from_secs(60);
    let ahead_ms = ahead
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut conn = redis::cluster::ClusterClient::new(
        cluster
            .nodes()
            .iter()
            .map(|n| format!("redis://{n}/"))
            .collect::<Vec<_>>(),
    )
    .unwrap()
    .get_async_connection()
    .await
    .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{{m:{}}}", hex::encode(a)))
        .arg("lt")
        .arg(ahead_ms)
        .query_async(&mut conn)
        .await
        .unwrap();
    let behind = Append {
        not_after: Some(SystemTime::now() + Duration::from_secs(30)),
        ..app(&s, &a, 3, b"sealed under an epoch its mailbox has passed")
    };
    assert_eq!(
        s.append_batch(&[behind]).await.unwrap(),
        [AppendOutcome::Late]
    );
    let stamped = Append {
        not_after: Some(ahead + Duration::from_secs(30)),
        ..app(&s, &a, 4, b"stamped no earlier than the last")
    };
    assert_eq!(
        s.append_batch(&[stamped]).await.unwrap(),
        [AppendOutcome::Stored(3)]
    );
    assert_eq!(s.pending(&a).await.unwrap(), 3);

    // b: two envelopes, the first acknowledged: its head is the second.
    assert_eq!(
        s.append_batch(&[app(&s, &b, 1, b"first")]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    let t1 = ms(SystemTime::now());
    assert_eq!(
        s.append_batch(&[app(&s, &b, 2, b"second")]).await.unwrap(),
        [AppendOutcome::Stored(2)]
    );
    s.ack(&b, 1).await.unwrap();
    let t2 = SystemTime::now();
    let h = s
        .held_heads()
        .await
        .unwrap()
        .expect("a steady cluster lists its heads");
    let t3 = SystemTime::now();
    assert!(t2 - Duration::from_millis(1) <= h.started && h.started <= t3);
    let head = |rid: &[u8; 16]| {
        let did = s.deposit_id_for(rid);
        let found: Vec<SystemTime> = h
            .heads
            .iter()
            .filter(|(d, _)| *d == did)
            .map(|(_, t)| *t)
            .collect();
        assert!(found.len() <= 1, "{found:?}");
        found.first().copied()
    };
    let ha = head(&a).expect("a holds envelopes");
    assert!(t0 <= ha && ha <= t1, "{ha:?} not in {t0:?}..={t1:?}");
    let hb = head(&b).expect("b holds one");
    assert!(t1 <= hb && hb <= t2, "{hb:?} not in {t1:?}..={t2:?}");
    assert_eq!(head(&empty), None);
    // Drained: gone from the listing (its stream is still there, empty).
    s.ack(&a, 3).await.unwrap();
    let h = s.held_heads().await.unwrap().unwrap();
    assert!(!h.heads.iter().any(|(d, _)| *d == s.deposit_id_for(&a)));
    for rid in [a, b, empty] {
        s.delete_mailbox(&rid).await.unwrap();
    }
}

/// Every relay of a cluster counts on the same at-rest settle grace (each epoch's deadline is
/// its window's end plus it): the first store to ask sets it, later ones get that one back,
/// whatever their own setting.
#[tokio::test]
async fn the_at_rest_settle_grace_is_the_first_relays_for_all() {
    let Some(cluster) =
        valkey::cluster("cluster_store::the_at_rest_settle_grace_is_the_first_relays_for_all")
    else {
        return;
    };
    let _one = SERIAL.lock().await;
    let one = open(cluster.nodes()).await;
    let two = open(cluster.nodes()).await;
    // A shared cluster may have it set already by another test's relay.
    let agreed = one.agreed_settle(Duration::from_secs(7)).await.unwrap();
    assert!(agreed > Duration::ZERO);
    if cluster.dir().is_some() {
        // A cluster of this test's own: this was the first ask.
        assert_eq!(agreed, Duration::from_secs(7));
    }
    assert_eq!(
        two.agreed_settle(Duration::from_secs(9)).await.unwrap(),
        agreed
    );
    assert_eq!(
        one.agreed_settle(Duration::from_secs(11)).await.unwrap(),
        agreed
    );
}

/// Relays sharing a cluster do not all sweep every primary for expiry: a relay leaves alone a
/// primary any relay swept within its own interval (by the primary's clock), a relay with a
/// shorter interval still sweeps as often as it asks, and a store without an interval always
/// sweeps.
#[tokio::test]
async fn relays_share_the_expiry_sweep() {
    let Some(cluster) = valkey::private_cluster("cluster_store::relays_share_the_expiry_sweep")
    else {
        return;
    };
    let every = |every: Option<Duration>| {
        let mut o = ClusterOptions::new(
            cluster.nodes().to_vec(),
            Some(Zeroizing::new(MASTER)),
            quotas(),
        );
        o.expire_every = every;
        ClusterStore::open(o)
    };
    let a = every(Some(Duration::from_secs(600))).await.unwrap();
    let b = every(Some(Duration::from_secs(600))).await.unwrap();
    let eager = every(Some(Duration::from_millis(1))).await.unwrap();
    let always = every(None).await.unwrap();
    // Mailboxes spread over the primaries (random ids).
    let mut rids = Vec::new();
    while rids.len() < 24 {
        rids.push(mailbox(&a).await);
    }
    let fill = |n: u8| {
        let batch: Vec<Append> = rids.iter().map(|r| app(&a, r, n, b"old")).collect();
        let a = &a;
        async move {
            let out = a.append_batch(&batch).await.unwrap();
            assert!(
                out.iter().all(|o| matches!(o, AppendOutcome::Stored(_))),
                "{out:?}"
            );
        }
    };
    let later = || SystemTime::now() + Duration::from_secs(1);
    let held = |s: &'static str| {
        let rids = &rids;
        let a = &a;
        async move {
            let mut n = 0;
            for r in rids {
                n += a.pending(r).await.unwrap();
            }
            (s, n)
        }
    };
    fill(1).await;
    assert_eq!(a.expire(later()).await.unwrap(), 24);
    fill(2).await;
    // Every primary was swept by A a moment ago: B, with the same interval, leaves them.
    assert_eq!(b.expire(later()).await.unwrap(), 0);
    assert_eq!(held("after B").await, ("after B", 24));
    // A relay sweeping every millisecond is due at once, and so is a store without interval.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(eager.expire(later()).await.unwrap(), 24);
    fill(3).await;
    assert_eq!(always.expire(later()).await.unwrap(), 24);
    assert_eq!(held("after all").await, ("after all", 0));
}
