//! What a load run is asked to do: its target, its load, its store and its sealing mode.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Where the relay under test is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start one in this process on a free loopback port, with [`RunOptions::store`].
    Spawn,
    /// Start the transport baseline in this process: the same framing over quinn, no crypto,
    /// no store ([`crate::baseline`]).
    Baseline,
    /// Use running relays; connections are spread over them, and with several a mailbox's
    /// subscriber is on another relay than its sender (deliveries cross relays).
    Remote {
        /// host:port of each.
        addrs: Vec<String>,
        /// Certificate pin (the same certificate on all).
        pin: [u8; 32],
    },
    /// Start `sealpost-relay serve` child processes (disk or cluster store) for the run, so
    /// that their CPU time can be measured; used like `Remote` with their addresses.
    Processes(crate::fleet::FleetOptions),
}

/// A forwarding relay deposits go through (two-hop forwarding, docs/FORWARDING.md): each
/// envelope is sealed for the target relay's forwarding key and sent as one FORWARD to this
/// relay, which passes it on; subscriptions stay on the target.
#[derive(Debug, Clone)]
pub enum Via {
    /// Start one in this process on another free loopback port, with forwarding on and no
    /// per-source forwarding rate.
    Spawn,
    /// A running relay with `forward = true` (and `source_forwards_per_sec` high enough for
    /// the load, or 0 for none; `forward_private_destinations = true` for a target on a
    /// private or loopback address).
    Remote {
        /// host:port.
        addr: String,
        /// Its certificate pin.
        pin: [u8; 32],
    },
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The relay.
    pub target: Target,
    /// Mailboxes.
    pub mailboxes: usize,
    /// Connections; mailbox i uses connection i mod C for deposits and its subscription.
    pub connections: usize,
    /// Envelope body size.
    pub size: u32,
    /// Load phase.
    pub duration: Duration,
    /// Unanswered deposits per connection.
    pub depth: usize,
    /// Open loop: envelopes per second over all connections, sent on a fixed schedule whatever
    /// the relay does, with latency measured from each envelope's intended send time (no
    /// coordinated omission). `None`: closed loop, as fast as `depth` allows.
    pub rate: Option<f64>,
    /// Load at the start that counts for nothing: throughput and latency are measured from
    /// its end.
    pub warmup: Duration,
    /// Subscribe window per mailbox.
    pub window: u32,
    /// How long the drain may go without progress before the rest counts as lost.
    pub drain_timeout: Duration,
    /// Print a progress line every second (when standard error is a terminal).
    pub progress: bool,
    /// What the progress line says is running (e.g. `disk, round 2 of 3`); empty for a
    /// single run.
    pub label: String,
    /// Store of a spawned relay.
    pub store: StoreKind,
    /// Recipients stay offline during the load and only drain afterwards (a backlog).
    pub backlog: bool,
    /// End-to-end sealing in the generator.
    pub e2e: E2eMode,
    /// Deposit through a forwarding relay instead of directly.
    pub via: Option<Via>,
    /// A counter the run also adds each distinct verified delivery to, for a caller that
    /// shows its own progress (`abuse` runs this load inside its phases).
    pub live_delivered: Option<Arc<AtomicU64>>,
}

/// Which store a spawned relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Volatile.
    Memory,
    /// Durable (fjall, fsync per batch).
    Disk,
    /// A Valkey cluster shared by several relays (child processes only).
    Cluster,
}

impl StoreKind {
    /// As written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Cluster => "cluster",
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "disk" => Ok(Self::Disk),
            "cluster" => Ok(Self::Cluster),
            _ => Err(format!(
                "unknown store {s:?}: expected memory, disk or cluster"
            )),
        }
    }
}

/// How the generator seals message content end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eMode {
    /// HPKE per message, as real clients do.
    Hpke,
    /// A per-mailbox symmetric key (see [`crate::fast`]): the relay's work is the same, the
    /// generator's far smaller.
    Fast,
}

impl std::str::FromStr for E2eMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hpke" => Ok(Self::Hpke),
            "fast" => Ok(Self::Fast),
            _ => Err(format!("unknown e2e mode {s:?}: expected hpke or fast")),
        }
    }
}

impl RunOptions {
    /// Whether the target is the transport baseline (no crypto, no store).
    pub fn target_is_baseline(&self) -> bool {
        matches!(self.target, Target::Baseline)
    }
}
