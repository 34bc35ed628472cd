//! A very short abuse scenario against the real relay binary: it completes, the well-behaved
//! client gets every delivery in both phases, the hostile connections did connect, and the
//! report has its fields. The targets themselves (RSS budget, p99 ratio) are for benchmarks
//! on a quiet machine, not for a timed test, so they are not asserted here.

mod common;

use sealpost_loadtest::abuse::{AbuseOptions, Attack, RelaySource, run};
use sealpost_loadtest::run::StoreKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_abuse_scenario_completes_and_reports() {
    let opts = AbuseOptions {
        hostile: 50,
        sources: 4,
        rate: 300.0,
        size: 256,
        phase: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        ramp: Duration::from_secs(1),
        recovery: Duration::from_millis(500),
        attack_mailboxes: 4,
        max_streams_per_conn: 16,
        progress: false,
        ..AbuseOptions::new(RelaySource::Spawn {
            bin: common::relay_bin(),
            store: StoreKind::Memory,
            args: vec!["shards=1".into()],
        })
    };
    let r = run(opts).await.expect("abuse run completes");
    r.print();
    assert!(r.verdict.aborted.is_none(), "{:?}", r.verdict);
    assert!(r.verdict.deliveries_complete, "{:?}", r.verdict);
    for phase in [&r.baseline, &r.attack] {
        let run = phase.run.as_ref().expect("phase completed");
        assert!(run.delivered > 0);
        assert_eq!(run.delivered, run.deposited);
        assert_eq!(run.lost, 0);
        assert!(phase.latency_ms.is_some());
    }
    assert!(r.p99_ratio.is_some());
    assert_eq!(r.hostile.len(), Attack::ALL.len());
    assert_eq!(r.hostile.iter().map(|h| h.connections).sum::<usize>(), 50);
    assert!(
        r.hostile.iter().map(|h| h.established).sum::<u64>() > 0,
        "no hostile connection was established: {:?}",
        r.hostile
    );
    assert!(!r.rss_timeline.is_empty());
    assert!(r.rss.peak_bytes.is_some() && r.rss.vm_hwm_bytes.is_some());
    assert!(
        r.metrics.after_attack.is_some(),
        "the relay's /metrics was scraped"
    );

    let json = serde_json::to_value(&r).expect("report serialises");
    for key in [
        "config",
        "machine",
        "baseline",
        "attack",
        "p99_ratio",
        "rss",
        "hostile",
        "metrics",
        "rss_timeline",
        "verdict",
    ] {
        assert!(json.get(key).is_some(), "JSON report lacks {key}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(
            json["attack"]["latency_ms"].get(key).is_some(),
            "latency lacks {key}"
        );
    }
    for key in [
        "peak_bytes",
        "vm_hwm_bytes",
        "budget_bytes",
        "peak_attack_bytes",
    ] {
        assert!(json["rss"].get(key).is_some(), "rss lacks {key}");
    }
    for key in ["memory_within_budget", "p99_within_target", "pass"] {
        assert!(json["verdict"].get(key).is_some(), "verdict lacks {key}");
    }
    for key in [
        "attack",
        "established",
        "refused",
        "up_at_end",
        "streams_opened",
    ] {
        assert!(json["hostile"][0].get(key).is_some(), "hostile lacks {key}");
    }
}
