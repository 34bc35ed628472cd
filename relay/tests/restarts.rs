//! Relay restarts are noticed at once: the stateless-reset secret outlives the process, a
//! client whose relay was killed and restarted gets a reset instead of waiting for the idle
//! timeout and sends its deposit again, a subscription resumes, and a relay that is not there
//! is reported within seconds.

mod common;

use common::process::{Serve, cli, signal};
use sealpost_client::{Client, ClientError, Delivery};
use sealpost_core::Suite;
use sealpost_core::engine::Engine;
use sealpost_core::status::DepositStatus;
use sealpost_relay::server::reset_key::FILE_NAME;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{RelayConfig, RelayLimits};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

/// Kills the relay (SIGKILL) and starts it again on the same address and data directory.
fn kill_and_restart(serve: Serve, dir: &Path) -> Serve {
    let addr = serve.addr.clone();
    signal(&serve, "-KILL");
    let mut child = serve.child;
    child.wait().unwrap();
    Serve::start_on(dir, &addr, &["--store", "disk"], "warn")
}

/// A relay with a disk store, a client pinned to it, and a mailbox on it.
async fn relay_with_mailbox(dir: &Path) -> (Serve, Client, sealpost_client::Mailbox) {
    let serve = Serve::start(dir, &["--store", "disk"], "warn");
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let client = Client::connect_pinned(&serve.addr, pin).await.unwrap();
    let mb = client.create(Suite::ChaCha20Poly1305).await.unwrap();
    (serve, client, mb)
}

/// `m` sealed for the mailbox.
fn seal(mb: &sealpost_client::Mailbox, m: &[u8]) -> bytes::Bytes {
    sealpost_core::e2e::seal_for_invitation(&Engine::ring(), &mb.invitation(), &mb.sizes, m)
        .unwrap()
}

/// Deposits `m` into the mailbox from a client of its own, not the one under test.
async fn deposit_elsewhere(serve: &Serve, mb: &sealpost_client::Mailbox, m: &[u8]) {
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let sender = Client::connect_pinned(&serve.addr, pin).await.unwrap();
    assert!(sender.deposit(seal(mb, m)).await.unwrap().is_success());
}

/// Awaits a resuming subscription's `next()` and checks that it resumed (before the idle
/// timeout; `why` says what that shows) and brought `m`.
async fn resumes_with(
    next: impl Future<Output = Result<Option<Delivery>, ClientError>>,
    mb: &sealpost_client::Mailbox,
    m: &[u8],
    why: &str,
) {
    let d = tokio::time::timeout(IDLE_TIMEOUT, next)
        .await
        .expect("resumed before the idle timeout")
        .expect(why)
        .expect("a delivery, not the end of the stream");
    assert_eq!(&mb.open(&d).unwrap()[..], m);
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
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
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
    let again = kill_and_restart(serve, dir.path());

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
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
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

    let again = kill_and_restart(serve, dir.path());
    let sender = Client::connect_pinned(&addr, pin).await.unwrap();
    assert!(sender.deposit(seal(b"three")).await.unwrap().is_success());

    let three = tokio::time::timeout(IDLE_TIMEOUT, sub.next())
        .await
        .expect("resumed before the idle timeout")
        .unwrap()
        .unwrap();
    assert_eq!(&mb.open(&three).unwrap()[..], b"three", "nothing twice");
    sub.ack(three.seq).await.unwrap();
    // The relay ends the stream once it has read our end, so after the acknowledgement: a
    // new subscription opened before that would evict this one with the acknowledgement
    // still unread (this raced before, leaving everything pending).
    sub.finish();
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the relay ends the finished subscription");
    assert!(matches!(end, Ok(None)), "nothing more is delivered");
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
        relays: vec![addr.clone()],
        trust: sealpost_core::invitation::RelayTrust::KeyPin([7; 32]),
        deposit_id: [1; 16],
        deposit_key: sealpost_core::AeadKey::new(Suite::ChaCha20Poly1305, [2; 32]),
        e2e_public: sealpost_core::e2e::generate_keypair().1,
        forward_key: None,
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

/// The resume time limit counts from the loss, not from the call: a subscription that sat in
/// `next()` on a quiet mailbox for longer than its patience still resumes after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_idle_longer_than_its_patience_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, client, mb) = relay_with_mailbox(dir.path()).await;
    let patience = Duration::from_secs(1);
    let mut sub = client
        .subscribe_resuming(&mb.access(), 8, patience)
        .await
        .unwrap();
    let mut next = std::pin::pin!(sub.next());
    // Waiting in `next()` (not cancelled) for twice the patience: that is the scenario.
    assert!(
        tokio::time::timeout(2 * patience, next.as_mut())
            .await
            .is_err(),
        "nothing to deliver yet"
    );
    let again = kill_and_restart(serve, dir.path());
    deposit_elsewhere(&again, &mb, b"late").await;
    let why = "resumed although next() had waited longer than the patience";
    resumes_with(next, &mb, b"late", why).await;
    again.stop();
}

/// Polls `fut` once, and then waits until it is woken, without polling it again: lets a test
/// look at the world between two polls of a future.
struct PollOnce<'a, F: Future>(Pin<&'a mut F>, bool);

impl<F: Future> Future for PollOnce<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.1 {
            return Poll::Ready(None);
        }
        self.1 = true;
        match self.0.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `next()` cancelled while resuming, just after the new connection was made and before the
/// new subscription answered (as `recv` does with a timeout around `next()`): the next call
/// still resumes, instead of judging the old stream's error by the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_subscription_cancelled_mid_resume_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, client, mb) = relay_with_mailbox(dir.path()).await;
    let mut sub = client
        .subscribe_resuming(&mb.access(), 8, Duration::from_secs(20))
        .await
        .unwrap();
    let old = client.connection().stable_id();
    let again = kill_and_restart(serve, dir.path());
    {
        let mut next = std::pin::pin!(sub.next());
        let deadline = Instant::now() + IDLE_TIMEOUT;
        // One poll at a time until the client has a new connection; then cancel.
        while client.connection().stable_id() == old {
            assert!(Instant::now() < deadline, "no new connection");
            if let Some(r) = PollOnce(next.as_mut(), false).await {
                panic!(
                    "next() finished before resuming: {:?}",
                    r.map(|d| d.map(|d| d.seq))
                );
            }
        }
    }
    deposit_elsewhere(&again, &mb, b"after").await;
    resumes_with(
        sub.next(),
        &mb,
        b"after",
        "resumed after the cancelled call",
    )
    .await;
    again.stop();
}

/// The relay stored a deposit and was killed and restarted; the same envelope sent again by
/// the client (its first try on the old connection ends by the stateless reset, the resend
/// goes out on a new one) comes back DUPLICATE, a success, and is stored once: what happens
/// when a killed relay stored a deposit whose answer was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_resent_after_a_restart_is_a_duplicate_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, client, mb) = relay_with_mailbox(dir.path()).await;
    let env = seal(&mb, b"once");
    assert_eq!(
        client.deposit(env.clone()).await.unwrap(),
        DepositStatus::Ok
    );
    let old = client.connection();
    let again = kill_and_restart(serve, dir.path());
    let status = tokio::time::timeout(IDLE_TIMEOUT, client.deposit(env))
        .await
        .expect("answered before the idle timeout")
        .expect("resent on a new connection");
    assert_eq!(status, DepositStatus::Duplicate);
    assert!(
        matches!(old.close_reason(), Some(quinn::ConnectionError::Reset)),
        "the first try went to the old connection, reset by the restarted relay: {:?}",
        old.close_reason()
    );
    let mut sub = client.subscribe(&mb.access(), 8).await.unwrap();
    assert_eq!(sub.pending_at_start(), 1, "stored once");
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&d).unwrap()[..], b"once");
    again.stop();
}
