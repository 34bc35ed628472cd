//! Operator certificates with CA trust, pin mismatches, and the CLI end to end.

mod common;

use common::process::{Serve, cli};
use sealpost_core::Suite;
use sealpost_relay::client::{Client, ClientError};
use sealpost_relay::store::Quotas;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::tls::Trust;
use sealpost_relay::{RelayConfig, RelayLimits};
use std::sync::Arc;

fn quotas(l: &RelayLimits) -> Quotas {
    l.quotas()
}

#[tokio::test]
async fn operator_certificate_with_ca_roots() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("op-cert.pem");
    let key_path = dir.path().join("op-key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    cfg.cert = Some(cert_path);
    cfg.key = Some(key_path);
    let store = Arc::new(MemoryStore::new(quotas(&cfg.limits)));
    let handle = sealpost_relay::start(cfg, store).await.unwrap();
    assert!(!handle.generated_cert());
    assert!(
        !dir.path().join("data/tls/cert.pem").exists(),
        "no certificate generated"
    );
    let port = handle.local_addr().port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let c = Client::connect(&format!("localhost:{port}"), Trust::Roots(Arc::new(roots)))
        .await
        .expect("CA-verified connection");
    assert_eq!(c.pin(), handle.pin());
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    assert_eq!(mb.pin, handle.pin());

    // A wrong pin is refused at the handshake, with a message that says so.
    let err = Client::connect_pinned(&format!("127.0.0.1:{port}"), [0u8; 32])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    assert!(err.to_string().contains("pin"), "{err}");
    handle.shutdown().await;
}

#[tokio::test]
async fn generated_certificate_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
        let store = Arc::new(MemoryStore::new(quotas(&cfg.limits)));
        sealpost_relay::start(cfg, store).await.unwrap()
    };
    let a = start().await;
    assert!(a.generated_cert());
    let pin = a.pin();
    a.shutdown().await;
    let b = start().await;
    assert!(!b.generated_cert());
    assert_eq!(b.pin(), pin);
    b.shutdown().await;
}

#[test]
fn cli_create_send_recv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The relay prints its address on standard error and its pin on standard output.
    let serve = Serve::start(&data, &[], "warn");
    let (addr, pin) = (serve.addr.clone(), serve.pin.clone());

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
    let invitation = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(invitation.starts_with("sealpost1:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&mb).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The recipient's secrets never appear in the invitation.
    let file = std::fs::read_to_string(&mb).unwrap();
    let secret: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert!(!invitation.contains(secret["e2e_secret"].as_str().unwrap()));

    for msg in ["first message", "second message"] {
        let out = cli().args(["send", &invitation, msg]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli().arg("recv").arg(&mb).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "first message\nsecond message\n"
    );
    // Acknowledged: a second recv finds nothing.
    let out = cli()
        .arg("recv")
        .arg(&mb)
        .args(["--wait", "0.2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "");

    // Bad input to the CLI gets a clear error and a failing exit status.
    let out = cli()
        .args(["send", "sealpost1:broken", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invitation"));
    let out = cli()
        .args(["mailbox", "create", "--relay", &addr, "--pin", "abc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));

    // A bad backend name in the environment stops `serve` with a message naming it.
    let out = cli()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .env("SEALPOST_BACKEND", "bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SEALPOST_BACKEND"));

    serve.stop();
}
