//! `Relay::open`: the relay built from validated settings, as `serve` builds it (store
//! choice, master key, recovery, one shutdown budget).

mod common;

use sealpost_client::Client;
use sealpost_core::Suite;
use sealpost_relay::settings::{Settings, Validated};
use sealpost_relay::store::StoreError;
use sealpost_relay::{OpenError, Relay};
use std::path::Path;
use std::time::Duration;

fn settings(dir: &Path, store: &str, extra: &str) -> Validated {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\nstore = \"{store}\"\nmin_free_disk_bytes = 0\n{extra}",
        dir.display()
    );
    Settings::from_toml(&text)
        .expect("settings parse")
        .validate()
        .expect("settings are valid")
}

fn with_key(dir: &Path) -> String {
    let key = dir.join("master.key");
    std::fs::write(&key, "5a".repeat(32)).expect("key file");
    format!("master_key_file = {key:?}\n")
}

#[tokio::test]
async fn a_disk_relay_from_settings_keeps_its_mailboxes_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let v = settings(dir.path(), "disk", &with_key(dir.path()));
    let relay = Relay::open(&v).await.expect("relay opens");
    assert!(relay.disk_store().is_some());
    assert_eq!(relay.unencrypted_secrets(), None, "a master key was given");
    let c = Client::connect_pinned(
        &relay.handle().local_addr().to_string(),
        relay.handle().pin(),
    )
    .await
    .expect("client connects");
    let mb = c.create(Suite::ChaCha20Poly1305).await.expect("create");
    let env = common::seal(&c, &mb, b"kept").await;
    assert!(c.deposit(env).await.expect("deposit").is_success());
    c.close().await;
    let stats = relay.stats().await;
    assert_eq!((stats.mailboxes, stats.envelopes), (1, 1));
    relay
        .shutdown(Duration::from_secs(3))
        .await
        .expect("clean stop with a final flush");

    let again = Relay::open(&v).await.expect("relay reopens");
    let stats = again.stats().await;
    assert_eq!((stats.mailboxes, stats.envelopes), (1, 1));
    let line = again.store_announcement();
    assert!(
        line.starts_with("store: disk at ") && line.contains("(1 mailboxes, 1 envelopes"),
        "{line}"
    );
    again.shutdown(Duration::from_secs(3)).await.unwrap();
}

#[tokio::test]
async fn a_memory_relay_keeps_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::open(&settings(dir.path(), "memory", ""))
        .await
        .expect("relay opens");
    assert!(relay.disk_store().is_none());
    assert!(relay.store_announcement().contains("volatile"));
    assert!(!dir.path().join("store").exists());
    relay.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn without_a_master_key_the_unencrypted_secrets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Store options without a key (not the settings, through which SEALPOST_MASTER_KEY in
    // the environment of whoever runs the tests would stand in).
    let relay = Relay::open_with(
        settings(dir.path(), "disk", "").relay,
        sealpost_relay::StoreOptions::new(sealpost_relay::settings::StoreChoice::Disk),
    )
    .await
    .expect("relay opens");
    assert_eq!(
        relay.unencrypted_secrets(),
        Some(dir.path().join("store").as_path())
    );
    relay.shutdown(Duration::from_secs(3)).await.unwrap();
}

#[tokio::test]
async fn opening_fails_with_a_reason_to_act_on() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "not a key").unwrap();
    let e = Relay::open(&settings(
        dir.path(),
        "disk",
        &format!("master_key_file = {bad_key:?}\n"),
    ))
    .await
    .err()
    .expect("a bad key is refused");
    assert!(matches!(e, OpenError::MasterKey(_)), "{e}");
    assert!(e.to_string().contains("64 hex digits"), "{e}");

    // A second relay on the same data directory is told which one holds it.
    let v = settings(dir.path(), "disk", &with_key(dir.path()));
    let first = Relay::open(&v).await.expect("first relay opens");
    let e = Relay::open(&v)
        .await
        .err()
        .expect("the directory is in use");
    assert!(
        matches!(e, OpenError::Store(StoreError::InUse { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("stop that relay first"), "{e}");
    first.shutdown(Duration::from_secs(3)).await.unwrap();
}
