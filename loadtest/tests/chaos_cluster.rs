//! Failover under load on the cluster store (issue 12): two relay processes on a private
//! Valkey cluster (started by the load generator with deploy/valkey/cluster.sh), deposits
//! through one relay and subscriptions through the other, three relays and three Valkey
//! primaries SIGKILLed at random moments in random order. Each killed primary's replica must
//! take over and the node rejoin; nothing acknowledged may be lost, corrupted or stored twice,
//! and deposits sent while a part was down end OK, DUPLICATE or UNAVAILABLE (then sent again),
//! never an OK that is not kept.

mod common;

use common::relay_bin;
use sealpost_loadtest::chaos::{ChaosOptions, KillKind, run};
use sealpost_loadtest::run::StoreKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_primaries_killed_lose_nothing_acknowledged() {
    if !common::valkey_or_skip("relays_and_primaries_killed_lose_nothing_acknowledged") {
        return;
    }
    let mut opts = ChaosOptions::new(StoreKind::Cluster, relay_bin());
    assert_eq!(opts.kinds, [KillKind::Relay, KillKind::Primary]);
    opts.cycles = 3;
    opts.kill_every = Duration::from_millis(800);
    opts.mailboxes = 12;
    opts.size = 256;
    opts.depositors = 8;
    opts.progress = true;
    let r = run(opts).await.expect("chaos run completes");
    eprintln!("{}", r.text());
    assert!(r.passed(), "{}", r.text());
    assert_eq!((r.relay_kills, r.primary_kills), (3, 3), "{}", r.text());
    assert_eq!(r.relays, 2);
    assert!(
        r.cross_relay,
        "deposits and subscriptions start on different relays"
    );
    assert_eq!(r.cluster_nodes.len(), 6);
    assert!(r.acked > 0);
    assert_eq!(
        (r.acked_lost, r.corrupted, r.duplicated_after_seq_dedupe),
        (0, 0, 0),
        "{}",
        r.text()
    );
    assert_eq!((r.rejected, r.unsettled), (0, 0), "{}", r.text());
    // Every acknowledged envelope reached the live subscriptions: none stayed unpushed after a
    // failover (a new subscription at the end would have found it).
    assert_eq!(r.found_by_new_subscription, 0, "{}", r.text());
    for c in &r.per_cycle {
        assert!(c.error.is_none(), "{c:?}");
        assert_eq!(c.window_acked_lost, 0, "no false OK in the window: {c:?}");
        // Answers in the window are OK, DUPLICATE, UNAVAILABLE or none; nothing else.
        assert_eq!(c.window.rejected, 0, "{c:?}");
        let back = c.restarted_s.expect("back");
        if c.kind == KillKind::Primary {
            let promoted = c.promoted_s.expect("a replica was promoted");
            assert!(c.kill_s < promoted && promoted <= back, "{c:?}");
            assert_ne!(c.promoted.as_deref(), Some(c.target.as_str()));
        }
    }
}
