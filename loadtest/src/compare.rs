//! `compare`: the transport baseline and the relay (memory store, then disk store, and with a
//! cluster column the cluster store) under the same load in one invocation, interleaved and
//! repeated, with medians and the ratios relay / baseline. Interleaving spreads a shared
//! machine's noise over all kinds alike.

use crate::fleet::{FleetOptions, OwnCluster, start_cluster};
use crate::report::{Machine, Report};
use crate::run::{RunOptions, StoreKind, Target, run};
use serde::{Deserialize, Serialize};

/// The kinds of run, in the order each repeat runs them (`cluster` only with a cluster column).
pub const KINDS: [&str; 4] = ["baseline", "memory", "disk", "cluster"];

/// One run of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRun {
    /// `baseline`, `memory`, `disk` or `cluster`.
    pub kind: String,
    /// Which repeat (from 1).
    pub repeat: usize,
    /// Its full report.
    pub report: Report,
}

/// Medians of one kind over the repeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// Relay CPU seconds per 100 000 deliveries (relay processes only).
    pub relay_cpu_s_per_100k: Option<f64>,
    /// Valkey CPU seconds per 100 000 deliveries (cluster store).
    pub valkey_cpu_s_per_100k: Option<f64>,
    /// Smallest and largest of each figure over the repeats, beside the medians.
    #[serde(default)]
    pub spread: Spread,
    /// Envelopes lost, duplicated and corrupted, over all the repeats.
    #[serde(default)]
    pub faults: Faults,
}

impl Medians {
    /// The figures as a person reads them: deliveries/s, p50, p99 and p99.9 in ms, each as
    /// `median [min–max]`, then `lost/duplicated/corrupted`.
    pub fn cells(&self) -> [String; 5] {
        let range = |m: f64, s: [f64; 2], f: &dyn Fn(f64) -> String| {
            format!("{} [{}–{}]", f(m), f(s[0]), f(s[1]))
        };
        let rate = |v: f64| format!("{v:.0}");
        let ms = crate::report::ms_f;
        let s = &self.spread;
        [
            range(self.deliveries_per_s, s.deliveries_per_s, &rate),
            range(self.p50_us, s.p50_us, &ms),
            range(self.p99_us, s.p99_us, &ms),
            range(self.p999_us, s.p999_us, &ms),
            format!(
                "{}/{}/{}",
                self.faults.lost, self.faults.duplicated, self.faults.corrupted
            ),
        ]
    }
}

/// Smallest and largest value over the repeats, `[min, max]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spread {
    /// Deliveries per second.
    pub deliveries_per_s: [f64; 2],
    /// Median latency, microseconds.
    pub p50_us: [f64; 2],
    /// 99th percentile latency, microseconds.
    pub p99_us: [f64; 2],
    /// 99.9th percentile latency, microseconds.
    pub p999_us: [f64; 2],
}

/// What went wrong with the envelopes of one kind's runs, summed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Acknowledged and never delivered.
    pub lost: u64,
    /// Delivered more than once.
    pub duplicated: u64,
    /// Delivered but failing the end-to-end check.
    pub corrupted: u64,
}

/// Relay deliveries per second over baseline deliveries per second (medians).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    /// Memory store.
    pub memory: f64,
    /// Disk store.
    pub disk: f64,
    /// Cluster store.
    pub cluster: Option<f64>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    /// Envelope body size.
    pub size: u32,
    /// End-to-end sealing in the generator, the same for every kind.
    #[serde(default = "default_e2e")]
    pub e2e: crate::load::options::E2eMode,
    /// The command line that produced the report, as typed.
    #[serde(default)]
    pub command: Option<String>,
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
    /// Relays on the cluster store.
    pub cluster: Option<Medians>,
    /// Cluster store over disk store: deliveries/s and relay CPU per delivery (medians).
    pub cluster_vs_disk: Option<ClusterVsDisk>,
    /// The ratios the targets are stated in.
    pub ratios: Ratios,
    /// Every run, in the order they ran.
    pub runs: Vec<CompareRun>,
}

/// The cluster store measured against the disk store, both as relay processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterVsDisk {
    /// Cluster deliveries/s over disk deliveries/s.
    pub deliveries_per_s: f64,
    /// Cluster relay CPU per delivery over disk relay CPU per delivery.
    pub relay_cpu_per_delivery: Option<f64>,
}

/// A cluster column: its relays, and the cluster the comparison started if it did.
pub struct ClusterColumn {
    /// The relays (their `cluster_nodes` filled in once a cluster runs).
    pub fleet: FleetOptions,
}

fn default_e2e() -> crate::load::options::E2eMode {
    crate::load::options::E2eMode::Fast
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

fn min_max(v: &[f64]) -> [f64; 2] {
    if v.is_empty() {
        return [0.0; 2];
    }
    [
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ]
}

fn medians(runs: &[CompareRun], kind: &str) -> Medians {
    let values = |f: fn(&Report) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| f(&r.report))
            .collect()
    };
    let of = |f: fn(&Report) -> f64| median(values(f));
    let spread_of = |f: fn(&Report) -> f64| min_max(&values(f));
    let sum = |f: fn(&Report) -> u64| -> u64 {
        runs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| f(&r.report))
            .sum()
    };
    let of_usage = |f: fn(&crate::usage::Usage) -> Option<f64>| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.report.usage.as_ref().and_then(f))
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    Medians {
        relay_cpu_s_per_100k: of_usage(|u| Some(u.relay_cpu_s_per_100k_deliveries)),
        valkey_cpu_s_per_100k: of_usage(|u| u.valkey_cpu_s_per_100k_deliveries),
        deliveries_per_s: of(|r| r.deliveries_per_s),
        bytes_per_s: of(|r| r.bytes_per_s),
        p50_us: of(|r| r.latency_us.p50 as f64),
        p99_us: of(|r| r.latency_us.p99 as f64),
        p999_us: of(|r| r.latency_us.p999 as f64),
        spread: Spread {
            deliveries_per_s: spread_of(|r| r.deliveries_per_s),
            p50_us: spread_of(|r| r.latency_us.p50 as f64),
            p99_us: spread_of(|r| r.latency_us.p99 as f64),
            p999_us: spread_of(|r| r.latency_us.p999 as f64),
        },
        faults: Faults {
            lost: sum(|r| r.lost),
            duplicated: sum(|r| r.duplicated),
            corrupted: sum(|r| r.corrupted),
        },
    }
}

/// Runs the comparison. `template` gives the load (its target and store are replaced);
/// `cluster` adds the cluster column (and runs the disk store as a relay process too);
/// `each` sees every run as it finishes. A run that loses, corrupts or duplicates anything
/// fails the comparison: its figures would not mean what they say.
pub async fn compare(
    template: RunOptions,
    repeats: usize,
    cluster: Option<ClusterColumn>,
    mut each: impl FnMut(&CompareRun),
) -> anyhow::Result<CompareReport> {
    anyhow::ensure!(repeats >= 1, "--repeat must be at least 1");
    // One cluster for every cluster run (started here unless given), stopped at the end.
    let mut _own: Option<OwnCluster> = None;
    let key_dir = tempfile::tempdir()?;
    let cluster_fleet = match cluster {
        Some(mut c) => {
            // One master key for every cluster run: the cluster keeps the first one's seal.
            if c.fleet.master_key_file.is_none() {
                let f = key_dir.path().join("master.key");
                crate::fleet::write_master_key(&f)?;
                c.fleet.master_key_file = Some(f);
            }
            if c.fleet.cluster_nodes.is_none() {
                let script = c.fleet.cluster_script.clone();
                let (own, nodes) = tokio::task::spawn_blocking(move || start_cluster(&script))
                    .await
                    .map_err(|e| anyhow::anyhow!("cluster start-up task: {e}"))??;
                _own = Some(own);
                c.fleet.cluster_nodes = Some(nodes);
            }
            c.fleet.store = StoreKind::Cluster;
            Some(c.fleet)
        }
        None => None,
    };
    let mut runs = Vec::with_capacity(KINDS.len() * repeats);
    for repeat in 1..=repeats {
        for kind in KINDS {
            let mut o = template.clone();
            o.label = format!("{kind}, round {repeat} of {repeats}");
            match (kind, &cluster_fleet) {
                ("baseline", _) => o.target = Target::Baseline,
                ("memory", _) => {
                    o.target = Target::Spawn;
                    o.store = StoreKind::Memory;
                }
                ("disk", None) => {
                    o.target = Target::Spawn;
                    o.store = StoreKind::Disk;
                }
                ("disk", Some(f)) => {
                    o.target = Target::Processes(FleetOptions {
                        store: StoreKind::Disk,
                        relays: 1,
                        cluster_nodes: None,
                        ..f.clone()
                    });
                }
                ("cluster", Some(f)) => o.target = Target::Processes(f.clone()),
                _ => continue,
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
                kind: kind.to_owned(),
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
    let cluster = cluster_fleet.as_ref().map(|_| medians(&runs, "cluster"));
    let cluster_vs_disk = cluster.as_ref().map(|c| ClusterVsDisk {
        deliveries_per_s: if disk.deliveries_per_s > 0.0 {
            c.deliveries_per_s / disk.deliveries_per_s
        } else {
            0.0
        },
        relay_cpu_per_delivery: c
            .relay_cpu_s_per_100k
            .zip(disk.relay_cpu_s_per_100k)
            .filter(|(_, d)| *d > 0.0)
            .map(|(c, d)| c / d),
    });
    let ratio = |m: &Medians| {
        if baseline.deliveries_per_s > 0.0 {
            m.deliveries_per_s / baseline.deliveries_per_s
        } else {
            0.0
        }
    };
    Ok(CompareReport {
        size: template.size,
        e2e: template.e2e,
        command: None,
        repeats,
        machine: Machine::this(),
        ratios: Ratios {
            memory: ratio(&memory),
            disk: ratio(&disk),
            cluster: cluster.as_ref().map(ratio),
        },
        cluster,
        cluster_vs_disk,
        baseline,
        memory,
        disk,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges_of_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
        assert_eq!(min_max(&[3.0, 1.0, 2.0]), [1.0, 3.0]);
        assert_eq!(min_max(&[]), [0.0, 0.0]);
        let m = Medians {
            deliveries_per_s: 1000.0,
            p50_us: 1500.0,
            p99_us: 12_000.0,
            p999_us: 150_000.0,
            spread: Spread {
                deliveries_per_s: [900.0, 1100.0],
                p50_us: [1400.0, 1600.0],
                p99_us: [11_000.0, 13_000.0],
                p999_us: [140_000.0, 160_000.0],
            },
            faults: Faults {
                lost: 1,
                duplicated: 2,
                corrupted: 3,
            },
            ..Medians::default()
        };
        assert_eq!(
            m.cells(),
            [
                "1000 [900–1100]",
                "1.50 [1.40–1.60]",
                "12.0 [11.0–13.0]",
                "150 [140–160]",
                "1/2/3"
            ]
        );
    }
}
