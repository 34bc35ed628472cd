//! What people read: a refusal reads the same in `send` and `recv`, with what to do, and a
//! bad setting is named as it was written.

mod common;

use common::process::{Serve, cli, create_mailbox};

/// Runs the CLI and returns its standard error, asserting that it failed.
fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("the CLI runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure: {stderr}");
    stderr
}

#[test]
fn a_deleted_mailbox_reads_the_same_in_send_and_recv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = Serve::start(&dir.path().join("data"), &[], "warn");
    let mb = dir.path().join("mb.json");
    let invitation = create_mailbox(&serve.addr, &serve.pin, &mb);
    let out = cli()
        .args(["mailbox", "delete"])
        .arg(&mb)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = "relay refused: UNKNOWN_MAILBOX: the relay has no such mailbox: it was \
                    deleted, or the invitation or mailbox file is for another relay";
    let send = fails(cli().args(["send", &invitation, "hello"]));
    assert!(send.contains(expected), "send said: {send}");
    let recv = fails(cli().arg("recv").arg(&mb));
    assert!(recv.contains(expected), "recv said: {recv}");
    serve.stop();
}

#[test]
fn bad_settings_are_named_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let serve = |args: &[&str]| {
        let mut c = cli();
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .args(args);
        c
    };
    let e = fails(&mut serve(&["--sizes", "1024,256"]));
    assert!(
        e.contains("--sizes 1024,256: must be strictly ascending"),
        "{e}"
    );
    let e = fails(serve(&[]).env("SEALPOST_SIZES", "40,256"));
    assert!(
        e.contains("SEALPOST_SIZES=40,256 (environment): each size must be at least 52"),
        "{e}"
    );
    let file = dir.path().join("s.toml");
    std::fs::write(&file, "max_window = 0\n").expect("write");
    let e = fails(cli().arg("check-config").arg(&file));
    assert!(
        e.contains(&format!("`max_window = 0` in {}", file.display())),
        "{e}"
    );
}
