//! `compare`: the transport baseline and the relay (memory store, then disk store) under the
//! same load in one invocation, interleaved and repeated, with medians and the ratios
//! relay / baseline. Interleaving spreads a shared machine's noise over all three alike.

use crate::report::{Machine, Report};
use crate::run::{RunOptions, StoreKind, Target, run};
use serde::Serialize;

/// The three kinds of run, in the order each repeat runs them.
pub const KINDS: [&str; 3] = ["baseline", "memory", "disk"];

/// One run of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRun {
    /// `baseline`, `memory` or `disk`.
    pub kind: &'static str,
    /// Which repeat (from 1).
    pub repeat: usize,
    /// Its full report.
    pub report: Report,
}

/// Medians of one kind over the repeats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Medians {
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Body bytes per second.
    pub bytes_per_s: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

/// Relay deliveries per second over baseline deliveries per second (medians).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// Memory store.
    pub memory: f64,
    /// Disk store.
    pub disk: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Envelope body size.
    pub size: u32,
    /// Repeats of each kind.
    pub repeats: usize,
    /// Where it ran.
    pub machine: Machine,
    /// Medians per kind.
    pub baseline: Medians,
    /// Relay with the memory store.
    pub memory: Medians,
    /// Relay with the disk store.
    pub disk: Medians,
    /// The ratios the targets are stated in.
    pub ratios: Ratios,
    /// Every run, in the order they ran.
    pub runs: Vec<CompareRun>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn medians(runs: &[CompareRun], kind: &str) -> Medians {
    let of = |f: fn(&Report) -> f64| {
        median(
            runs.iter()
                .filter(|r| r.kind == kind)
                .map(|r| f(&r.report))
                .collect(),
        )
    };
    Medians {
        deliveries_per_s: of(|r| r.deliveries_per_s),
        bytes_per_s: of(|r| r.bytes_per_s),
        p50_us: of(|r| r.latency_us.p50 as f64),
        p99_us: of(|r| r.latency_us.p99 as f64),
        p999_us: of(|r| r.latency_us.p999 as f64),
    }
}

/// Runs the comparison. `template` gives the load (its target and store are replaced);
/// `each` sees every run as it finishes. A run that loses, corrupts or duplicates anything
/// fails the comparison: its figures would not mean what they say.
pub async fn compare(
    template: RunOptions,
    repeats: usize,
    mut each: impl FnMut(&CompareRun),
) -> anyhow::Result<CompareReport> {
    anyhow::ensure!(repeats >= 1, "--repeat must be at least 1");
    let mut runs = Vec::with_capacity(3 * repeats);
    for repeat in 1..=repeats {
        for kind in KINDS {
            let mut o = template.clone();
            match kind {
                "baseline" => o.target = Target::Baseline,
                "memory" => {
                    o.target = Target::Spawn;
                    o.store = StoreKind::Memory;
                }
                _ => {
                    o.target = Target::Spawn;
                    o.store = StoreKind::Disk;
                }
            }
            let report = run(o).await?;
            anyhow::ensure!(
                report.lost == 0 && report.corrupted == 0 && report.duplicated == 0,
                "{kind} run {repeat} lost {}, corrupted {} and duplicated {} envelopes",
                report.lost,
                report.corrupted,
                report.duplicated
            );
            let r = CompareRun {
                kind,
                repeat,
                report,
            };
            each(&r);
            runs.push(r);
        }
    }
    let baseline = medians(&runs, "baseline");
    let memory = medians(&runs, "memory");
    let disk = medians(&runs, "disk");
    let ratio = |m: &Medians| {
        if baseline.deliveries_per_s > 0.0 {
            m.deliveries_per_s / baseline.deliveries_per_s
        } else {
            0.0
        }
    };
    Ok(CompareReport {
        size: template.size,
        repeats,
        machine: Machine::this(),
        ratios: Ratios {
            memory: ratio(&memory),
            disk: ratio(&disk),
        },
        baseline,
        memory,
        disk,
        runs,
    })
}
