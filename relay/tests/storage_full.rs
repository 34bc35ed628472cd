//! A disk store below its free-space reserve: deposits and CREATE are refused with the
//! retryable STORAGE_FULL, readiness and the gauges say so, deliveries and ACKs go on, and
//! everything comes back once there is space again. The free space is injected, so "the disk
//! is nearly full" is simulated deterministically; the real binary with a reserve larger than
//! any disk shows what the CLI says. (In a test binary of its own: the in-process test
//! installs the process-wide metrics recorder and reads gauges another in-process relay would
//! also set.)

mod common;

use common::admin::{await_metrics, get};
use common::process::http_get;
use sealpost_core::Suite;
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_relay::store::disk::{DiskOptions, DiskStore};
use sealpost_relay::store::space::FreeSpace;
use sealpost_relay::store::{Store, StoreError};
use sealpost_relay::{RelayConfig, RelayLimits};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const RESERVE: u64 = 1 << 20;
const PLENTY: u64 = 1 << 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_deposits_wait_and_deliveries_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(AtomicU64::new(PLENTY));
    let source = free.clone();
    let measure: Arc<dyn FreeSpace> = Arc::new(move || Ok(source.load(Ordering::Relaxed)));
    let limits = RelayLimits::default();
    let store = DiskStore::open(
        &dir.path().join("store"),
        limits.quotas(),
        DiskOptions {
            min_free_bytes: RESERVE,
            free_space: Some(measure),
            ..DiskOptions::default()
        },
    )
    .unwrap();
    let prom = sealpost_relay::admin::install_recorder().unwrap();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    cfg.limits = limits;
    let handle = sealpost_relay::start(cfg, Arc::new(store.clone()))
        .await
        .unwrap();
    let (admin, _task) =
        sealpost_relay::admin::serve("127.0.0.1:0".parse().unwrap(), prom, handle.readiness())
            .await
            .unwrap();
    let admin = admin.to_string();
    let c = sealpost_client::Client::connect_pinned(&handle.local_addr().to_string(), handle.pin())
        .await
        .unwrap();
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    for text in [&b"one"[..], b"two"] {
        let env = common::seal(&c, &mb, text).await;
        assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    }
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    assert_eq!(get(&admin, "/servingz").await.0, 200);
    await_metrics(
        &admin,
        &[
            ("sealpost_ready", 1.0),
            ("sealpost_store_space_low", 0.0),
            ("sealpost_store_free_bytes", PLENTY as f64),
            ("sealpost_store_reserve_bytes", RESERVE as f64),
            ("sealpost_store_failed", 0.0),
            ("sealpost_store_recovery_shortfall_envelopes", 0.0),
        ],
    )
    .await;

    // The disk fills up.
    free.store(RESERVE - 1, Ordering::Relaxed);
    let env = common::seal(&c, &mb, b"three").await;
    let status = c.deposit(env.clone()).await.unwrap();
    assert_eq!(status, DepositStatus::StorageFull);
    assert!(status.is_retryable());
    let refused = c.create(Suite::ChaCha20Poly1305).await.unwrap_err();
    assert_eq!(common::relay_error(refused), ErrorCode::StorageFull);
    assert!(matches!(
        store.create_mailbox(new_record(&store)).await,
        Err(StoreError::StorageFull { .. })
    ));
    let (code, body) = get(&admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("disk nearly full"), "{body}");
    assert_eq!(get(&admin, "/healthz").await.0, 200, "alive all the same");
    // Still serving, so that load balancers keep sending the recipients who free the space.
    let (code, body) = get(&admin, "/servingz").await;
    assert_eq!(code, 200, "{body}");
    await_metrics(
        &admin,
        &[
            ("sealpost_ready", 0.0),
            ("sealpost_store_space_low", 1.0),
            ("sealpost_store_free_bytes", (RESERVE - 1) as f64),
        ],
    )
    .await;
    // What frees space still works: the recipient drains its mailbox.
    let mut sub = c.subscribe(&mb.access(), 8).await.unwrap();
    for want in [&b"one"[..], b"two"] {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&mb.open(&d).unwrap()[..], want);
        sub.ack(d.seq).await.unwrap();
    }
    common::end_subscription(&mut sub).await;
    assert_eq!(store.stats().await.envelopes, 0);

    // Space comes back: so do deposits and readiness, without a restart.
    free.store(RESERVE, Ordering::Relaxed);
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    await_metrics(
        &admin,
        &[("sealpost_ready", 1.0), ("sealpost_store_space_low", 0.0)],
    )
    .await;
    c.create(Suite::ChaCha20Poly1305).await.unwrap();
    c.close().await;
    sealpost_relay::shutdown::stop(handle, Some(store), Duration::from_secs(3))
        .await
        .unwrap();
}

fn new_record(store: &DiskStore) -> sealpost_relay::store::MailboxRecord {
    sealpost_relay::store::MailboxRecord::new(
        [9; 16],
        store.deposit_id_for(&[9; 16]),
        Suite::ChaCha20Poly1305,
        [1; 32],
        sealpost_core::keys::RecipientSecret([2; 32]),
    )
}

/// The real binary with a reserve larger than any disk: not ready, and `send` and
/// `mailbox create` tell the person what is going on.
#[test]
fn the_cli_says_the_relay_disk_is_nearly_full() {
    use common::process::{Serve, cli, create_mailbox};
    let data = tempfile::tempdir().unwrap();
    // One address for both runs, since the invitation names it.
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let serve = Serve::start_on(data.path(), &listen, &[], "warn");
    let invitation = create_mailbox(&serve.addr, &serve.pin, &data.path().join("mb.json"));
    serve.stop();
    let serve = Serve::start_on(
        data.path(),
        &listen,
        &["--min-free-disk-bytes", "1000000000000000000"],
        "warn",
    );
    let (code, body) = http_get(&serve.admin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("disk nearly full"), "{body}");
    let (code, body) = http_get(&serve.admin, "/servingz");
    assert_eq!(code, 200, "serving below the reserve: {body}");
    let sent = cli().args(["send", &invitation, "hello"]).output().unwrap();
    let err = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success());
    assert!(
        err.contains(
            "relay refused: STORAGE_FULL: the relay's disk is nearly full: it refuses new envelopes"
        ),
        "{err}"
    );
    let created = cli()
        .args([
            "mailbox",
            "create",
            "--relay",
            &serve.addr,
            "--pin",
            &serve.pin,
            "--out",
        ])
        .arg(data.path().join("mb2.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(!created.status.success());
    assert!(
        err.contains(
            "relay refused: STORAGE_FULL: the relay's disk is nearly full: it refuses new envelopes"
        ),
        "{err}"
    );
    serve.stop();
}
