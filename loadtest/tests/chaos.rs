//! Crash safety under SIGKILL: the relay (disk store) killed at random moments under load, five
//! times, and restarted on the same data directory; nothing it acknowledged may be lost,
//! corrupted or stored twice.

mod common;

use common::relay_bin;
use sealpost_loadtest::chaos::{ChaosOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_lose_nothing_acknowledged() {
    let r = run(ChaosOptions {
        relay_bin: relay_bin(),
        cycles: 5,
        kill_every: Duration::from_millis(700),
        mailboxes: 3,
        size: 256,
    })
    .await
    .expect("chaos run completes");
    eprintln!("{r:?}");
    assert_eq!(r.cycles, 5);
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
}
