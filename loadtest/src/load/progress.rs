//! The per-second timeline of a run and its progress line on standard error.

use super::tally::Ctx;
use crate::report::Second;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clears the progress line, so that what is printed next starts on a clean line and no
/// progress figure is left among the results.
pub(crate) fn clear_line() {
    eprint!("\r\x1b[2K");
}

/// Once a second: appends a timeline entry and, on a terminal, rewrites the progress line.
pub(crate) async fn tick(
    ctx: Arc<Ctx>,
    timeline: Arc<Mutex<Vec<Second>>>,
    progress: bool,
    label: String,
) {
    let label = if label.is_empty() {
        label
    } else {
        format!("[{label}] ")
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let c = &ctx.counters;
    let (mut dep0, mut del0, mut err0) = (0, 0, 0);
    loop {
        tick.tick().await;
        let dep = c.deposited.load(Ordering::Relaxed);
        let del = c.delivered.load(Ordering::Relaxed);
        let err = c.rejected.load(Ordering::Relaxed)
            + c.corrupted.load(Ordering::Relaxed)
            + c.duplicated.load(Ordering::Relaxed);
        let (p50, p99) = {
            let mut l = ctx.latencies.lock().unwrap_or_else(|p| p.into_inner());
            let p = (
                l.second.value_at_quantile(0.50),
                l.second.value_at_quantile(0.99),
            );
            l.second.reset();
            p
        };
        let t = ctx.start.elapsed().as_secs_f64();
        let entry = Second {
            t_s: t.round() as u64,
            // A second that began before the warm-up ended belongs to it.
            warmup: t - 1.0 < ctx.warmup_us as f64 / 1e6,
            deposited: dep - dep0,
            delivered: del - del0,
            errors: err - err0,
            p50_us: p50,
            p99_us: p99,
        };
        if progress {
            eprint!(
                "\r\x1b[2K{label}{:>4.0} s{}  {} deposits/s  {} deliveries/s  p99 {:.2} ms  errors {}  delivered {}",
                t,
                if entry.warmup { " (warm-up)" } else { "" },
                entry.deposited,
                entry.delivered,
                p99 as f64 / 1000.0,
                err,
                del,
            );
        }
        timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        (dep0, del0, err0) = (dep, del, err);
    }
}
