//! Two `serve` processes on one Valkey cluster: what is deposited through one relay is
//! delivered through the other; a subscriber whose relay is killed carries on through the
//! other (issue 12).

mod common;

use common::process::{Serve, cli};
use sealpost_client::tls::Trust;
use sealpost_client::{Client, Mailbox, ResumingSubscription};
use sealpost_core::Suite;
use sealpost_core::e2e::seal_for_invitation;
use sealpost_core::engine::Engine;
use std::time::Duration;

/// Relays A and B (`serve` processes) on `cluster` with the same master key and `extra`
/// arguments: A generates the certificate and B serves the same one (one deployment, one
/// certificate), so one invitation works with both. Returns them and A's certificate file.
fn two_relays(
    cluster: &common::valkey::ValkeyCluster,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Serve, Serve, std::path::PathBuf) {
    let key = dir.join("master.key");
    common::valkey::write_master_key(&key);
    let nodes = cluster.nodes().join(",");
    let key_arg = key.to_string_lossy().into_owned();
    let mut args = vec![
        "--store",
        "cluster",
        "--cluster-nodes",
        nodes.as_str(),
        "--master-key-file",
        key_arg.as_str(),
    ];
    args.extend_from_slice(extra);
    let a = Serve::start(&dir.join("a"), &args, "warn");
    let tls = dir.join("a").join("tls");
    let cert = tls.join("cert.pem").to_string_lossy().into_owned();
    let tls_key = tls.join("key.pem").to_string_lossy().into_owned();
    args.extend(["--cert", cert.as_str(), "--key", tls_key.as_str()]);
    let b = Serve::start(&dir.join("b"), &args, "warn");
    assert_eq!(a.pin, b.pin, "both relays serve one certificate");
    (a, b, tls.join("cert.pem"))
}

#[test]
fn deposit_on_one_relay_deliver_on_another() {
    let Some(cluster) = common::valkey::cluster("deposit_on_one_relay_deliver_on_another") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b, _) = two_relays(&cluster, dir.path(), &[]);

    // A mailbox created through A; its invitation names A only, the mailbox file is pointed
    // at B below.
    let mb = dir.path().join("mb.json");
    let out = cli()
        .args([
            "mailbox", "create", "--relay", &a.addr, "--pin", &a.pin, "--out",
        ])
        .arg(&mb)
        .output()
        .expect("create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invitation = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let sent = cli()
        .args(["send", &invitation, "across relays"])
        .output()
        .expect("send");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let file = std::fs::read_to_string(&mb).expect("mailbox file");
    let on_b = file.replace(&a.addr, &b.addr);
    assert_ne!(file, on_b, "the mailbox file names relay A");
    let mb_b = dir.path().join("mb-b.json");
    std::fs::write(&mb_b, on_b).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mb_b, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let got = cli().arg("recv").arg(&mb_b).output().expect("recv");
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), "across relays\n");
    a.stop();
    b.stop();
}

/// The next delivery's text on a resuming subscription, acknowledged; within a bound above the
/// relays' idle timeout (a killed relay is noticed by its silence).
async fn next_acked(sub: &mut ResumingSubscription<'_>, mb: &Mailbox) -> String {
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a delivery in time")
        .expect("delivery ok")
        .expect("a delivery");
    let text = String::from_utf8(mb.open(&d).unwrap().to_vec()).unwrap();
    sub.ack(d.seq).await.unwrap();
    text
}

/// Deposits `text` through `c` and asserts it was stored.
async fn deposit(c: &Client, mb: &Mailbox, text: &str) {
    let env = seal_for_invitation(
        &Engine::ring(),
        &mb.invitation(),
        &mb.sizes,
        text.as_bytes(),
    )
    .unwrap();
    assert!(c.deposit(env).await.unwrap().is_success());
}

/// The relay a subscriber is on is killed (SIGKILL: no goodbye, its connections fall
/// silent); the subscription resumes on the other relay of the mailbox and delivers the rest
/// there, what was delivered before the kill and not acknowledged included, none of it twice.
#[tokio::test]
async fn a_relay_killed_mid_subscription_the_rest_comes_through_another() {
    let Some(cluster) =
        common::valkey::cluster("a_relay_killed_mid_subscription_the_rest_comes_through_another")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // A short idle timeout, so that the client notices a silent relay within seconds (its
    // keep-alives, every 5 s, keep a live connection open).
    let (a, b, cert) = two_relays(&cluster, dir.path(), &["--idle-timeout-secs", "6"]);
    let pin = sealpost_client::tls::key_pin_of_file(&cert).unwrap();
    let addrs = vec![a.addr.clone(), b.addr.clone()];

    let owner = Client::connect_any(&addrs, Trust::KeyPin(pin))
        .await
        .unwrap();
    let mb = owner.create(Suite::ChaCha20Poly1305).await.unwrap();
    assert_eq!(mb.relays, addrs, "the mailbox names both relays");
    for i in 1..=3 {
        deposit(&owner, &mb, &format!("m{i}")).await;
    }
    let reader = Client::connect_any(&addrs, Trust::KeyPin(pin))
        .await
        .unwrap();
    let mut sub = reader
        .subscribe_resuming(&mb.access(), 8, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(next_acked(&mut sub, &mb).await, "m1");
    // m2 is delivered and not yet acknowledged when its relay dies.
    let d2 = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("m2 in time")
        .unwrap()
        .unwrap();
    assert_eq!(&mb.open(&d2).unwrap()[..], b"m2");

    let killed = reader.addr().to_owned();
    let (dead, survivor) = if killed == a.addr { (a, b) } else { (b, a) };
    dead.stop();
    let sender = Client::connect(&survivor.addr, Trust::KeyPin(pin))
        .await
        .unwrap();
    deposit(&sender, &mb, "m4").await;
    sub.ack(d2.seq).await.unwrap();
    for want in ["m3", "m4"] {
        assert_eq!(next_acked(&mut sub, &mb).await, want);
    }
    assert_eq!(reader.addr(), survivor.addr, "moved to the surviving relay");
    // Deposited after the move, pushed on the new relay.
    deposit(&sender, &mb, "m5").await;
    assert_eq!(next_acked(&mut sub, &mb).await, "m5");
    reader.delete(&mb.access()).await.unwrap();
    survivor.stop();
}

/// Asks every node of `cluster` for an RDB snapshot (the nodes run with `save ""`, so there is
/// none otherwise) and waits until each node directory has one.
fn snapshot_every_node(cluster: &common::valkey::ValkeyCluster, dir: &std::path::Path) {
    for node in cluster.nodes() {
        let (host, port) = node.rsplit_once(':').expect("host:port");
        let ok = std::process::Command::new("valkey-cli")
            .args(["-h", host, "-p", port, "SAVE"])
            .output()
            .expect("valkey-cli runs");
        assert!(ok.status.success(), "SAVE on {node}");
    }
    let rdbs = common::process::files_named(dir, "dump.rdb");
    assert_eq!(
        rdbs.len(),
        cluster.nodes().len(),
        "one RDB per node: {rdbs:?}"
    );
}

#[test]
fn no_plaintext_in_valkeys_files_or_the_relays_logs() {
    let Some(cluster) =
        common::valkey::private_cluster("no_plaintext_in_valkeys_files_or_the_relays_logs")
    else {
        return;
    };
    let nodes_dir = cluster
        .dir()
        .expect("a private cluster has its directory")
        .to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("master.key");
    common::valkey::write_master_key(&key);
    let nodes = cluster.nodes().join(",");
    let key_arg = key.to_string_lossy().into_owned();
    let args = [
        "--store",
        "cluster",
        "--cluster-nodes",
        nodes.as_str(),
        "--master-key-file",
        key_arg.as_str(),
    ];
    // Everything the relay would log at its most talkative.
    let relay = Serve::start(&dir.path().join("relay"), &args, "debug");
    let mb = dir.path().join("mb.json");
    let invitation = common::process::create_mailbox(&relay.addr, &relay.pin, &mb);
    let canary = "sealpost-canary-5f1d9a3c-the-relay-must-never-see-this";
    let sent = cli()
        .args(["send", &invitation, canary])
        .output()
        .expect("send");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // Held: in the primaries' and replicas' AOFs and in a snapshot of each node.
    snapshot_every_node(&cluster, &nodes_dir);
    let hits = common::process::files_containing(&nodes_dir, canary.as_bytes());
    assert!(hits.is_empty(), "plaintext in Valkey's files: {hits:?}");

    // Delivered and acknowledged: the recipient reads it, nothing else does.
    let got = cli().arg("recv").arg(&mb).output().expect("recv");
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), format!("{canary}\n"));
    snapshot_every_node(&cluster, &nodes_dir);
    let hits = common::process::files_containing(&nodes_dir, canary.as_bytes());
    assert!(hits.is_empty(), "plaintext in Valkey's files: {hits:?}");

    let log = relay.stop();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the log was at debug level"
    );
    assert!(!log.contains(canary), "plaintext in the relay's log");
    let files = common::process::files_containing(&dir.path().join("relay"), canary.as_bytes());
    assert!(
        files.is_empty(),
        "plaintext in the relay's data directory: {files:?}"
    );
}
