//! What people read: a refusal reads the same in `send` and `recv`, with what to do, and a
//! bad setting is named as it was written.

mod common;

use common::process::{Serve, cli, create_mailbox, start_and_stop};

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

#[test]
fn json_logs_are_json_on_every_line_and_nothing_is_coloured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = start_and_stop(&dir.path().join("data"), &["--log-format", "json"]);
    let mut messages = Vec::new();
    for line in out.lines().chain(err.lines()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // The start and stop lines are among them, the pin as a field of its own.
    for wanted in [
        "store: disk",
        "listening on",
        "certificate pin",
        "shutting down",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(wanted)),
            "no {wanted:?} in {messages:?}"
        );
    }
    assert!(err.contains("\"pin\":\""), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");

    // Human format, not on a terminal: no colour either, and the pin alone on stdout.
    let (out, err) = start_and_stop(&dir.path().join("data"), &[]);
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
    assert!(out.starts_with("certificate pin (SHA-256): "), "{out}");
}

#[test]
fn a_bad_log_filter_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = cli()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("SEALPOST_LOG", "info,=[bad")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SEALPOST_LOG"), "{err}");
}
