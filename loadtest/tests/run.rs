//! A short load run against a spawned relay: every acknowledged deposit is delivered once,
//! intact, and the report's arithmetic holds.

use sealpost_loadtest::run::{RunOptions, Target, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_spawned_run_loses_nothing() {
    let report = run(RunOptions {
        target: Target::Spawn,
        mailboxes: 12,
        connections: 3,
        size: 256,
        duration: Duration::from_millis(1500),
        depth: 32,
        window: 16,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: sealpost_loadtest::run::StoreKind::Memory,
        backlog: false,
        e2e: sealpost_loadtest::run::E2eMode::Hpke,
    })
    .await
    .expect("run completes");
    assert!(report.deposited > 0, "{report:?}");
    assert_eq!(
        report.acked, report.deposited,
        "every deposit answered OK: {report:?}"
    );
    assert_eq!(report.delivered, report.acked, "{report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicated, 0);
    assert_eq!(report.corrupted, 0);
    assert_eq!(report.rejected, 0);
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.max);
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "deposited",
        "acked",
        "delivered",
        "lost",
        "duplicated",
        "corrupted",
        "rejected",
        "duration_s",
        "deliveries_per_s",
        "bytes_per_s",
        "latency_us",
    ] {
        assert!(json.get(key).is_some(), "JSON report lacks {key}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(
            json["latency_us"].get(key).is_some(),
            "JSON latency lacks {key}"
        );
    }
}

#[tokio::test]
async fn a_size_the_relay_does_not_allow_is_a_clear_error() {
    let err = run(RunOptions {
        target: Target::Spawn,
        mailboxes: 1,
        connections: 1,
        size: 1000,
        duration: Duration::from_millis(100),
        depth: 4,
        window: 4,
        drain_timeout: Duration::from_secs(1),
        progress: false,
        store: sealpost_loadtest::run::StoreKind::Memory,
        backlog: false,
        e2e: sealpost_loadtest::run::E2eMode::Hpke,
    })
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--size 1000 is not a body size"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_run_on_the_disk_store_loses_nothing_and_reports_writes() {
    let report = run(RunOptions {
        target: Target::Spawn,
        mailboxes: 6,
        connections: 2,
        size: 1024,
        duration: Duration::from_millis(1200),
        depth: 32,
        window: 16,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: sealpost_loadtest::run::StoreKind::Disk,
        backlog: true,
        e2e: sealpost_loadtest::run::E2eMode::Fast,
    })
    .await
    .expect("run completes");
    assert!(report.deposited > 0, "{report:?}");
    assert_eq!(report.delivered, report.acked, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicated, report.corrupted),
        (0, 0, 0),
        "{report:?}"
    );
    if std::path::Path::new("/proc/self/io").exists() {
        let w = report
            .write_bytes_per_deposited_byte
            .expect("write amplification measured");
        assert!(
            w > 0.5,
            "a durable store writes at least the envelopes: {w}"
        );
    }
    assert!(report.data_dir_bytes_after_drain.is_some());
}
