//! The run report: printed for a person and written as JSON for tools.

use crate::histogram::SavedHistogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds, deposit to delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest seen.
    pub max: u64,
}

/// The configuration a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// `spawned` or the relay's address.
    pub relay: String,
    /// Mailboxes.
    pub mailboxes: usize,
    /// Connections.
    pub connections: usize,
    /// Envelope body size in bytes.
    pub size: u32,
    /// Load phase length in seconds, after the warm-up.
    pub duration_s: f64,
    /// Seconds of load at the start excluded from throughput and latency.
    pub warmup_s: f64,
    /// `closed` (as fast as the pipeline depth allows) or `open` (a fixed send schedule).
    pub mode: String,
    /// Open loop: envelopes per second, all connections together.
    pub rate: Option<f64>,
    /// Seconds the drain may go without progress.
    pub drain_timeout_s: f64,
    /// Unanswered deposits allowed per connection.
    pub depth: usize,
    /// Subscribe window per mailbox.
    pub window: u32,
    /// Store of the spawned relay (`None` for a remote relay).
    pub store: Option<crate::load::options::StoreKind>,
    /// Whether recipients stayed offline during the load.
    pub backlog: bool,
    /// End-to-end sealing in the generator.
    pub e2e: crate::load::options::E2eMode,
    /// The forwarding relay deposits went through (two-hop forwarding, one FORWARD per
    /// envelope); `None`: deposited directly. Latency still runs from the send to the
    /// verified delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// The machine the generator ran on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name (from /proc/cpuinfo where there is one).
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Operating system and architecture.
    pub os: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the load started, at the end of this one.
    pub t_s: u64,
    /// Whether this second began before the warm-up ended.
    pub warmup: bool,
    /// Envelopes sent during it.
    pub deposited: u64,
    /// Distinct envelopes delivered during it.
    pub delivered: u64,
    /// Rejections, corrupted and duplicated deliveries during it.
    pub errors: u64,
    /// Median latency of its deliveries, microseconds.
    #[serde(default)]
    pub p50_us: u64,
    /// 99th percentile latency of its deliveries, microseconds.
    pub p99_us: u64,
}

/// What a run measured. Every count is checked by the recipients, not assumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The configuration.
    pub config: RunConfig,
    /// Where it ran.
    pub machine: Machine,
    /// The relays' addresses (one for an in-process relay or the baseline).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Whether every delivery crossed relays (several relays: a mailbox's subscriber is on
    /// another relay than its sender), so the latency is cross-relay.
    #[serde(default)]
    pub cross_relay: bool,
    /// The Valkey nodes of a cluster-store run.
    pub cluster_nodes: Option<Vec<String>>,
    /// Whether the run started that cluster itself (and stopped it afterwards).
    #[serde(default)]
    pub cluster_started: bool,
    /// CPU of the relay processes and Valkey nodes (relays run as child processes only).
    pub usage: Option<crate::usage::Usage>,
    /// Per second, from the start of the load (warm-up included, marked).
    #[serde(default)]
    pub timeline: Vec<Second>,
    /// Envelopes sent.
    pub deposited: u64,
    /// Envelopes the relay answered OK or DUPLICATE.
    pub acked: u64,
    /// Distinct envelopes delivered and verified.
    pub delivered: u64,
    /// Acked envelopes never delivered after the drain.
    pub lost: u64,
    /// Deliveries of an envelope already delivered.
    pub duplicated: u64,
    /// Deliveries whose end-to-end content failed to open or check.
    pub corrupted: u64,
    /// Envelopes the relay refused (any status but OK and DUPLICATE).
    pub rejected: u64,
    /// Seconds from the start of the load to the end of the drain.
    pub duration_s: f64,
    /// Seconds from the end of the warm-up to the end of the drain.
    pub measured_s: f64,
    /// Deliveries after the warm-up / measured_s.
    pub deliveries_per_s: f64,
    /// The same in body bytes.
    pub bytes_per_s: f64,
    /// Deposit-to-delivery latency of envelopes sent after the warm-up (open loop: from the
    /// intended send time).
    pub latency_us: Latency,
    /// The whole latency histogram behind `latency_us` (empty in reports written before it
    /// was kept).
    #[serde(default)]
    pub latency_histogram: SavedHistogram,
    /// The command line that produced the report, as typed (empty when run from code).
    #[serde(default)]
    pub command: Option<String>,
    /// Bytes this process (with the spawned relay in it) wrote to storage during the load,
    /// from /proc/self/io.
    pub disk_write_bytes_during_load: Option<u64>,
    /// disk_write_bytes_during_load / (envelopes deposited × envelope size).
    pub write_bytes_per_deposited_byte: Option<f64>,
    /// Disk space of the spawned relay's data directory once the drain is over (disk store).
    pub data_dir_bytes_after_drain: Option<u64>,
    /// The same after the store flushed and compacted (which it does by itself every 30 s
    /// after removals).
    pub data_dir_bytes_after_reclaim: Option<u64>,
}

impl Report {
    /// Prints [`Report::summary`] to standard output.
    pub fn print(&self) {
        print!("{}", self.summary());
    }

    /// A human-readable summary, one figure group a line.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "relay {} ({})  mailboxes {}  connections {}  size {} B  load {:.1} s + {:.1} s warm-up  {}{}",
            c.relay,
            match (c.relay.as_str(), c.store) {
                ("baseline", _) => "no crypto, no store",
                (_, Some(crate::load::options::StoreKind::Disk)) => "disk store",
                (_, Some(crate::load::options::StoreKind::Memory)) => "memory store",
                (_, Some(crate::load::options::StoreKind::Cluster)) => "cluster store",
                (_, None) => "remote",
            },
            c.mailboxes,
            c.connections,
            c.size,
            c.duration_s,
            c.warmup_s,
            match c.rate {
                Some(r) => format!("open loop at {r:.0} envelopes/s"),
                None => format!("closed loop, depth {}", c.depth),
            },
            if c.backlog {
                "  (recipients offline during the load)"
            } else {
                ""
            }
        );
        if let Some(via) = &c.via {
            let _ = writeln!(
                out,
                "deposits through a forwarding relay: {via} (two-hop, one FORWARD per envelope)"
            );
        }
        let _ = writeln!(
            out,
            "end-to-end sealing in the generator: {}",
            match c.e2e {
                crate::load::options::E2eMode::Hpke => "hpke (per message, as real clients)",
                crate::load::options::E2eMode::Fast =>
                    "fast (per-mailbox symmetric key; relay work unchanged)",
            }
        );
        let _ = writeln!(
            out,
            "deposited {}  acked {}  delivered {}  rejected {}",
            self.deposited, self.acked, self.delivered, self.rejected
        );
        let _ = writeln!(
            out,
            "lost {}  duplicated {}  corrupted {}",
            self.lost, self.duplicated, self.corrupted
        );
        let _ = writeln!(
            out,
            "{:.0} deliveries/s  {:.1} MB/s  over {:.2} s after the warm-up",
            self.deliveries_per_s,
            self.bytes_per_s / 1e6,
            self.measured_s
        );
        if let Some(w) = self.write_bytes_per_deposited_byte {
            let _ = writeln!(
                out,
                "disk: {:.2} bytes written per byte deposited during the load",
                w
            );
        }
        if let Some(d) = self.data_dir_bytes_after_drain {
            let _ = writeln!(
                out,
                "disk: data directory {:.1} KiB after the drain",
                d as f64 / 1024.0
            );
        }
        if let Some(d) = self.data_dir_bytes_after_reclaim {
            let _ = writeln!(
                out,
                "disk: data directory {:.1} KiB after flush and compaction",
                d as f64 / 1024.0
            );
        }
        if let Some(n) = &self.cluster_nodes {
            let _ = writeln!(
                out,
                "valkey cluster {} ({})",
                n.join(","),
                if self.cluster_started {
                    "started for this run"
                } else {
                    "given"
                }
            );
        }
        if let Some(u) = &self.usage {
            let _ = writeln!(
                out,
                "cpu: relays ({}) {:.2} s = {:.2} s per 100k deliveries{}",
                u.relay_processes,
                u.relay_cpu_s,
                u.relay_cpu_s_per_100k_deliveries,
                match (u.valkey_cpu_s, u.valkey_cpu_s_per_100k_deliveries) {
                    (Some(v), Some(p)) => format!(
                        "; valkey ({}) {v:.2} s = {p:.2} s per 100k deliveries",
                        u.valkey_processes
                    ),
                    _ => String::new(),
                }
            );
            if let (Some(w), Some(f)) = (u.waitaof_per_deposit, u.fcall_per_deposit) {
                let _ = writeln!(
                    out,
                    "valkey: {w:.3} WAITAOF (fsync waits of group commits) and {f:.2} FCALL per deposit"
                );
            }
        }
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "latency ms, deposit to delivery{}:  p50 {}  p99 {}  p99.9 {}  max {}",
            if self.cross_relay {
                " (cross-relay)"
            } else {
                ""
            },
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        let _ = writeln!(out, "{}", self.latency_note());
        out
    }

    /// What the latency figures mean in this run's mode.
    pub fn latency_note(&self) -> String {
        let c = &self.config;
        match c.rate {
            Some(_) => "open loop: latency counts from each envelope's scheduled send time, so a \
                        relay that falls behind shows it (no coordinated omission)"
                .to_owned(),
            None => format!(
                "closed loop: {} connections × depth {} keep {} deposits in flight, so this \
                 latency is mostly queueing at that depth (in flight / throughput ≈ {} ms); \
                 for the latency at a given load use --rate or `sweep`",
                c.connections,
                c.depth,
                c.connections * c.depth,
                ms(if self.deliveries_per_s > 0.0 {
                    ((c.connections * c.depth) as f64 / self.deliveries_per_s * 1e6) as u64
                } else {
                    0
                })
            ),
        }
    }
}

/// Microseconds as milliseconds for a person: three significant digits or so.
pub fn ms(us: u64) -> String {
    ms_f(us as f64)
}

/// [`ms`] for a fractional number of microseconds (a median of several runs).
pub fn ms_f(us: f64) -> String {
    let v = us / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
