//! No plaintext, anywhere: messages carrying a canary are deposited, stored on disk, delivered
//! and read; the canary appears in no file of the data directory and in no log line, while the
//! recipient reads it.

mod common;

use common::process::{Serve, cli, create_mailbox, files_containing};

#[test]
fn canary_never_reaches_disk_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let canary = "CANARY-7f3a9c-plaintext-must-never-be-stored";
    // The most talkative logging, so that nothing hides.
    let serve = Serve::start(&data, &["--store", "disk"], "debug");
    let (addr, pin) = (serve.addr.clone(), serve.pin.clone());
    let mb = dir.path().join("mb.json");
    let inv = create_mailbox(&addr, &pin, &mb);
    for i in 0..5 {
        let msg = format!("{canary} #{i}");
        let out = cli().args(["send", &inv, &msg]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Stored, not yet read: look at the disk now, while the envelopes are there.
    let hits = files_containing(&data, canary.as_bytes());
    assert!(hits.is_empty(), "canary found in {hits:?}");
    let out = cli().arg("recv").arg(&mb).output().unwrap();
    assert!(out.status.success());
    let read = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        read.matches(canary).count(),
        5,
        "the recipient reads every message: {read}"
    );
    let log = serve.stop();
    assert!(!log.is_empty(), "the relay logged nothing to check");
    assert!(!log.contains(canary), "canary in the relay's log");
    let hits = files_containing(&data, canary.as_bytes());
    assert!(hits.is_empty(), "canary found in {hits:?}");
}
