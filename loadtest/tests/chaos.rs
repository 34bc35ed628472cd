//! Crash safety under SIGKILL: the relay (disk store) killed at random moments under load, five
//! times, and restarted on the same data directory; nothing it acknowledged may be lost,
//! corrupted or stored twice.

mod common;

use common::relay_bin;
use sealpost_loadtest::chaos::{ChaosOptions, KillKind, run};
use sealpost_loadtest::run::StoreKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_lose_nothing_acknowledged() {
    let mut opts = ChaosOptions::new(StoreKind::Disk, relay_bin());
    opts.cycles = 5;
    opts.kill_every = Duration::from_millis(700);
    opts.mailboxes = 3;
    opts.size = 256;
    opts.progress = false;
    let r = run(opts).await.expect("chaos run completes");
    eprintln!("{}", r.text());
    assert!(r.passed(), "{}", r.text());
    assert_eq!((r.cycles, r.relay_kills, r.primary_kills), (5, 5, 0));
    assert!(r.acked > 0, "{r:?}");
    assert_eq!(r.acked_lost, 0, "{r:?}");
    assert_eq!(r.corrupted, 0, "{r:?}");
    assert_eq!(r.duplicated_after_seq_dedupe, 0, "{r:?}");
    assert_eq!(r.rejected, 0, "{r:?}");
    assert_eq!(
        r.retried_unanswered, 0,
        "every retried deposit was answered in the end: {r:?}"
    );
    assert_eq!(r.retried, r.retried_ok + r.retried_duplicate, "{r:?}");
    // One record per cycle, each with its kill and restart on the run's clock, in order.
    assert_eq!(r.per_cycle.len(), 5);
    let mut last = 0.0;
    for c in &r.per_cycle {
        assert_eq!(c.kind, KillKind::Relay);
        let back = c.restarted_s.expect("the relay came back");
        assert!(last <= c.kill_s && c.kill_s <= back, "{c:?}");
        assert!(c.acked_at_kill <= c.acked_at_restart, "{c:?}");
        last = back;
    }
    // The timeline holds every answer and every first delivery, once, and spans the cycles.
    let a = &r.attempts;
    let sum = |f: fn(&sealpost_loadtest::chaos::ChaosSecond) -> u64| {
        r.timeline.iter().map(f).sum::<u64>()
    };
    assert_eq!(sum(|s| s.acked), a.ok + a.duplicate, "{:?}", r.timeline);
    assert_eq!(sum(|s| s.failed), a.unavailable + a.unanswered + a.rejected);
    assert_eq!(sum(|s| s.delivered), r.delivered, "{:?}", r.timeline);
    assert!(r.timeline.len() as f64 > last, "{:?}", r.timeline);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "PASS");
    assert_eq!(json["per_cycle"][0]["kind"], "relay");
    assert!(json["per_cycle"][4]["kill_s"].is_f64());
}
