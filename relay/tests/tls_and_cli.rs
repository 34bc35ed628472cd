//! Operator certificates with CA trust, pin mismatches, and the CLI end to end.

mod common;

use common::process::{Serve, cli};
use sealpost_client::tls::Trust;
use sealpost_client::{Client, ClientError};
use sealpost_core::Suite;
use sealpost_core::e2e::seal_for_invitation;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::{Invitation, RelayTrust};
use sealpost_core::status::DepositStatus;
use sealpost_relay::store::Quotas;
use sealpost_relay::store::memory::MemoryStore;
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
    // Made over a CA-verified connection, its invitations ask for CA trust.
    assert_eq!(mb.trust, RelayTrust::CaForHost);

    // A wrong pin is refused at the handshake, with a message that says so.
    let err = Client::connect_pinned(&format!("127.0.0.1:{port}"), [0u8; 32])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::PinMismatch { key: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("different certificate"), "{err}");
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
    // The key pin works as well (and is what invitations carry).
    let id =
        sealpost_relay::tls::load_identity(&data.join("tls/cert.pem"), &data.join("tls/key.pem"))
            .unwrap();
    let key_pin = hex::encode(id.key_pin().unwrap());
    let out = cli()
        .args(["mailbox", "create", "--relay", &addr, "--key-pin", &key_pin])
        .arg("--out")
        .arg(dir.path().join("mb2.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// Writes a fresh self-signed pair as `NAME.pem` and `NAME.key` in `dir`; returns the
/// certificate and its key as generated.
fn write_pair(dir: &std::path::Path, name: &str) -> rcgen::CertifiedKey {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
    ck
}

/// A certificate with another certificate's key: refused at start and at reload (which keeps
/// the pair in use), with an error that names both files.
#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_refused_at_start_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pair(d, "a");
    write_pair(d, "b");
    let start = |cert: &str, key: &str| {
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), d.join("data"));
        cfg.cert = Some(d.join(cert));
        cfg.key = Some(d.join(key));
        let store = Arc::new(MemoryStore::new(quotas(&cfg.limits)));
        sealpost_relay::start(cfg, store)
    };
    let err = start("a.pem", "b.key").await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("is not the private key"), "{msg}");
    assert!(msg.contains("a.pem") && msg.contains("b.key"), "{msg}");

    std::fs::copy(d.join("a.pem"), d.join("cert.pem")).unwrap();
    std::fs::copy(d.join("a.key"), d.join("key.pem")).unwrap();
    let handle = start("cert.pem", "key.pem").await.unwrap();
    let pin = handle.pin();
    // The operator renews the certificate but copies the wrong key.
    std::fs::copy(d.join("b.pem"), d.join("cert.pem")).unwrap();
    let err = handle.reload_certificate().unwrap_err();
    assert!(
        matches!(err, sealpost_relay::tls::CertError::KeyMismatch { .. }),
        "{err}"
    );
    let addr = handle.local_addr().to_string();
    let c = Client::connect_pinned(&addr, pin)
        .await
        .expect("the old pair is still served");
    c.info().await.unwrap();
    handle.shutdown().await;
}

/// Waits for a child process to exit, for at most `within`; kills it and fails otherwise.
fn exit_within(child: &mut std::process::Child, within: std::time::Duration) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "exited successfully: {err}");
    err
}

/// `check-config` and `serve` refuse a mismatched pair and name a missing file; a good pair
/// passes `check-config`, which prints its pin.
#[test]
fn check_config_and_serve_refuse_a_mismatched_pair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pair(d, "a");
    write_pair(d, "b");
    let conf = d.join("relay.toml");
    let check = |cert: &str, key: &str| {
        std::fs::write(
            &conf,
            format!(
                "cert = {:?}\nkey = {:?}\ndata_dir = {:?}\n",
                d.join(cert),
                d.join(key),
                d.join("data")
            ),
        )
        .unwrap();
        cli().arg("check-config").arg(&conf).output().unwrap()
    };
    let out = check("a.pem", "a.key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("certificate and key: ok"), "{err}");

    let out = check("a.pem", "b.key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not the private key"), "{err}");

    let out = check("gone.pem", "a.key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("gone.pem"), "{err}");

    let mut serve = cli()
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--store", "memory", "--data-dir"])
        .arg(d.join("data"))
        .arg("--cert")
        .arg(d.join("a.pem"))
        .arg("--key")
        .arg(d.join("b.key"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = exit_within(&mut serve, std::time::Duration::from_secs(20));
    assert!(err.contains("is not the private key"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

/// A generated pair with one half missing is not silently regenerated (which would change
/// the pin): the relay refuses to start and names the missing file.
#[tokio::test]
async fn a_generated_pair_missing_a_half_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    let store = || Arc::new(MemoryStore::new(quotas(&RelayLimits::default())));
    let first = sealpost_relay::start(cfg(), store()).await.unwrap();
    first.shutdown().await;
    let key = dir.path().join("tls/key.pem");
    std::fs::remove_file(&key).unwrap();
    let err = sealpost_relay::start(cfg(), store()).await.err().unwrap();
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert!(!key.exists());
    // `check-config` says the same as the start, not a bare "No such file".
    let checked = sealpost_relay::server::check_tls(&cfg()).err().unwrap();
    assert_eq!(checked.to_string(), err.to_string());
    assert!(checked.to_string().contains("missing while"), "{checked}");
}

/// A self-signed certificate for `localhost` with `key`, numbered `serial` so that two of
/// them for one key differ.
fn self_signed(key: &rcgen::KeyPair, serial: u64) -> rcgen::Certificate {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params.self_signed(key).unwrap()
}

async fn relay_with_files(
    dir: &std::path::Path,
    cert: &str,
    key: &str,
) -> (sealpost_relay::RelayHandle, String) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("data"));
    cfg.cert = Some(dir.join("cert.pem"));
    cfg.key = Some(dir.join("key.pem"));
    let store = Arc::new(MemoryStore::new(quotas(&cfg.limits)));
    let handle = sealpost_relay::start(cfg, store).await.unwrap();
    let addr = handle.local_addr().to_string();
    (handle, addr)
}

async fn deposit_through(inv: &Invitation, trust: Trust) -> Result<DepositStatus, ClientError> {
    let c = Client::connect_any(&inv.relays, trust).await?;
    let info = c.info().await?;
    let env = seal_for_invitation(&Engine::ring(), inv, &info.limits.sizes, b"hi").unwrap();
    c.deposit(env).await
}

/// Key pins survive a renewal with the same key (the old whole-certificate pins do not,
/// as before), and a new key is reported as such.
#[tokio::test]
async fn key_pinned_invitations_survive_renewals_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let first = self_signed(&key, 1);
    let (handle, addr) = relay_with_files(d, &first.pem(), &key.serialize_pem()).await;
    let owner = Client::connect_pinned(&addr, handle.pin()).await.unwrap();
    let mb = owner.create(Suite::ChaCha20Poly1305).await.unwrap();
    let key_pin = sealpost_client::tls::key_pin_of(first.der()).unwrap();
    assert_eq!(mb.trust, RelayTrust::KeyPin(key_pin));
    assert_eq!(handle.key_pin().unwrap(), key_pin);
    let text = mb.invitation().encode().unwrap();
    let inv = Invitation::parse(&text).unwrap();
    assert_eq!(inv.trust, RelayTrust::KeyPin(key_pin));
    // A version 1 invitation, pinning the whole certificate, still parses and connects.
    let mut old = mb.invitation();
    old.trust = RelayTrust::CertificatePin(handle.pin());
    let old = Invitation::parse(&old.encode().unwrap()).unwrap();
    let as_is =
        |i: &Invitation| Trust::from_relay_trust(i.trust, sealpost_client::tls::default_roots);
    assert_eq!(old.trust, RelayTrust::CertificatePin(handle.pin()));
    assert!(
        deposit_through(&old, as_is(&old))
            .await
            .unwrap()
            .is_success()
    );

    // Renewed, same key: the key-pinned invitation still works.
    let renewed = self_signed(&key, 2);
    assert_ne!(renewed.der(), first.der());
    std::fs::write(d.join("cert.pem"), renewed.pem()).unwrap();
    handle.reload_certificate().unwrap();
    assert!(
        deposit_through(&inv, as_is(&inv))
            .await
            .unwrap()
            .is_success()
    );
    // The whole-certificate pin is told apart: the certificate changed.
    let err = deposit_through(&old, as_is(&old)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::PinMismatch { key: false, .. }),
        "{err}"
    );

    // A new key: the invitation is refused with what to do about it.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(d.join("cert.pem"), self_signed(&other, 3).pem()).unwrap();
    std::fs::write(d.join("key.pem"), other.serialize_pem()).unwrap();
    handle.reload_certificate().unwrap();
    let err = deposit_through(&inv, as_is(&inv)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::PinMismatch { key: true, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("the relay at {addr} presents a different key"))
            && msg.contains("ask the relay's operator or the mailbox owner for a new invitation"),
        "{msg}"
    );
    handle.shutdown().await;
}

/// An invitation made over a CA-verified connection asks for CA trust, and works with a root
/// store that holds the CA (the built-in roots do not know this test CA).
#[tokio::test]
async fn ca_trust_invitations_work_with_the_issuing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    let (handle, addr) = relay_with_files(dir.path(), &chain, &leaf_key.serialize_pem()).await;
    let port = handle.local_addr().port();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let owner = Client::connect(&format!("localhost:{port}"), Trust::Roots(roots.clone()))
        .await
        .unwrap();
    let mb = owner.create(Suite::ChaCha20Poly1305).await.unwrap();
    assert_eq!(mb.trust, RelayTrust::CaForHost);
    let inv = Invitation::parse(&mb.invitation().encode().unwrap()).unwrap();
    assert_eq!(inv.trust, RelayTrust::CaForHost);
    let with_test_ca = Trust::from_relay_trust(inv.trust, || roots.clone());
    assert!(
        deposit_through(&inv, with_test_ca)
            .await
            .unwrap()
            .is_success()
    );
    let builtin = Trust::from_relay_trust(inv.trust, sealpost_client::tls::default_roots);
    let err = deposit_through(&inv, builtin).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    // The relay's address by IP is not the certificate's name.
    let by_ip = Trust::from_relay_trust(inv.trust, || roots.clone());
    assert!(Client::connect(&addr, by_ip).await.is_err());
    handle.shutdown().await;
}

/// Without a pin, `info --data-dir` pins the relay by the key of the certificate in that
/// directory, reading the certificate only: a data directory whose private key is absent
/// (as it is, in effect, to a user who may not read the owner-only key.pem) still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_pin_comes_from_the_certificate_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    let store = Arc::new(MemoryStore::new(quotas(&cfg.limits)));
    let handle = sealpost_relay::start(cfg, store).await.unwrap();
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(client_dir.join("tls")).unwrap();
    std::fs::copy(
        dir.path().join("relay/tls/cert.pem"),
        client_dir.join("tls/cert.pem"),
    )
    .unwrap();
    let addr = handle.local_addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        cli()
            .args(["info", "--relay", &addr, "--data-dir"])
            .arg(&client_dir)
            .env_remove("SEALPOST_PIN")
            .env_remove("SEALPOST_KEY_PIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("version: "));
    handle.shutdown().await;
}
