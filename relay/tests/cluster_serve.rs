//! Two `serve` processes on one Valkey cluster: what is deposited through one relay is
//! delivered through the other, and a duplicate is recognised across them (issue 12).

mod common;

use common::process::{Serve, cli};

#[test]
fn deposit_on_one_relay_deliver_on_another() {
    let Some(cluster) = common::valkey::cluster("deposit_on_one_relay_deliver_on_another") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("master.key");
    std::fs::write(&key, "42".repeat(32)).expect("write key");
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
    // Relay A generates the certificate; relay B serves the same one (one deployment, one
    // certificate), so one invitation works with both.
    let a = Serve::start(&dir.path().join("a"), &args, "warn");
    let tls = dir.path().join("a").join("tls");
    let cert = tls.join("cert.pem").to_string_lossy().into_owned();
    let tls_key = tls.join("key.pem").to_string_lossy().into_owned();
    let mut b_args = args.to_vec();
    b_args.extend(["--cert", cert.as_str(), "--key", tls_key.as_str()]);
    let b = Serve::start(&dir.path().join("b"), &b_args, "warn");
    assert_eq!(a.pin, b.pin, "both relays serve one certificate");

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
