//! No plaintext, anywhere: messages carrying a canary are deposited, stored on disk, delivered
//! and read; the canary appears in no file of the data directory and in no log line, while the
//! recipient reads it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealpost-relay"))
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
fn canary_never_reaches_disk_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let canary = "CANARY-7f3a9c-plaintext-must-never-be-stored";
    let mut serve = cli()
        .args([
            "serve",
            "--store",
            "disk",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        // The most talkative logging, debug option included, so that nothing hides.
        .env("SEALPOST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(serve.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "relay exited early: {log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut pin = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut pin)
        .unwrap();
    let pin = pin.trim().rsplit(' ').next().unwrap().to_owned();
    let mb = dir.path().join("mb.json");
    let out = cli()
        .args([
            "mailbox", "create", "--relay", &addr, "--pin", &pin, "--out",
        ])
        .arg(&mb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv = String::from_utf8(out.stdout).unwrap().trim().to_owned();
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
    serve.kill().unwrap();
    let _ = serve.wait();
    err.read_to_string(&mut log).unwrap();
    assert!(!log.is_empty(), "the relay logged nothing to check");
    assert!(!log.contains(canary), "canary in the relay's log");
    let hits = files_containing(&data, canary.as_bytes());
    assert!(hits.is_empty(), "canary found in {hits:?}");
}
