//! A short load run against a spawned relay: every acknowledged deposit is delivered once,
//! intact, and the report's arithmetic holds.

use sealpost_loadtest::run::{RunOptions, Target, Via, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_spawned_run_loses_nothing() {
    let report = run(RunOptions {
        mailboxes: 12,
        connections: 3,
        size: 256,
        warmup: Duration::ZERO,
        depth: 32,
        window: 16,
        e2e: sealpost_loadtest::run::E2eMode::Hpke,
        ..options(Target::Spawn)
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
    // The whole histogram is kept and gives back the summary's percentiles.
    let h = report
        .latency_histogram
        .decode()
        .expect("histogram decodes");
    assert_eq!(h.len(), report.latency_histogram.count);
    assert!(!h.is_empty() && h.len() <= report.delivered);
    assert_eq!(h.value_at_quantile(0.99), report.latency_us.p99);
    assert_eq!(h.max(), report.latency_us.max);
    assert!(
        json["latency_histogram"]["percentiles"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    // A second per timeline entry, with its throughput and percentiles.
    assert!(!report.timeline.is_empty(), "{report:?}");
    assert!(
        report
            .timeline
            .iter()
            .any(|s| s.delivered > 0 && s.p50_us > 0 && s.p50_us <= s.p99_us)
    );
    // Saved and read back, the report is the same.
    let back: sealpost_loadtest::report::Report = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(
        back.latency_histogram.hdr_v2_base64,
        report.latency_histogram.hdr_v2_base64
    );
    assert_eq!(back.timeline.len(), report.timeline.len());
    assert_eq!(back.delivered, report.delivered);
}

#[tokio::test]
async fn a_size_the_relay_does_not_allow_is_a_clear_error() {
    let err = run(RunOptions {
        mailboxes: 1,
        connections: 1,
        size: 1000,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        depth: 4,
        window: 4,
        drain_timeout: Duration::from_secs(1),
        e2e: sealpost_loadtest::run::E2eMode::Hpke,
        ..options(Target::Spawn)
    })
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--size 1000 is not a body size"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_run_on_the_disk_store_loses_nothing_and_reports_writes() {
    let report = run(RunOptions {
        mailboxes: 6,
        duration: Duration::from_millis(1200),
        warmup: Duration::ZERO,
        depth: 32,
        window: 16,
        store: sealpost_loadtest::run::StoreKind::Disk,
        backlog: true,
        ..options(Target::Spawn)
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
    let summary = report.summary();
    assert!(summary.contains("disk: data directory"), "{summary}");
}

fn options(target: Target) -> RunOptions {
    RunOptions {
        target,
        mailboxes: 8,
        connections: 2,
        size: 1024,
        duration: Duration::from_millis(1500),
        rate: None,
        warmup: Duration::from_millis(500),
        depth: 64,
        window: 32,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: sealpost_loadtest::run::StoreKind::Memory,
        backlog: false,
        e2e: sealpost_loadtest::run::E2eMode::Fast,
        live_delivered: None,
        via: None,
        label: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_forwards_everything_and_reports_the_run() {
    let report = run(options(Target::Baseline)).await.expect("baseline run");
    assert!(report.deposited > 0);
    assert_eq!(report.delivered, report.deposited, "{report:?}");
    assert_eq!(
        (report.lost, report.corrupted, report.duplicated),
        (0, 0, 0)
    );
    assert_eq!(report.config.relay, "baseline");
    assert!(report.machine.cores >= 1);
    // Warm-up seconds are in the timeline, marked, and not in the measured span.
    assert!(report.timeline.len() >= 2, "{:?}", report.timeline);
    assert!(report.timeline[0].warmup);
    assert!(report.measured_s < report.duration_s);
    let json = serde_json::to_value(&report).unwrap();
    for key in ["machine", "timeline", "config"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["config"]["mode"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_to_its_rate() {
    let mut o = options(Target::Spawn);
    o.rate = Some(400.0);
    let report = run(o).await.expect("open-loop run");
    // 2 s of schedule at 400/s: 800 envelopes due; allow the last tick's slack.
    assert!(
        (700..=805).contains(&report.deposited),
        "deposited {} at 400/s for 2 s",
        report.deposited
    );
    assert_eq!(report.delivered, report.deposited);
    assert_eq!(report.config.mode, "open");
    assert!(report.latency_us.p50 > 0);
    let summary = report.summary();
    assert!(summary.contains("open loop"), "{summary}");
    assert!(!summary.contains("queueing"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_store_summary_is_honest_about_what_it_measured() {
    let report = run(options(Target::Spawn)).await.expect("run");
    let summary = report.summary();
    // Latency in ms; closed loop explained as queueing at the chosen depth; the sealing mode
    // named; no disk figures for a memory store.
    assert!(
        summary.contains("latency ms, deposit to delivery"),
        "{summary}"
    );
    assert!(!summary.contains("µs"), "{summary}");
    assert!(
        summary.contains("closed loop: 2 connections × depth 64 keep 128 deposits in flight")
            && summary.contains("queueing at that depth"),
        "{summary}"
    );
    assert!(
        summary.contains("end-to-end sealing in the generator: fast"),
        "{summary}"
    );
    assert!(summary.contains("memory store"), "{summary}");
    assert!(!summary.contains("disk:"), "{summary}");
    assert_eq!(report.disk_write_bytes_during_load, None);
    assert_eq!(report.write_bytes_per_deposited_byte, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_refuses_a_backlog_run() {
    let mut o = options(Target::Baseline);
    o.backlog = true;
    let e = run(o).await.expect_err("a backlog needs a store");
    assert!(e.to_string().contains("backlog"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_reports_medians_and_ratios() {
    let mut o = options(Target::Baseline);
    o.duration = Duration::from_millis(800);
    o.warmup = Duration::from_millis(200);
    let mut seen = Vec::new();
    let r = sealpost_loadtest::compare::compare(o, 1, None, |run| seen.push(run.kind.clone()))
        .await
        .expect("compare");
    assert_eq!(seen, ["baseline", "memory", "disk"]);
    assert!(r.baseline.deliveries_per_s > 0.0);
    assert!(
        r.ratios.memory > 0.0 && r.ratios.disk > 0.0,
        "{:?}",
        r.ratios
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["ratios"]["memory"].is_f64() && json["ratios"]["disk"].is_f64());
    assert_eq!(json["runs"].as_array().map(|a| a.len()), Some(3));
    // One round: the spread is that round's figure, and nothing went missing.
    for m in [&r.baseline, &r.memory, &r.disk] {
        assert_eq!(m.spread.deliveries_per_s, [m.deliveries_per_s; 2], "{m:?}");
        assert_eq!(m.spread.p99_us, [m.p99_us; 2], "{m:?}");
        assert_eq!(
            (m.faults.lost, m.faults.duplicated, m.faults.corrupted),
            (0, 0, 0)
        );
        let cells = m.cells();
        assert!(
            cells[0].contains('[') && cells[0].contains('–'),
            "{cells:?}"
        );
        assert_eq!(cells[4], "0/0/0");
    }
    assert_eq!(r.e2e, sealpost_loadtest::run::E2eMode::Fast);
}

/// `run --via spawn`: every deposit goes as a FORWARD through a forwarding relay the run
/// starts, and every one is acknowledged by the target and delivered, verified, once; the
/// report names the forwarding relay and measures latency as for direct deposits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_a_forwarding_relay_delivers_everything() {
    let report = run(RunOptions {
        via: Some(Via::Spawn),
        ..options(Target::Spawn)
    })
    .await
    .expect("run through a forwarding relay");
    assert!(report.deposited > 0);
    assert_eq!(
        (report.acked, report.delivered, report.rejected),
        (report.deposited, report.deposited, 0),
        "{report:?}"
    );
    assert_eq!(
        (report.lost, report.corrupted, report.duplicated),
        (0, 0, 0)
    );
    let via = report
        .config
        .via
        .as_deref()
        .expect("the report names the forwarder");
    assert!(via.starts_with("spawned forwarder 127.0.0.1:"), "{via}");
    assert_ne!(via, format!("spawned forwarder {}", report.relays[0]));
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.max);
}

/// `--via` with the baseline target is refused before anything starts: the baseline has no
/// forwarding key.
#[tokio::test]
async fn via_the_baseline_is_a_clear_error() {
    let err = run(RunOptions {
        via: Some(Via::Spawn),
        ..options(Target::Baseline)
    })
    .await
    .expect_err("nothing forwards to the baseline");
    assert!(err.to_string().contains("forwarding key"), "{err}");
}
