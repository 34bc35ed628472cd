//! What a run counts and shares between its tasks: per-mailbox acknowledgements and
//! deliveries, counters, and latency histograms.

use super::options::E2eMode;
use hdrhistogram::Histogram;
use sealpost_core::padding::SizeClasses;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Per-mailbox bookkeeping, indexed by the generator's sequence number.
#[derive(Default)]
pub(crate) struct Track {
    /// Sequence numbers the relay acknowledged.
    pub acked: Vec<bool>,
    /// Sequence numbers delivered (and verified).
    pub delivered: Vec<bool>,
}

/// Sets entry `i` of `v` (growing it), returning whether it was set already.
pub(crate) fn mark(v: &mut Vec<bool>, i: u64) -> bool {
    let i = i as usize;
    if v.len() <= i {
        v.resize(i + 1, false);
    }
    std::mem::replace(&mut v[i], true)
}

#[derive(Default)]
pub(crate) struct Counters {
    pub deposited: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries after the warm-up: what throughput is computed from.
    pub delivered_measured: AtomicU64,
    pub duplicated: AtomicU64,
    pub corrupted: AtomicU64,
}

/// Latency histograms shared by every subscriber: the whole run's (after the warm-up) and
/// the current second's (for the progress line and the timeline).
pub(crate) struct Latencies {
    /// After the warm-up.
    pub total: Histogram<u64>,
    /// The current second.
    pub second: Histogram<u64>,
}

/// What every sender and subscriber of a run shares.
pub(crate) struct Ctx {
    pub run_id: u64,
    /// Deliveries arrive unsealed from the baseline forwarder.
    pub unsealed: bool,
    pub warmup_us: u64,
    /// When the load phase ends (warm-up plus duration), microseconds after the start: the
    /// open loop schedules nothing from then on.
    pub load_end_us: u64,
    pub latencies: Mutex<Latencies>,
    pub mode: E2eMode,
    pub size: u32,
    /// Per-mailbox keys in the fast mode.
    pub fast_keys: Vec<crate::fast::FastKey>,
    pub start: Instant,
    pub content_len: usize,
    pub sizes: SizeClasses,
    pub counters: Counters,
    pub tracks: Vec<Mutex<Track>>,
    pub live_delivered: Option<Arc<AtomicU64>>,
}

impl Ctx {
    /// Microseconds since the load started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Envelopes acknowledged by the relay and never delivered.
    pub fn lost(&self) -> u64 {
        self.tracks
            .iter()
            .map(|t| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner());
                t.acked
                    .iter()
                    .enumerate()
                    .filter(|(i, a)| **a && !t.delivered.get(*i).copied().unwrap_or(false))
                    .count() as u64
            })
            .sum()
    }
}

/// A latency histogram in microseconds, 1 µs to 120 s, three significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}
