//! Several relays of one deployment (issue 12): an invitation names them all, a client uses
//! any that answers and moves to another when its relay goes away. The relays here share one
//! in-process memory store and one certificate, as the relays of a deployment share their
//! store and certificate.

mod common;

use common::process::{Serve, cli};
use sealpost_client::tls::Trust;
use sealpost_client::{Client, ResumingSubscription};
use sealpost_core::Suite;
use sealpost_core::e2e::seal_for_invitation;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::Invitation;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{RelayConfig, RelayHandle, RelayLimits};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Two relays on loopback over one store, the second with the first's certificate.
struct Pair {
    relays: Vec<Option<RelayHandle>>,
    addrs: Vec<String>,
    key_pin: [u8; 32],
    _dirs: [tempfile::TempDir; 2],
}

async fn pair() -> Pair {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let limits = RelayLimits::default();
    let store = Arc::new(MemoryStore::new(limits.quotas()));
    let first = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dirs[0].path().to_owned());
    let a = sealpost_relay::start(first, store.clone()).await.unwrap();
    let tls = dirs[0].path().join("tls");
    let mut second = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dirs[1].path().to_owned());
    second.cert = Some(tls.join("cert.pem"));
    second.key = Some(tls.join("key.pem"));
    let b = sealpost_relay::start(second, store).await.unwrap();
    assert_eq!(a.pin(), b.pin(), "both relays serve one certificate");
    let key_pin = sealpost_client::tls::key_pin_of_file(&tls.join("cert.pem")).unwrap();
    Pair {
        addrs: vec![a.local_addr().to_string(), b.local_addr().to_string()],
        relays: vec![Some(a), Some(b)],
        key_pin,
        _dirs: dirs,
    }
}

impl Pair {
    async fn client(&self) -> Client {
        Client::connect_any(&self.addrs, Trust::KeyPin(self.key_pin))
            .await
            .unwrap()
    }

    /// Shuts down the relay at `addr` (it closes its connections with "shutting down").
    async fn shut_down(&mut self, addr: &str) {
        let i = self.addrs.iter().position(|a| a == addr).unwrap();
        self.relays[i].take().unwrap().shutdown().await;
    }
}

/// A loopback UDP port where nothing answers: packets to it vanish, as to a dead host.
fn black_hole() -> (std::net::UdpSocket, String) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    (s, addr)
}

/// Deposits `content` with the invitation, connecting to any of its relays.
async fn send(inv: &Invitation, content: &[u8]) {
    let c = Client::connect_trusting_any(&inv.relays, inv.trust)
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    let env = seal_for_invitation(&Engine::ring(), inv, &info.limits.sizes, content).unwrap();
    assert!(c.deposit(env).await.unwrap().is_success());
    c.close().await;
}

/// The next delivery's content, within a bound far above what it takes.
async fn next_text(sub: &mut ResumingSubscription<'_>, mb: &sealpost_client::Mailbox) -> String {
    let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a delivery in time")
        .expect("delivery ok")
        .expect("a delivery");
    let text = String::from_utf8(mb.open(&d).unwrap().to_vec()).unwrap();
    sub.ack(d.seq).await.unwrap();
    text
}

/// An invitation naming a dead address and a live relay deposits through the live one, in
/// either order, without waiting out the dead one's handshake; the single-address (version
/// 2) invitation of the same mailbox still works.
#[tokio::test]
async fn a_dead_address_in_the_invitation_is_passed_over() {
    let p = pair().await;
    let (_hole, dead) = black_hole();
    let live = p.addrs[1].clone();
    let creator = Client::connect(&live, Trust::KeyPin(p.key_pin))
        .await
        .unwrap();
    let mut mb = creator.create(Suite::ChaCha20Poly1305).await.unwrap();
    let v2 = mb.invitation().encode().unwrap();
    for relays in [[&dead, &live], [&live, &dead]] {
        mb.relays = relays.iter().map(|a| a.to_string()).collect();
        let text = mb.invitation().encode().unwrap();
        let inv = Invitation::parse(&text).unwrap();
        assert_eq!(inv.relays, mb.relays);
        // Far below the 30 s the dead address's handshake may take here.
        tokio::time::timeout(Duration::from_secs(10), send(&inv, b"via the live relay"))
            .await
            .expect("the live relay was used without waiting for the dead one");
    }
    send(&Invitation::parse(&v2).unwrap(), b"version 2").await;
    let reader = p.client().await;
    let mut sub = reader
        .subscribe_resuming(&mb.access(), 8, Duration::from_secs(10))
        .await
        .unwrap();
    for want in ["via the live relay", "via the live relay", "version 2"] {
        assert_eq!(next_text(&mut sub, &mb).await, want);
    }
}

/// A subscription on relay A moves to relay B when A shuts down, and delivers the rest from
/// the acknowledged position: nothing lost, nothing twice. A sender on A moves too, its
/// deposit sent again on B.
#[tokio::test]
async fn a_subscription_moves_to_another_relay() {
    let mut p = pair().await;
    let owner = p.client().await;
    let mb = owner.create(Suite::Aes256Gcm).await.unwrap();
    assert_eq!(mb.relays, p.addrs, "the mailbox names both relays");
    let inv = Invitation::parse(&mb.invitation().encode().unwrap()).unwrap();
    for i in 1..=3 {
        send(&inv, format!("m{i}").as_bytes()).await;
    }
    let reader = p.client().await;
    let sender = p.client().await;
    let mut sub = reader
        .subscribe_resuming(&mb.access(), 8, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(next_text(&mut sub, &mb).await, "m1");
    // m2 is delivered but not acknowledged: the next relay delivers it again, and the
    // subscription must not pass it on twice.
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&d).unwrap()[..], b"m2");

    let was = reader.addr().to_owned();
    p.shut_down(&was).await;
    let info = sender.info().await.unwrap();
    for i in 4..=5 {
        let env = seal_for_invitation(
            &Engine::ring(),
            &inv,
            &info.limits.sizes,
            format!("m{i}").as_bytes(),
        )
        .unwrap();
        assert!(sender.deposit(env).await.unwrap().is_success());
    }
    assert_ne!(sender.addr(), was, "the sender moved off the stopped relay");
    sub.ack(d.seq).await.unwrap();
    for want in ["m3", "m4", "m5"] {
        assert_eq!(next_text(&mut sub, &mb).await, want);
    }
    assert_ne!(
        reader.addr(),
        was,
        "the subscription moved to the other relay"
    );
}

/// The CLI: `mailbox create` with two `--relay` flags (one a comma list would give the same)
/// writes both into the invitation and the mailbox file, and `send` and `recv` work while one
/// of them is dead.
#[test]
fn cli_invitations_name_every_relay() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), &[], "warn");
    let (_hole, dead) = black_hole();
    let mb = dir.path().join("mb.json");
    let mut create = cli();
    create.args(["mailbox", "create", "--relay", &serve.addr]);
    create.args(["--relay", &dead, "--pin", &serve.pin, "--out"]);
    let created = run_ok(create.arg(&mb));
    let text = created.trim();
    let inv = Invitation::parse(text).unwrap();
    assert_eq!(inv.relays, [serve.addr.clone(), dead.clone()]);
    let file = sealpost_client::mailbox_file::read(&mb).unwrap();
    assert_eq!(file.relays, inv.relays);
    run_ok(cli().args(["send", text, "hello both"]));
    let got = run_ok(cli().arg("recv").arg(&mb));
    assert_eq!(got, "hello both\n");
    // A malformed address is refused before any mailbox is created.
    let out = cli()
        .args([
            "mailbox",
            "create",
            "--relay",
            &format!("{},nope", serve.addr),
        ])
        .args(["--pin", &serve.pin, "--out"])
        .arg(dir.path().join("other.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--relay: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&dir.path().join("other.json")).exists());
    serve.stop();
}

fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
