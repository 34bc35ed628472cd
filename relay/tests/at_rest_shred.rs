//! Crypto-shredding at rest (issue 15), proved on the disk store: every envelope deposited is
//! recorded as it went on the wire; the raw data directory (and, where the test may mount one,
//! a whole ext4 filesystem image, free blocks and journal included) holds no 32-byte window of
//! any of them, neither while they are held nor after they were delivered, acknowledged and
//! their epoch's key destroyed; and the destroyed key's wrapped bytes are gone from the
//! keyring file (and from the image).

mod common;

use bytes::Bytes;
use sealpost_client::Client;
use sealpost_core::Suite;
use sealpost_relay::Relay;
use sealpost_relay::settings::{Settings, Validated};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SLOT_LEN: usize = sealpost_relay::store::at_rest::slots::SLOT_LEN;
const DEDUPE_SHARD: u8 = sealpost_relay::store::at_rest::keyring::DEDUPE_SLOT.shard;
const WINDOW: usize = 32;

/// Disk-store settings; `at_rest_epoch_secs = 1` unless `epoch` says otherwise.
fn settings_with(data: &Path, key: &Path, at_rest: bool, epoch: u64) -> Validated {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {data:?}\nstore = \"disk\"\n\
         min_free_disk_bytes = 0\nmaster_key_file = {key:?}\nat_rest = {at_rest}\nat_rest_epoch_secs = {epoch}\n"
    );
    Settings::from_toml(&text).unwrap().validate().unwrap()
}

fn settings(data: &Path, key: &Path, at_rest: bool) -> Validated {
    settings_with(data, key, at_rest, 1)
}

fn master_key(dir: &Path) -> PathBuf {
    let key = dir.join("master.key");
    std::fs::write(&key, "3c".repeat(32)).unwrap();
    key
}

/// Every 32-byte window of the recorded envelopes, found by a cheap 8-byte prefix first.
struct Needles {
    prefixes: HashSet<u64>,
    windows: HashSet<[u8; WINDOW]>,
}

impl Needles {
    fn new(envelopes: &[Bytes]) -> Self {
        let mut n = Self {
            prefixes: HashSet::new(),
            windows: HashSet::new(),
        };
        for e in envelopes {
            for w in e.windows(WINDOW) {
                n.prefixes
                    .insert(u64::from_le_bytes(w[..8].try_into().unwrap()));
                n.windows.insert(w.try_into().unwrap());
            }
        }
        n
    }

    /// How many windows of `bytes` are windows of a recorded envelope. All-zero 4 KiB blocks
    /// (most of a filesystem image) are skipped: no envelope window is all zeros.
    fn hits(&self, bytes: &[u8]) -> usize {
        let mut hits = 0;
        let mut at = 0;
        while at + WINDOW <= bytes.len() {
            if at % 4096 == 0 && bytes.len() - at >= 4096 + WINDOW {
                let block = &bytes[at..at + 4096 + WINDOW];
                if block.iter().all(|&b| b == 0) {
                    at += 4096;
                    continue;
                }
            }
            let p = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            if self.prefixes.contains(&p) && self.windows.contains(&bytes[at..at + WINDOW]) {
                hits += 1;
            }
            at += 1;
        }
        hits
    }

    /// Files under `dir` with hits, and how many.
    fn scan_dir(&self, dir: &Path) -> Vec<(PathBuf, usize)> {
        common::process::files_under(dir)
            .into_iter()
            // The store deletes files in the background (compaction, old journals).
            .filter_map(|p| {
                let n = self.hits(&std::fs::read(&p).ok()?);
                (n > 0).then_some((p, n))
            })
            .collect()
    }
}

/// Opens the relay `v` describes and a client of it.
async fn open_relay(v: &Validated) -> (Relay, Client) {
    let relay = Relay::open(v).await.unwrap();
    let c = Client::connect_pinned(
        &relay.handle().local_addr().to_string(),
        relay.handle().pin(),
    )
    .await
    .unwrap();
    (relay, c)
}

/// Deposits `per_mailbox` 1 KiB envelopes into each of `mailboxes` new mailboxes; returns the
/// mailboxes and the envelopes as sent.
async fn deposit(
    c: &Client,
    mailboxes: usize,
    per_mailbox: usize,
) -> (Vec<sealpost_client::Mailbox>, Vec<Bytes>) {
    let mut sent = Vec::new();
    let mut mbs = Vec::new();
    for m in 0..mailboxes {
        let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
        // One pipelined DEPOSIT stream per mailbox: one round trip, not one per envelope.
        let (mut tx, mut results) = c.open_deposit().await.unwrap();
        for i in 0..per_mailbox {
            let text = format!("message {i} for mailbox {m}: {}", "x".repeat(700));
            let env = common::seal(c, &mb, text.as_bytes()).await;
            tx.send(&env).await.unwrap();
            sent.push(env);
        }
        tx.finish();
        let mut answered = 0;
        while let Some(statuses) = results.next().await.unwrap() {
            assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
            answered += statuses.len();
        }
        assert_eq!(answered, per_mailbox);
        mbs.push(mb);
    }
    (mbs, sent)
}

/// Reads every envelope of every mailbox, checks it, and acknowledges it.
async fn drain(c: &Client, mbs: &[sealpost_client::Mailbox], per_mailbox: usize) {
    for mb in mbs {
        let mut sub = c.subscribe(&mb.access(), 64).await.unwrap();
        let mut last = 0;
        for _ in 0..per_mailbox {
            let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("delivery in time")
                .unwrap()
                .expect("a delivery");
            assert!(mb.open(&d).unwrap().starts_with(b"message "));
            last = d.seq;
        }
        sub.ack(last).await.unwrap();
        common::end_subscription(&mut sub).await;
    }
}

/// The live epoch-key slots of the keyring file (a slot's first byte is 1 while it holds a
/// key; the dedupe key, never destroyed, has shard byte 255).
fn live_slots(data: &Path) -> Vec<Vec<u8>> {
    let raw = std::fs::read(data.join(sealpost_relay::open::KEYRING_FILE)).unwrap_or_default();
    raw.chunks(SLOT_LEN)
        .filter(|s| s[0] == 1 && s[1] != DEDUPE_SHARD)
        .map(|s| s.to_vec())
        .collect()
}

/// Polls (the sweep runs every 250 ms with 1 s epochs) until no key is live.
async fn wait_for_shredding(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !live_slots(data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the epoch keys were not destroyed within 15 s of draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the scenario with the data directory at `data`; `scan` looks for the envelopes and
/// the wrapped keys wherever the test can see them (the directory, or a whole image).
async fn shred_scenario(data: &Path, key: &Path, scan: &dyn Fn(&Needles) -> Vec<(PathBuf, usize)>) {
    let (relay, c) = open_relay(&settings(data, key, true)).await;
    assert!(
        relay.store_announcement().contains("sealed at rest"),
        "{}",
        relay.store_announcement()
    );
    let (mbs, sent) = deposit(&c, 3, 20).await;
    let needles = Needles::new(&sent);
    // Held: in fjall's journal, and after a flush in its tables too.
    relay.disk_store().unwrap().reclaim_space().unwrap();
    let held = scan(&needles);
    assert!(held.is_empty(), "envelope bytes while held: {held:?}");
    let keys = live_slots(data);
    assert!(!keys.is_empty(), "no epoch key in the keyring");
    drain(&c, &mbs, 20).await;
    wait_for_shredding(data).await;
    relay.disk_store().unwrap().reclaim_space().unwrap();
    let after = scan(&needles);
    assert!(
        after.is_empty(),
        "envelope bytes after shredding: {after:?}"
    );
    // The destroyed keys' wrapped bytes are nowhere either.
    let wrapped: Vec<Bytes> = keys
        .iter()
        .map(|s| Bytes::copy_from_slice(&s[18..78]))
        .collect();
    let gone = scan(&Needles::new(&wrapped));
    assert!(
        gone.is_empty(),
        "wrapped epoch keys left after destruction: {gone:?}"
    );
    c.close().await;
    relay.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn shredded_envelopes_leave_no_window_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let key = master_key(dir.path());
    let data = dir.path().join("data");
    shred_scenario(&data, &key, &|n| n.scan_dir(&data)).await;
}

/// The control: with at-rest sealing off the same scan finds the envelopes, so its zero
/// above means something.
#[tokio::test]
async fn the_scan_finds_envelopes_stored_as_received() {
    let dir = tempfile::tempdir().unwrap();
    let key = master_key(dir.path());
    let data = dir.path().join("data");
    let (relay, c) = open_relay(&settings(&data, &key, false)).await;
    let (_, sent) = deposit(&c, 1, 2).await;
    let hits = Needles::new(&sent).scan_dir(&data);
    assert!(
        !hits.is_empty(),
        "the scan found nothing stored as received"
    );
    assert!(live_slots(&data).is_empty());
    c.close().await;
    relay.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A loop-mounted ext4 image as the data directory: the scan then covers the whole
/// filesystem, free blocks and the ext4 journal included. Mounting needs root and loop
/// devices; without them the test says so and checks nothing (the directory test above still
/// runs). To run it: as root with `losetup` and `mkfs.ext4` installed.
#[tokio::test]
async fn shredded_envelopes_leave_no_window_in_a_whole_filesystem_image() {
    let dir = tempfile::tempdir().unwrap();
    let key = master_key(dir.path());
    let image = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let made = std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .is_ok()
        && run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        );
    if !made
        || !run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mnt.as_os_str(),
            ],
        )
    {
        eprintln!(
            "SKIPPED: cannot make and loop-mount an ext4 image here (needs root, losetup and \
             mkfs.ext4); the data-directory scan still ran. Run this test as root to scan a \
             whole filesystem, free blocks included."
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let data = mnt.join("data");
    let scan = |n: &Needles| {
        // Everything the filesystem wrote reaches the image before it is read.
        assert!(
            std::process::Command::new("sync")
                .status()
                .unwrap()
                .success()
        );
        let bytes = std::fs::read(&image).unwrap();
        let hits = n.hits(&bytes);
        if hits > 0 {
            vec![(image.clone(), hits)]
        } else {
            Vec::new()
        }
    };
    shred_scenario(&data, &key, &scan).await;
}

/// `rotate-master-key` re-wraps the keyring too: an envelope sealed at rest before the
/// rotation is delivered after it, under the new key.
#[tokio::test]
async fn envelopes_sealed_at_rest_survive_a_master_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let old = master_key(dir.path());
    let data = dir.path().join("data");
    // One epoch for both envelopes (a 1 s window might split them).
    let (relay, c) = open_relay(&settings_with(&data, &old, true, 3600)).await;
    let (mbs, _) = deposit(&c, 1, 2).await;
    c.close().await;
    relay.shutdown(Duration::from_secs(5)).await.unwrap();
    let new = dir.path().join("new.key");
    std::fs::write(&new, "c3".repeat(32)).unwrap();
    let out = common::process::cli()
        .args(["rotate-master-key", "--data-dir"])
        .arg(&data)
        .arg("--old-key-file")
        .arg(&old)
        .arg("--new-key-file")
        .arg(&new)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("re-wrapped 2 at-rest keys (epoch keys and the dedupe key)"),
        "{stderr}"
    );
    let (relay, c) = open_relay(&settings_with(&data, &new, true, 3600)).await;
    drain(&c, &mbs, 2).await;
    c.close().await;
    relay.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The epoch keys in the cluster's keyring hash: each one's shard and wrapped bytes (fields
/// of an epoch key are the shard and the window start, 9 bytes; the dedupe key, never
/// destroyed, has shard 255 and is left out).
async fn cluster_epoch_keys(nodes: &[String]) -> Vec<(u8, Bytes)> {
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
    let mut conn = redis::cluster::ClusterClient::new(urls)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(sealpost_relay::store::at_rest::valkey::KEYRING_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    all.into_iter()
        .filter(|(f, _)| f.len() == 9 && f[0] != DEDUPE_SHARD)
        .map(|(f, v)| (f[0], Bytes::copy_from_slice(&v[8..])))
        .collect()
}

/// The wrapped epoch keys in the cluster's keyring hash.
async fn cluster_keys(nodes: &[String]) -> Vec<Bytes> {
    cluster_epoch_keys(nodes)
        .await
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

/// Polls until none of `wrapped` is in the cluster's keyring hash or in any node's files
/// (AOF and RDB: the relay has every node rewrite the one and replace the other), calling
/// `sweep` between looks (the relays' sweeps, where the test runs them itself; a rewrite of
/// the AOF already running when a key went is asked for again at the next sweep).
async fn wait_until_keys_leave_the_cluster<F, Fut>(
    nodes: &[String],
    nodes_dir: &Path,
    wrapped: &[Bytes],
    mut sweep: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let keys = Needles::new(wrapped);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sweep().await;
        let live = cluster_keys(nodes).await;
        let still: Vec<&Bytes> = wrapped.iter().filter(|k| live.contains(k)).collect();
        // No snapshot is taken here: the relay has every node replace its RDB snapshot after
        // the AOF rewrite, and a snapshot taken while a key lived must not hold it after.
        if still.is_empty() && keys.scan_dir(nodes_dir).is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "epoch keys still live ({}) or in Valkey's files: {:?}",
            still.len(),
            keys.scan_dir(nodes_dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every node for an RDB snapshot (the test cluster saves none by itself).
fn snapshot_every_node(nodes: &[String]) {
    for node in nodes {
        let (host, port) = node.rsplit_once(':').unwrap();
        let out = std::process::Command::new("valkey-cli")
            .args(["-h", host, "-p", port, "SAVE"])
            .output()
            .unwrap();
        assert!(out.status.success(), "SAVE on {node}");
    }
}

/// The cluster store: nothing of the envelopes in any node's AOF or RDB files while held or
/// after their epoch key is destroyed; and once destroyed, the wrapped key has left every
/// node's files too (the relay has every node rewrite its AOF). The keys go because the
/// mailboxes drained (1 s epochs, a 1 s settle grace), long before the retention bound (an
/// hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_shredded_envelopes_leave_nothing_in_valkeys_files() {
    let Some(cluster) = common::valkey::private_cluster(
        "cluster_store_shredded_envelopes_leave_nothing_in_valkeys_files",
    ) else {
        return;
    };
    let nodes_dir = cluster.dir().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    common::valkey::write_master_key(&key);
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\nstore = \"cluster\"\n\
         cluster_nodes = {:?}\nmaster_key_file = {key:?}\nat_rest_epoch_secs = 1\nat_rest_settle_secs = 1\n\
         retention_secs = 3600\n",
        dir.path().join("relay"),
        cluster.nodes(),
    );
    let v = Settings::from_toml(&text).unwrap().validate().unwrap();
    let (relay, c) = open_relay(&v).await;
    assert!(
        relay.store_announcement().contains("sealed at rest"),
        "{}",
        relay.store_announcement()
    );
    let (mbs, sent) = deposit(&c, 2, 5).await;
    let needles = Needles::new(&sent);
    let wrapped = cluster_keys(cluster.nodes()).await;
    assert!(!wrapped.is_empty(), "no epoch key in the cluster's keyring");
    snapshot_every_node(cluster.nodes());
    let held = needles.scan_dir(&nodes_dir);
    assert!(
        held.is_empty(),
        "envelope bytes in Valkey's files while held: {held:?}"
    );
    drain(&c, &mbs, 5).await;
    // Destroyed by the relay's own sweeper once the mailboxes drained and the settle grace
    // passed, then every node's AOF rewritten and its RDB snapshot replaced by the relay (the
    // snapshot taken above, while the keys lived, holds them).
    wait_until_keys_leave_the_cluster(cluster.nodes(), &nodes_dir, &wrapped, || async {}).await;
    let after = needles.scan_dir(&nodes_dir);
    assert!(
        after.is_empty(),
        "envelope bytes in Valkey's files after shredding: {after:?}"
    );
    c.close().await;
    relay.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// One relay of a cluster deployment, sealing at rest under 1 s epochs with a 1 s settle
/// grace and a week's retention, as `Relay::open` builds it (without the server and its
/// sweeper: tests sweep themselves).
async fn cluster_relay(
    nodes: &[String],
) -> sealpost_relay::store::at_rest::AtRest<sealpost_relay::store::cluster::ClusterStore> {
    use sealpost_relay::store::at_rest::{AtRest, AtRestOptions, keyring::Keyring, valkey};
    use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
    let quotas = sealpost_relay::store::Quotas {
        max_envelopes: 100,
        max_bytes: 1 << 20,
        max_mailboxes: 16,
        dedupe_window: 4,
    };
    let store = ClusterStore::open(ClusterOptions::new(
        nodes.to_vec(),
        Some(zeroize::Zeroizing::new(CLUSTER_MASTER)),
        quotas,
    ))
    .await
    .unwrap();
    let keys = valkey::ValkeyKeys::open(nodes).await.unwrap();
    let keyring = Keyring::open(&CLUSTER_MASTER, Box::new(keys))
        .await
        .unwrap();
    let mut opts = AtRestOptions::new();
    opts.window = Duration::from_secs(1);
    opts.shared = Some(Duration::from_secs(1));
    AtRest::new(store, keyring, opts)
}

const CLUSTER_MASTER: [u8; 32] = [9; 32];

/// The protocol's idempotency promise holds across epochs and relays: a sender's retry that
/// reaches another relay of the cluster after the epoch window turned is DUPLICATE and stored
/// once, another envelope under the same nonce ID_REUSED. (The memory and disk stores are
/// tested in the unit tests, with the window forced instead of waited for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_a_retry_at_another_relay_in_another_epoch_is_a_duplicate() {
    use sealpost_relay::store::at_rest::record;
    use sealpost_relay::store::{Append, AppendOutcome, MailboxRecord, Store};
    let Some(cluster) = common::valkey::private_cluster(
        "cluster_store_a_retry_at_another_relay_in_another_epoch_is_a_duplicate",
    ) else {
        return;
    };
    let one = cluster_relay(cluster.nodes()).await;
    let two = cluster_relay(cluster.nodes()).await;
    let rid = [5u8; 16];
    let did = one.deposit_id_for(&rid);
    assert_eq!(two.deposit_id_for(&rid), did);
    one.create_mailbox(MailboxRecord::new(
        rid,
        did,
        Suite::ChaCha20Poly1305,
        [1; 32],
        sealpost_core::keys::RecipientSecret([2; 32]),
    ))
    .await
    .unwrap();
    let app = |nonce: u8, fill: u8| Append {
        deposit_id: did,
        nonce: [nonce; 12],
        envelope: Bytes::from(vec![fill; 300]),
        not_after: None,
    };
    assert_eq!(
        one.append_batch(&[app(1, 1)]).await.unwrap(),
        [AppendOutcome::Stored(1)]
    );
    let held = one.inner().fetch(&rid, 0, 10).await.unwrap();
    let first = record::epoch_of(&held[0].envelope).unwrap();
    // Wall time is the signal here: the other relay's window must have moved on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= first.start
    {
        assert!(Instant::now() < deadline, "the clock did not move on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        two.append_batch(&[app(1, 1), app(1, 9), app(2, 2)])
            .await
            .unwrap(),
        [
            AppendOutcome::Duplicate,
            AppendOutcome::IdReused,
            AppendOutcome::Stored(2)
        ]
    );
    let held = two.inner().fetch(&rid, 0, 10).await.unwrap();
    assert_eq!(held.len(), 2);
    assert_ne!(record::epoch_of(&held[1].envelope).unwrap(), first);
    let got = two.fetch(&rid, 0, 10).await.unwrap();
    assert_eq!(got[0].envelope, app(1, 1).envelope);
    assert_eq!(got[1].envelope, app(2, 2).envelope);
}

/// Two relays sharing a cluster and its keyring: an epoch's key is destroyed once the
/// mailboxes of its shard drained and its settle grace passed, whichever relay sealed its
/// envelopes, long before the retention bound (a week here), and its wrapped bytes leave every
/// node's files; a mailbox still holding an envelope keeps its epoch's key (through every
/// sweep of both relays) until it drains too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_two_relays_shred_a_drained_epoch_and_keep_a_held_one() {
    use sealpost_relay::store::at_rest::shard_of;
    use sealpost_relay::store::{Append, AppendOutcome, MailboxRecord, Store};
    let Some(cluster) = common::valkey::private_cluster(
        "cluster_store_two_relays_shred_a_drained_epoch_and_keep_a_held_one",
    ) else {
        return;
    };
    let nodes_dir = cluster.dir().unwrap().to_owned();
    let one = cluster_relay(cluster.nodes()).await;
    let two = cluster_relay(cluster.nodes()).await;
    // Two mailboxes in different shards, so that their epochs' keys differ.
    let drained: [u8; 16] = [1; 16];
    let held = (2..=255u8)
        .map(|i| [i; 16])
        .find(|r| shard_of(&one.deposit_id_for(r)) != shard_of(&one.deposit_id_for(&drained)))
        .unwrap();
    let (dshard, hshard) = (
        shard_of(&one.deposit_id_for(&drained)),
        shard_of(&one.deposit_id_for(&held)),
    );
    for rid in [drained, held] {
        one.create_mailbox(MailboxRecord::new(
            rid,
            one.deposit_id_for(&rid),
            Suite::ChaCha20Poly1305,
            [1; 32],
            sealpost_core::keys::RecipientSecret([2; 32]),
        ))
        .await
        .unwrap();
    }
    let app = |rid: &[u8; 16], nonce: u8| Append {
        deposit_id: one.deposit_id_for(rid),
        nonce: [nonce; 12],
        envelope: Bytes::from(vec![nonce; 300]),
        not_after: None,
    };
    // Each relay deposits into both mailboxes.
    for (relay, nonce) in [(&one, 1u8), (&two, 2)] {
        let out = relay
            .append_batch(&[app(&drained, nonce), app(&held, nonce)])
            .await
            .unwrap();
        assert!(
            out.iter().all(|o| matches!(o, AppendOutcome::Stored(_))),
            "{out:?}"
        );
    }
    let keys = cluster_epoch_keys(cluster.nodes()).await;
    let of = |shard: u8| -> Vec<Bytes> {
        keys.iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, k)| k.clone())
            .collect()
    };
    let (dkeys, hkeys) = (of(dshard), of(hshard));
    assert!(!dkeys.is_empty() && !hkeys.is_empty(), "{keys:?}");
    // The drained mailbox is read and acknowledged through the other relay.
    let got = two.fetch(&drained, 0, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].envelope, app(&drained, 1).envelope);
    two.ack(&drained, got[1].seq).await.unwrap();
    let (r1, r2) = (&one, &two);
    let sweep_both = move || async move {
        r1.sweep().await.unwrap();
        r2.sweep().await.unwrap();
    };
    wait_until_keys_leave_the_cluster(cluster.nodes(), &nodes_dir, &dkeys, sweep_both).await;
    // Both relays forgot them; the held mailbox's keys are still there, and open its
    // envelopes through either relay.
    for relay in [&one, &two] {
        assert!(
            relay
                .keyring()
                .epochs()
                .iter()
                .all(|(e, _)| e.shard != dshard)
        );
    }
    let live = cluster_keys(cluster.nodes()).await;
    assert!(
        hkeys.iter().all(|k| live.contains(k)),
        "a held epoch's key went"
    );
    for relay in [&one, &two] {
        let got = relay.fetch(&held, 0, 10).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].envelope, app(&held, 1).envelope);
        assert_eq!(got[1].envelope, app(&held, 2).envelope);
    }
    // Drained too, its keys go as well.
    one.ack(&held, 2).await.unwrap();
    wait_until_keys_leave_the_cluster(cluster.nodes(), &nodes_dir, &hkeys, sweep_both).await;
}

/// A relay that destroys an epoch key and dies before it has the nodes rewrite their files
/// leaves the rewrite owed in the cluster, and the next relay to sweep pays it: the wrapped key
/// leaves every node's AOF and RDB although the relay that destroyed it never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_rewrite_owed_by_a_dead_relay_is_paid_by_another() {
    use sealpost_relay::store::at_rest::keyring::{KeyringStore, StoredKey, WRAPPED_LEN};
    use sealpost_relay::store::at_rest::record::EpochId;
    use sealpost_relay::store::at_rest::valkey::{OWED_KEY, ValkeyKeys};
    let Some(cluster) = common::valkey::private_cluster(
        "cluster_a_rewrite_owed_by_a_dead_relay_is_paid_by_another",
    ) else {
        return;
    };
    let nodes_dir = cluster.dir().unwrap().to_owned();
    let epoch = EpochId {
        start: 60,
        shard: 3,
    };
    // Distinct bytes throughout, so that the scan means something (these stand for a wrapped
    // key; the keyring store does not open them).
    let mut wrapped = [0u8; WRAPPED_LEN];
    for (i, b) in wrapped.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    let dead = ValkeyKeys::open(cluster.nodes()).await.unwrap();
    dead.put(&StoredKey {
        epoch,
        end: 120,
        wrapped,
    })
    .await
    .unwrap();
    snapshot_every_node(cluster.nodes());
    let needle = Needles::new(&[Bytes::copy_from_slice(&wrapped)]);
    assert!(
        !needle.scan_dir(&nodes_dir).is_empty(),
        "the key is not in the nodes' files: the scan would prove nothing"
    );
    dead.remove(epoch).await.unwrap();
    // It dies here: no settle.
    drop(dead);
    let owed = || async {
        let urls: Vec<String> = cluster
            .nodes()
            .iter()
            .map(|n| format!("redis://{n}/"))
            .collect();
        let mut conn = redis::cluster::ClusterClient::new(urls)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap();
        let v: Option<i64> = redis::cmd("GET")
            .arg(OWED_KEY)
            .query_async(&mut conn)
            .await
            .unwrap();
        v
    };
    assert_eq!(owed().await, Some(1));
    let other = ValkeyKeys::open(cluster.nodes()).await.unwrap();
    assert!(!other.rewrite_owed(), "this relay destroyed nothing itself");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        other.settle().await;
        if owed().await.is_none() && needle.scan_dir(&nodes_dir).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owed rewrite was not paid: counter {:?}, key in {:?}",
            owed().await,
            needle.scan_dir(&nodes_dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
