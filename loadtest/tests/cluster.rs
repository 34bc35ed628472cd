//! `run` on the cluster store: two relay processes on a Valkey cluster started for the run,
//! every mailbox deposited to one relay and delivered through the other; the report carries the
//! relays' and the Valkey nodes' CPU and the group commits per deposit.

mod common;

use common::relay_bin;
use sealpost_loadtest::fleet::{FleetOptions, default_cluster_script};
use sealpost_loadtest::run::{E2eMode, RunOptions, StoreKind, Target, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_run_crosses_relays_and_measures_cpu() {
    if !common::valkey_or_skip("cluster_run_crosses_relays_and_measures_cpu") {
        return;
    }
    let fleet = FleetOptions {
        store: StoreKind::Cluster,
        relays: 2,
        cluster_nodes: None,
        relay_bin: relay_bin(),
        cluster_script: default_cluster_script(),
        master_key_file: None,
    };
    let report = run(RunOptions {
        target: Target::Processes(fleet),
        mailboxes: 8,
        connections: 4,
        size: 1024,
        duration: Duration::from_millis(1500),
        rate: None,
        warmup: Duration::from_millis(300),
        depth: 32,
        window: 32,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: StoreKind::Memory,
        backlog: false,
        e2e: E2eMode::Fast,
        live_delivered: None,
        via: None,
        label: String::new(),
    })
    .await
    .expect("cluster run completes");
    assert!(report.acked > 0, "{report:?}");
    assert_eq!(report.delivered, report.acked, "{report:?}");
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.corrupted,
            report.rejected
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(report.relays.len(), 2);
    assert!(report.cross_relay);
    assert!(report.cluster_started);
    assert_eq!(report.cluster_nodes.as_ref().map(Vec::len), Some(6));
    assert_eq!(report.config.store, Some(StoreKind::Cluster));
    let u = report.usage.as_ref().expect("relay processes are measured");
    assert_eq!((u.relay_processes, u.valkey_processes), (2, 6), "{u:?}");
    assert_eq!(u.deliveries, report.delivered);
    assert!(u.relay_cpu_s > 0.0, "{u:?}");
    assert!(u.valkey_cpu_s.is_some_and(|s| s > 0.0), "{u:?}");
    // Every acknowledged deposit was confirmed by WAITAOF after its group commit.
    let w = u.waitaof_per_deposit.expect("Valkey command counters read");
    assert!(w > 0.0, "{u:?}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["usage"]["relay_cpu_s_per_100k_deliveries"].is_f64());
    assert!(json["usage"]["valkey_cpu_s_per_100k_deliveries"].is_f64());
}
