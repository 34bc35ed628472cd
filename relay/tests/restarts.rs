//! Relay restarts are noticed at once: the stateless-reset secret outlives the process, a
//! client whose relay was killed and restarted gets a reset instead of waiting for the idle
//! timeout and sends its deposit again, a subscription resumes, and a relay that is not there
//! is reported within seconds.

mod common;

use common::process::{Serve, cli, signal};
use sealpost_core::Suite;
use sealpost_core::engine::Engine;
use sealpost_relay::client::{Client, ClientError};
use sealpost_relay::server::reset_key::FILE_NAME;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{RelayConfig, RelayLimits};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The relay's idle timeout by default: what a client waited before stateless resets.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_reset_secret_is_kept_across_restarts_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
        let quotas = RelayLimits::default().quotas();
        sealpost_relay::start(cfg, Arc::new(MemoryStore::new(quotas)))
            .await
            .unwrap()
    };
    let file = dir.path().join(FILE_NAME);
    let a = start().await;
    let first = std::fs::read(&file).unwrap();
    assert_eq!(first.len(), 32);
    a.shutdown().await;
    let b = start().await;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        first,
        "same secret after a restart"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    b.shutdown().await;
}

/// Polls `cond` every 10 ms until it holds; fails after `within`.
async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The tester's scenario: a deposit in flight when the relay is killed (SIGKILL) and
/// restarted on the same port and data directory. The old connection ends by a stateless
/// reset, not the idle timeout, and the deposit is sent again and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_in_flight_across_a_kill_and_restart_is_retried_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "disk"], "warn");
    let addr = serve.addr.clone();
    let pin = sealpost_relay::tls::parse_pin(&serve.pin).unwrap();
    let client = Arc::new(Client::connect_pinned(&addr, pin).await.unwrap());
    let mb = client.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env =
        sealpost_core::e2e::seal_for_invitation(&Engine::ring(), &mb.invitation(), &mb.sizes, b"x")
            .unwrap();

    // Frozen, the relay receives the deposit but cannot answer it.
    signal(&serve, "-STOP");
    let old = client.connection();
    let sent_before = old.stats().frame_tx.stream;
    let t0 = Instant::now();
    let depositing = tokio::spawn({
        let client = client.clone();
        async move { client.deposit(env).await }
    });
    until(Duration::from_secs(5), "deposit sent", || {
        old.stats().frame_tx.stream > sent_before
    })
    .await;
    signal(&serve, "-KILL");
    let mut child = serve.child;
    child.wait().unwrap();
    let again = Serve::start_on(dir.path(), &addr, &["--store", "disk"], "warn");

    let status = tokio::time::timeout(IDLE_TIMEOUT, depositing)
        .await
        .expect("the deposit finished before the idle timeout")
        .unwrap()
        .expect("the deposit succeeded on a new connection");
    assert!(status.is_success(), "{status}");
    assert!(
        matches!(old.close_reason(), Some(quinn::ConnectionError::Reset)),
        "the old connection ended by a stateless reset, not {:?}",
        old.close_reason()
    );
    assert!(t0.elapsed() < IDLE_TIMEOUT / 2, "{:?}", t0.elapsed());

    // Stored exactly once, whether or not the killed relay had stored it.
    let mut sub = client.subscribe(&mb.access(), 8).await.unwrap();
    assert_eq!(sub.pending_at_start(), 1);
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&d).unwrap()[..], b"x");
    again.stop();
}

/// A resuming subscription rides through a kill and restart: what it returned before is not
/// returned again, and new deposits keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_subscription_continues_after_a_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "disk"], "warn");
    let addr = serve.addr.clone();
    let pin = sealpost_relay::tls::parse_pin(&serve.pin).unwrap();
    let client = Client::connect_pinned(&addr, pin).await.unwrap();
    let mb = client.create(Suite::ChaCha20Poly1305).await.unwrap();
    let seal = |m: &[u8]| {
        sealpost_core::e2e::seal_for_invitation(&Engine::ring(), &mb.invitation(), &mb.sizes, m)
            .unwrap()
    };
    for m in [&b"one"[..], b"two"] {
        assert!(client.deposit(seal(m)).await.unwrap().is_success());
    }
    let mut sub = client
        .subscribe_resuming(&mb.access(), 8, Duration::from_secs(20))
        .await
        .unwrap();
    let one = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&one).unwrap()[..], b"one");
    sub.ack(one.seq).await.unwrap();
    // "two" is returned and not acknowledged: the restarted relay delivers it again.
    let two = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&two).unwrap()[..], b"two");

    signal(&serve, "-KILL");
    let mut child = serve.child;
    child.wait().unwrap();
    let again = Serve::start_on(dir.path(), &addr, &["--store", "disk"], "warn");
    let sender = Client::connect_pinned(&addr, pin).await.unwrap();
    assert!(sender.deposit(seal(b"three")).await.unwrap().is_success());

    let three = tokio::time::timeout(IDLE_TIMEOUT, sub.next())
        .await
        .expect("resumed before the idle timeout")
        .unwrap()
        .unwrap();
    assert_eq!(&mb.open(&three).unwrap()[..], b"three", "nothing twice");
    sub.ack(three.seq).await.unwrap();
    sub.finish();
    drop(sub);
    // Everything acknowledged arrived: a fresh subscription finds the mailbox empty once
    // the relay has processed the acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = client.subscribe(&mb.access(), 8).await.unwrap();
        if s.pending_at_start() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{} left", s.pending_at_start());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again.stop();
}

/// Nothing listening: the client library and `send` say so within seconds, naming the
/// address, instead of waiting for the QUIC idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_not_running_is_reported_within_seconds() {
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let inv = sealpost_core::invitation::Invitation {
        relay: addr.clone(),
        trust: sealpost_core::invitation::RelayTrust::KeyPin([7; 32]),
        deposit_id: [1; 16],
        deposit_key: sealpost_core::AeadKey::new(Suite::ChaCha20Poly1305, [2; 32]),
        e2e_public: sealpost_core::e2e::generate_keypair().1,
    };
    // `send` runs meanwhile, so the two waits overlap.
    let send = tokio::task::spawn_blocking(move || {
        cli()
            .args(["send", &inv.encode().unwrap(), "hello"])
            .output()
            .unwrap()
    });
    let t0 = Instant::now();
    let err = Client::connect_pinned(&addr, [7; 32]).await.err().unwrap();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&addr) && msg.contains("is the relay running?"),
        "{msg}"
    );
    assert!(t0.elapsed() < IDLE_TIMEOUT / 2, "{:?}", t0.elapsed());

    let out = send.await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("could not reach the relay at {addr}")),
        "{err}"
    );
}
