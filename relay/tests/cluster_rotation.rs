//! `rotate-master-key --cluster-nodes`: the cluster store's secrets in Valkey (mailbox
//! records, the deposit-id key, the at-rest keyring) re-sealed under a new master key, with
//! the relays stopped. Needs `valkey-server` (see common/valkey.rs).

mod common;

use bytes::Bytes;
use sealpost_core::Suite;
use sealpost_relay::store::at_rest::{AtRest, AtRestOptions, keyring::Keyring, valkey};
use sealpost_relay::store::cluster::{ClusterOptions, ClusterStore};
use sealpost_relay::store::{Append, AppendOutcome, MailboxRecord, Quotas, Store, StoreError};
use std::path::Path;

const OLD: [u8; 32] = [0x09; 32];
const NEW: [u8; 32] = [0x5d; 32];

fn quotas() -> Quotas {
    Quotas {
        max_envelopes: 100,
        max_bytes: 1 << 20,
        max_mailboxes: 16,
        dedupe_window: 4,
    }
}

/// The cluster store under `master`, sealed at rest, as a relay opens it.
async fn open(nodes: &[String], master: &[u8; 32]) -> Result<AtRest<ClusterStore>, StoreError> {
    let store = ClusterStore::open(ClusterOptions::new(
        nodes.to_vec(),
        Some(zeroize::Zeroizing::new(*master)),
        quotas(),
    ))
    .await?;
    let keys = valkey::ValkeyKeys::open(nodes).await.unwrap();
    let keyring = Keyring::open(master, Box::new(keys)).await.unwrap();
    Ok(AtRest::new(store, keyring, AtRestOptions::new()))
}

fn key_file(dir: &Path, name: &str, key: &[u8; 32]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, hex::encode(key)).unwrap();
    p
}

fn app(did: [u8; 16], nonce: u8, fill: u8) -> Append {
    Append {
        deposit_id: did,
        nonce: [nonce; 12],
        envelope: Bytes::from(vec![fill; 400]),
        not_after: None,
    }
}

/// Runs the command; its standard error.
fn rotate(nodes: &[String], old: &Path, new: &Path) -> String {
    let out = common::process::cli()
        .args(["rotate-master-key", "--cluster-nodes", &nodes.join(",")])
        .arg("--old-key-file")
        .arg(old)
        .arg("--new-key-file")
        .arg(new)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Mailboxes and envelopes written under the old key are read under the new one after the
/// rotation (same deposit ids, same envelopes), a retry of an envelope from before is still
/// DUPLICATE, the old key no longer opens the cluster, and running the command again changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_store_is_rotated_in_place() {
    let Some(cluster) = common::valkey::private_cluster("the_cluster_store_is_rotated_in_place")
    else {
        return;
    };
    let nodes = cluster.nodes();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        key_file(dir.path(), "old.key", &OLD),
        key_file(dir.path(), "new.key", &NEW),
    );
    let before = open(nodes, &OLD).await.unwrap();
    let mut dids = Vec::new();
    for i in 1..=2u8 {
        let rid = [i; 16];
        let did = before.deposit_id_for(&rid);
        before
            .create_mailbox(MailboxRecord::new(
                rid,
                did,
                Suite::ChaCha20Poly1305,
                [i; 32],
                sealpost_core::keys::RecipientSecret([i + 10; 32]),
            ))
            .await
            .unwrap();
        assert_eq!(
            before
                .append_batch(&[app(did, 1, i), app(did, 2, i + 100)])
                .await
                .unwrap(),
            [AppendOutcome::Stored(1), AppendOutcome::Stored(2)]
        );
        dids.push(did);
    }
    drop(before);

    let said = rotate(nodes, &old, &new);
    assert!(
        said.contains("2 mailbox records, and the deposit-id key"),
        "{said}"
    );
    let again = rotate(nodes, &old, &new);
    assert!(
        again.contains(
            "0 mailbox records, not (already under the new key) the deposit-id key, 0 at-rest keys"
        ),
        "{again}"
    );

    let refused = open(nodes, &OLD)
        .await
        .err()
        .expect("the old key is refused");
    assert!(refused.to_string().contains("master key"), "{refused}");

    let after = open(nodes, &NEW).await.unwrap();
    for (i, did) in (1..=2u8).zip(&dids) {
        let rid = [i; 16];
        assert_eq!(after.deposit_id_for(&rid), *did);
        let rec = after
            .mailbox(&rid)
            .await
            .unwrap()
            .expect("the mailbox record");
        assert_eq!(rec.recipient_secret.0, [i + 10; 32]);
        let by_did = after.lookup_deposit(&[*did]).await.unwrap();
        assert_eq!(by_did[0].as_ref().map(|r| r.recipient_id), Some(rid));
        let got = after.fetch(&rid, 0, 10).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].envelope, app(*did, 1, i).envelope);
        assert_eq!(got[1].envelope, app(*did, 2, i + 100).envelope);
        assert_eq!(
            after
                .append_batch(&[app(*did, 1, i), app(*did, 1, 77)])
                .await
                .unwrap(),
            [AppendOutcome::Duplicate, AppendOutcome::IdReused]
        );
    }
}

/// The command's bad inputs, none of which needs a cluster: each fails with a message saying
/// what to give, before anything is changed.
#[test]
fn bad_invocations_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        key_file(dir.path(), "old.key", &OLD),
        key_file(dir.path(), "new.key", &NEW),
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let out = common::process::cli()
            .arg("rotate-master-key")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&["--new-key-file".as_ref(), new.as_os_str()]);
    assert!(said.contains("--data-dir"), "{said}");
    let said = run(&[
        "--cluster-nodes".as_ref(),
        "127.0.0.1:1".as_ref(),
        "--new-key-file".as_ref(),
        new.as_os_str(),
    ]);
    assert!(said.contains("give it with --old-key-file"), "{said}");
    let said = run(&[
        "--cluster-nodes".as_ref(),
        "127.0.0.1:1".as_ref(),
        "--old-key-file".as_ref(),
        old.as_os_str(),
        "--new-key-file".as_ref(),
        new.as_os_str(),
    ]);
    assert!(said.contains("127.0.0.1:1"), "{said}");
    let missing = dir.path().join("no-such.key");
    let said = run(&[
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--old-key-file".as_ref(),
        old.as_os_str(),
        "--new-key-file".as_ref(),
        new.as_os_str(),
        "--forward-key-file".as_ref(),
        missing.as_os_str(),
    ]);
    assert!(said.contains("no-such.key: no such file"), "{said}");
}
