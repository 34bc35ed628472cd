//! The disk store on its own: recovery after a restart, durable sequence numbers and dedupe
//! window, secrets at rest, clear errors for damaged stores; and store writes that fail: the
//! totals count only what was committed, reads go on, the store reports itself failed, and a
//! stop whose final flush fails is an error within its budget.

mod common;

use bytes::Bytes;
use common::process::files_containing;
use sealpost_core::Suite;
use sealpost_core::keys::RecipientSecret;
use sealpost_relay::RelayLimits;
use sealpost_relay::shutdown::{StopError, stop};
use sealpost_relay::store::disk::{DiskOptions, DiskStore};
use sealpost_relay::store::{Append, AppendOutcome, MailboxRecord, Store, StoreError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn quotas() -> sealpost_relay::store::Quotas {
    RelayLimits::default().quotas()
}

fn open(dir: &Path, key: Option<[u8; 32]>) -> Result<DiskStore, StoreError> {
    DiskStore::open(
        dir,
        quotas(),
        DiskOptions {
            master_key: key.map(Zeroizing::new),
            ..DiskOptions::default()
        },
    )
}

const DEPOSIT_KEY: [u8; 32] = [0xD5; 32];

fn record(s: &DiskStore, i: u8) -> MailboxRecord {
    MailboxRecord::new(
        [i; 16],
        s.deposit_id_for(&[i; 16]),
        Suite::ChaCha20Poly1305,
        DEPOSIT_KEY,
        RecipientSecret([0x5E; 32]),
    )
}

fn append(s: &DiskStore, i: u8, nonce: u8) -> Append {
    Append {
        deposit_id: s.deposit_id_for(&[i; 16]),
        nonce: [nonce; 12],
        envelope: Bytes::from(vec![nonce; 300]),
        not_after: None,
    }
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    !files_containing(dir, needle).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), None).unwrap();
        s.create_mailbox(record(&s, 1)).await.unwrap();
        let out = s
            .append_batch(&[append(&s, 1, 1), append(&s, 1, 2), append(&s, 1, 3)])
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![
                AppendOutcome::Stored(1),
                AppendOutcome::Stored(2),
                AppendOutcome::Stored(3)
            ]
        );
        assert_eq!(s.ack(&[1; 16], 1).await.unwrap(), 1);
        // Acks reach disk through the background flush.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    {
        let s = open(dir.path(), None).unwrap();
        let rec = s
            .mailbox(&[1; 16])
            .await
            .unwrap()
            .expect("mailbox recovered");
        assert_eq!(rec.deposit_key.expose(), &DEPOSIT_KEY);
        let got = s.fetch(&[1; 16], 0, 10).await.unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(&got[0].envelope[..], &[2u8; 300][..]);
        // The acknowledged envelope's nonce is still a duplicate, and sequence numbers go on.
        let out = s
            .append_batch(&[append(&s, 1, 1), append(&s, 1, 4)])
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![AppendOutcome::Duplicate, AppendOutcome::Stored(4)]
        );
        s.ack(&[1; 16], 4).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    {
        // Drained: nothing pending, and the next sequence number is still not reused.
        let s = open(dir.path(), None).unwrap();
        assert_eq!(s.pending(&[1; 16]).await.unwrap(), 0);
        assert_eq!(
            s.append_batch(&[append(&s, 1, 9)]).await.unwrap(),
            vec![AppendOutcome::Stored(5)]
        );
        assert!(s.delete_mailbox(&[1; 16]).await.unwrap());
    }
    let s = open(dir.path(), None).unwrap();
    assert!(
        s.mailbox(&[1; 16]).await.unwrap().is_none(),
        "deleted mailboxes stay deleted"
    );
    assert_eq!(s.stats_now().envelopes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let q = sealpost_relay::store::Quotas {
        max_envelopes: 2,
        ..quotas()
    };
    {
        let s = DiskStore::open(dir.path(), q, DiskOptions::default()).unwrap();
        s.create_mailbox(record(&s, 2)).await.unwrap();
        s.append_batch(&[append(&s, 2, 1), append(&s, 2, 2)])
            .await
            .unwrap();
    }
    let s = DiskStore::open(dir.path(), q, DiskOptions::default()).unwrap();
    assert_eq!(
        s.append_batch(&[append(&s, 2, 3)]).await.unwrap(),
        vec![AppendOutcome::MailboxFull]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_with_a_master_key() {
    // Without a master key the secrets are on disk in the clear (which `serve` warns about).
    let plain = tempfile::tempdir().unwrap();
    {
        let s = open(plain.path(), None).unwrap();
        assert!(!s.secrets_encrypted());
        s.create_mailbox(record(&s, 3)).await.unwrap();
    }
    assert!(
        files_contain(plain.path(), &DEPOSIT_KEY),
        "the test must be able to find a clear key"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = [0x42u8; 32];
    {
        let s = open(dir.path(), Some(key)).unwrap();
        assert!(s.secrets_encrypted());
        s.create_mailbox(record(&s, 3)).await.unwrap();
    }
    assert!(
        !files_contain(dir.path(), &DEPOSIT_KEY),
        "deposit key found in the clear"
    );
    assert!(
        !files_contain(dir.path(), &[0x5E; 32]),
        "recipient secret found in the clear"
    );
    assert!(matches!(
        open(dir.path(), None),
        Err(StoreError::MasterKeyRequired(_))
    ));
    assert!(matches!(
        open(dir.path(), Some([0x43; 32])),
        Err(StoreError::WrongMasterKey(_))
    ));
    let s = open(dir.path(), Some(key)).unwrap();
    let rec = s.mailbox(&[3; 16]).await.unwrap().unwrap();
    assert_eq!(rec.deposit_key.expose(), &DEPOSIT_KEY);
}

#[test]
fn a_damaged_store_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = open(dir.path(), None).unwrap();
        rt.block_on(s.create_mailbox(record(&s, 4))).unwrap();
    }
    // Damage every file of the store (keep the sizes, replace the bytes).
    let mut stack = vec![dir.path().to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                let len = std::fs::metadata(&p).unwrap().len() as usize;
                std::fs::write(&p, vec![0xA7; len.max(1)]).unwrap();
            }
        }
    }
    match open(dir.path(), None) {
        Ok(_) => panic!("a damaged store opened"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("damaged store: {msg}");
            assert!(
                msg.contains(&dir.path().display().to_string()),
                "error does not name the store: {msg}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_not_counted_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), None).unwrap();
    s.create_mailbox(record(&s, 1)).await.unwrap();
    assert_eq!(
        s.append_batch(&[append(&s, 1, 1)]).await.unwrap(),
        vec![AppendOutcome::Stored(1)]
    );
    let before = s.stats().await;
    assert!(s.health().accepting().is_ok());
    let probes = sealpost_relay::admin::Readiness::new(
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
        Arc::new(s.clone()),
    );
    assert_eq!(probes.serving(), Ok(()));
    s.inject_write_failure();
    assert!(
        s.append_batch(&[append(&s, 1, 2), append(&s, 1, 3)])
            .await
            .is_err()
    );
    assert_eq!(
        s.stats().await,
        before,
        "failed appends must not be counted"
    );

    let health = s.health();
    assert!(health.failed.is_some());
    assert!(health.accepting().unwrap_err().contains("store failed"));
    // No longer serving (/servingz 503): the relay is about to exit and restart.
    assert!(probes.serving().unwrap_err().contains("store failed"));
    drop(probes);
    // What is stored can still be delivered and acknowledged until the restart.
    let got = s.fetch(&[1; 16], 0, 10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(s.ack(&[1; 16], 1).await.unwrap(), 1);
    assert_eq!(s.stats().await.envelopes, 0);
    assert!(s.close(Duration::from_secs(2)).is_err());
    drop(s);
    // The failure outlives the process that exits on it: the next start reports it once.
    let marker = dir
        .path()
        .join(sealpost_relay::store::evidence::FAILED_FILE);
    assert!(marker.exists());
    let s = open_when_free(dir.path()).await;
    let failed = s
        .previous_failure()
        .expect("the previous failure is reported");
    assert!(
        failed.reason.contains("injected write failure"),
        "{failed:?}"
    );
    assert!(s.health().previous_failure_at.is_some_and(|t| t > 0));
    assert!(!marker.exists());
    s.close(Duration::from_secs(2)).unwrap();
    drop(s);
    let s = open_when_free(dir.path()).await;
    assert!(s.previous_failure().is_none());
    assert_eq!(s.health().previous_failure_at, None);
    drop(s);

    // The first failing write a creation (a failed store refuses later ones up front).
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), None).unwrap();
    s.create_mailbox(record(&s, 1)).await.unwrap();
    let before = s.stats().await;
    s.inject_write_failure();
    assert!(s.create_mailbox(record(&s, 2)).await.is_err());
    assert_eq!(
        s.stats().await,
        before,
        "a failed creation must not be counted"
    );
    assert!(s.mailbox(&[2; 16]).await.unwrap().is_none());
}

async fn relay_over(store: &DiskStore, dir: &Path) -> sealpost_relay::RelayHandle {
    let cfg = sealpost_relay::RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_owned());
    sealpost_relay::start(cfg, Arc::new(store.clone()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_final_flush_fails_is_an_error_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"), None).unwrap();
    let handle = relay_over(&store, dir.path()).await;
    store.inject_write_failure();
    let budget = Duration::from_secs(1);
    let t0 = Instant::now();
    let err = stop(handle, Some(store), budget).await.unwrap_err();
    assert!(matches!(err, StopError::Flush(_)), "{err}");
    assert!(
        err.to_string().contains("final store flush failed"),
        "{err}"
    );
    // A bound on the shutdown, not a performance figure: the budget plus scheduling slack.
    assert!(
        t0.elapsed() < budget + Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );

    // A healthy store stops cleanly, and its data is there after the restart.
    let store = open(&dir.path().join("store2"), None).unwrap();
    store.create_mailbox(record(&store, 1)).await.unwrap();
    store.append_batch(&[append(&store, 1, 1)]).await.unwrap();
    let handle = relay_over(&store, dir.path()).await;
    stop(handle, Some(store), budget).await.unwrap();
    let again = open_when_free(&dir.path().join("store2")).await;
    assert_eq!(again.stats().await.envelopes, 1);
}

/// A different envelope under a (deposit_id, nonce) already seen is ID_REUSED, a byte-identical
/// retry DUPLICATE: for held envelopes and for the dedupe window of removed ones, before and
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_nonce_with_other_content_is_refused_across_restarts() {
    use AppendOutcome::*;
    let dir = tempfile::tempdir().unwrap();
    let held_other = |s: &DiskStore| Append {
        envelope: Bytes::from(vec![0xEE; 300]),
        not_after: None,
        ..append(s, 1, 1)
    };
    let removed_other = |s: &DiskStore| Append {
        envelope: Bytes::from(vec![0xEF; 300]),
        not_after: None,
        ..append(s, 1, 2)
    };
    {
        let s = open(dir.path(), None).unwrap();
        s.create_mailbox(record(&s, 1)).await.unwrap();
        // Nonce 2 is stored and acknowledged (dedupe window), nonce 1 stays held.
        s.append_batch(&[append(&s, 1, 2)]).await.unwrap();
        assert_eq!(s.ack(&[1; 16], 1).await.unwrap(), 1);
        assert_eq!(
            s.append_batch(&[append(&s, 1, 1), held_other(&s), removed_other(&s)])
                .await
                .unwrap(),
            vec![Stored(2), IdReused, IdReused]
        );
        s.close(Duration::from_secs(5)).unwrap();
    }
    let s = open_when_free(dir.path()).await;
    assert_eq!(
        s.append_batch(&[
            held_other(&s),
            append(&s, 1, 1),
            removed_other(&s),
            append(&s, 1, 2)
        ])
        .await
        .unwrap(),
        vec![IdReused, Duplicate, IdReused, Duplicate]
    );
    assert_eq!(s.stats().await.envelopes, 1);
}

/// Opens a store whose previous handle may still be going away (tasks of a stopped relay
/// drop theirs asynchronously): retries while the directory is locked, up to a deadline.
async fn open_when_free(dir: &Path) -> DiskStore {
    let t0 = Instant::now();
    loop {
        match open(dir, None) {
            Ok(s) => return s,
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                assert!(e.to_string().contains("in use"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("store still locked after 10 s: {e}"),
        }
    }
}

/// A store with one mailbox and a few envelopes, closed; returns its directory.
async fn filled_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), None).unwrap();
    s.create_mailbox(record(&s, 1)).await.unwrap();
    for n in 1..=20 {
        s.append_batch(&[append(&s, 1, n)]).await.unwrap();
    }
    s.flush().unwrap();
    dir
}

fn open_error(dir: &Path) -> String {
    match open(dir, None) {
        Ok(_) => panic!("a damaged store opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_version_marker_is_named_with_what_to_do() {
    let dir = filled_store().await;
    let marker = dir.path().join("version");
    std::fs::write(&marker, b"").unwrap();
    let msg = open_error(dir.path());
    assert!(msg.contains(&marker.display().to_string()), "{msg}");
    assert!(
        msg.contains("Restore the data directory from a backup"),
        "{msg}"
    );
    assert!(!msg.contains("FjallError"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_named_with_what_to_do() {
    let dir = filled_store().await;
    let journal = dir.path().join("0.jnl");
    // Flip one byte inside an envelope in the middle of the journal: the batch still parses,
    // its checksum does not match (a torn tail would be dropped silently instead).
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes
        .windows(300)
        .position(|w| w.iter().all(|&b| b == 7))
        .expect("envelope 7 is in the journal");
    bytes[at + 150] ^= 0xFF;
    std::fs::write(&journal, &bytes).unwrap();
    let msg = open_error(dir.path());
    assert!(msg.contains("0.jnl"), "{msg}");
    assert!(msg.contains("move"), "{msg}");
    assert!(!msg.contains("FjallError"), "{msg}");
}

#[test]
fn a_second_relay_on_the_same_directory_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), None).unwrap();
    let err = open(dir.path(), None).err().expect("second open refused");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "data directory {} is in use by another sealpost relay (pid {})",
            dir.path().display(),
            std::process::id()
        )),
        "{msg}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A store that comes back with fewer envelopes than it acknowledged says so: simulated by
/// putting back an older copy of the store's data (51 envelopes) under the checkpoint of
/// the newer one (100), which is what a journal that lost its tail looks like at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_recovers_fewer_envelopes_than_it_acknowledged_says_so() {
    use sealpost_relay::store::checkpoint::{FILE, Shortfall};
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let older = dir.path().join("older");
    let s = open(&live, None).unwrap();
    s.create_mailbox(record(&s, 1)).await.unwrap();
    s.create_mailbox(record(&s, 2)).await.unwrap();
    for n in 1..=51 {
        s.append_batch(&[append(&s, 1, n)]).await.unwrap();
    }
    s.append_batch(&[append(&s, 2, 1)]).await.unwrap();
    s.close(Duration::from_secs(5)).unwrap();
    drop(s);
    // Copy only once the store is released (the close's thread may hold it a moment longer).
    drop(open_when_free(&live).await);
    copy_dir(&live, &older);
    let s = open_when_free(&live).await;
    assert_eq!(s.recovery_shortfall(), Shortfall::default());
    for n in 52..=100 {
        s.append_batch(&[append(&s, 1, n)]).await.unwrap();
    }
    s.close(Duration::from_secs(5)).unwrap();
    drop(s);
    drop(open_when_free(&live).await);
    std::fs::copy(live.join(FILE), older.join(FILE)).unwrap();
    let s = open_when_free(&older).await;
    assert_eq!(
        s.recovery_shortfall(),
        Shortfall {
            envelopes: 49,
            mailboxes: 1,
            mailboxes_missing: 0
        }
    );
    assert_eq!(s.stats().await.envelopes, 52);
    // Recorded, and reported at each start until the operator removes the record (the
    // checkpoint itself now describes the store as it is, so it adds nothing more).
    s.close(Duration::from_secs(5)).unwrap();
    drop(s);
    let s = open_when_free(&older).await;
    assert_eq!(s.recovery_shortfall().envelopes, 49);
    assert_eq!(s.health().recovery_shortfall, 49);
    s.close(Duration::from_secs(5)).unwrap();
    drop(s);
    std::fs::remove_file(older.join(sealpost_relay::store::evidence::SHORTFALL_FILE)).unwrap();
    let s = open_when_free(&older).await;
    assert_eq!(s.recovery_shortfall(), Shortfall::default());
}

/// A checkpoint that cannot be written at close only weakens the next start's shortfall
/// check: the close is clean all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_does_not_fail_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), None).unwrap();
    s.create_mailbox(record(&s, 1)).await.unwrap();
    s.append_batch(&[append(&s, 1, 1)]).await.unwrap();
    // A directory where the checkpoint goes: renaming a file over it fails.
    let cp = dir.path().join(sealpost_relay::store::checkpoint::FILE);
    let _ = std::fs::remove_file(&cp);
    std::fs::create_dir(&cp).unwrap();
    std::fs::write(cp.join("x"), b"x").unwrap();
    s.close(Duration::from_secs(5)).unwrap();
}

/// A master key given to a store whose mailboxes were created without one seals their
/// secrets at start-up and leaves none in the clear on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_given_later_encrypts_the_existing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), None).unwrap();
        s.create_mailbox(record(&s, 3)).await.unwrap();
        s.close(Duration::from_secs(5)).unwrap();
    }
    let s = open_when_free(dir.path()).await;
    drop(s);
    assert!(
        files_contain(dir.path(), &DEPOSIT_KEY),
        "stored in the clear"
    );
    let key = [0x42u8; 32];
    let s = open_with_key_when_free(dir.path(), key).await;
    assert_eq!(
        s.mailbox(&[3; 16])
            .await
            .unwrap()
            .unwrap()
            .deposit_key
            .expose(),
        &DEPOSIT_KEY
    );
    s.close(Duration::from_secs(5)).unwrap();
    drop(s);
    drop(open_with_key_when_free(dir.path(), key).await);
    assert!(
        !files_contain(dir.path(), &DEPOSIT_KEY),
        "deposit key still in the clear: {:?}",
        common::process::files_containing(dir.path(), &DEPOSIT_KEY)
    );
    assert!(
        !files_contain(dir.path(), &[0x5E; 32]),
        "recipient secret still in the clear"
    );
    assert!(matches!(
        open(dir.path(), None),
        Err(StoreError::MasterKeyRequired(_))
    ));
}

async fn open_with_key_when_free(dir: &Path, key: [u8; 32]) -> DiskStore {
    let t0 = Instant::now();
    loop {
        match open(dir, Some(key)) {
            Err(StoreError::InUse { .. }) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other.unwrap(),
        }
    }
}

/// `rotate-master-key` re-encrypts a stopped relay's store: afterwards only the new key
/// opens it, and the secrets are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_can_be_rotated_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let store_dir = data.path().join("store");
    let (old, new) = ([0x42u8; 32], [0x24u8; 32]);
    {
        let s = open(&store_dir, Some(old)).unwrap();
        s.create_mailbox(record(&s, 3)).await.unwrap();
        s.create_mailbox(record(&s, 4)).await.unwrap();
        s.append_batch(&[append(&s, 4, 1), append(&s, 4, 2)])
            .await
            .unwrap();
        assert_eq!(s.ack(&[4; 16], 1).await.unwrap(), 1);
        s.close(Duration::from_secs(5)).unwrap();
    }
    drop(open_with_key_when_free(&store_dir, old).await);
    let old_file = data.path().join("old.key");
    let new_file = data.path().join("new.key");
    std::fs::write(&old_file, hex::encode(old)).unwrap();
    std::fs::write(&new_file, format!("{}\n", hex::encode(new))).unwrap();
    let out = common::process::cli()
        .args(["rotate-master-key", "--data-dir"])
        .arg(data.path())
        .arg("--old-key-file")
        .arg(&old_file)
        .arg("--new-key-file")
        .arg(&new_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 mailboxes"), "{stderr}");
    assert!(matches!(
        open(&store_dir, Some(old)),
        Err(StoreError::WrongMasterKey(_))
    ));
    let s = open(&store_dir, Some(new)).unwrap();
    let rec = s.mailbox(&[4; 16]).await.unwrap().unwrap();
    assert_eq!(rec.deposit_key.expose(), &DEPOSIT_KEY);
    assert_eq!(rec.recipient_secret.0, [0x5E; 32]);
    // Envelopes, sequence numbers and the dedupe window come along.
    let held = s.fetch(&[4; 16], 0, 10).await.unwrap();
    assert_eq!(held.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(
        s.append_batch(&[append(&s, 4, 1), append(&s, 4, 3)])
            .await
            .unwrap(),
        vec![AppendOutcome::Duplicate, AppendOutcome::Stored(3)]
    );
}
