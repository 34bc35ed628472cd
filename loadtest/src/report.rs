//! The run report: printed for a person and written as JSON for tools.

use serde::Serialize;

/// Latency percentiles in microseconds, deposit to delivery.
#[derive(Debug, Clone, Default, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `spawned` or the relay's address.
    pub relay: String,
    /// Mailboxes.
    pub mailboxes: usize,
    /// Connections.
    pub connections: usize,
    /// Envelope body size in bytes.
    pub size: u32,
    /// Load phase length in seconds.
    pub duration_s: f64,
    /// Unanswered deposits allowed per connection.
    pub depth: usize,
    /// Subscribe window per mailbox.
    pub window: u32,
    /// Store of the spawned relay (`None` for a remote relay).
    pub store: Option<crate::run::StoreKind>,
    /// Whether recipients stayed offline during the load.
    pub backlog: bool,
    /// End-to-end sealing in the generator.
    pub e2e: crate::run::E2eMode,
}

/// What a run measured. Every count is checked by the recipients, not assumed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configuration.
    pub config: RunConfig,
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
    /// delivered / duration_s.
    pub deliveries_per_s: f64,
    /// delivered × body size / duration_s.
    pub bytes_per_s: f64,
    /// Deposit-to-delivery latency.
    pub latency_us: Latency,
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
    /// A human-readable summary.
    pub fn print(&self) {
        let c = &self.config;
        println!(
            "relay {} ({})  mailboxes {}  connections {}  size {} B  load {:.1} s{}",
            c.relay,
            c.store
                .map_or("remote", |s| if s == crate::run::StoreKind::Disk {
                    "disk store"
                } else {
                    "memory store"
                }),
            c.mailboxes,
            c.connections,
            c.size,
            c.duration_s,
            if c.backlog {
                "  (recipients offline during the load)"
            } else {
                ""
            }
        );
        println!(
            "end-to-end sealing in the generator: {}",
            match c.e2e {
                crate::run::E2eMode::Hpke => "hpke (per message, as real clients)",
                crate::run::E2eMode::Fast =>
                    "fast (per-mailbox symmetric key; relay work unchanged)",
            }
        );
        println!(
            "deposited {}  acked {}  delivered {}  rejected {}",
            self.deposited, self.acked, self.delivered, self.rejected
        );
        println!(
            "lost {}  duplicated {}  corrupted {}",
            self.lost, self.duplicated, self.corrupted
        );
        println!(
            "{:.0} deliveries/s  {:.1} MB/s  over {:.2} s",
            self.deliveries_per_s,
            self.bytes_per_s / 1e6,
            self.duration_s
        );
        if let Some(w) = self.write_bytes_per_deposited_byte {
            println!(
                "disk: {:.2} bytes written per byte deposited during the load",
                w
            );
        }
        if let Some(d) = self.data_dir_bytes_after_drain {
            println!(
                "disk: data directory {:.1} KiB after the drain",
                d as f64 / 1024.0
            );
        }
        if let Some(d) = self.data_dir_bytes_after_reclaim {
            println!(
                "disk: data directory {:.1} KiB after flush and compaction",
                d as f64 / 1024.0
            );
        }
        let l = &self.latency_us;
        println!(
            "latency µs  p50 {}  p99 {}  p99.9 {}  max {}",
            l.p50, l.p99, l.p999, l.max
        );
    }
}
