//! Relay settings and the limits they impose.

use sealpost_core::Suite;
use sealpost_core::engine::Engine;
use sealpost_core::envelope::OVERHEAD;
use sealpost_core::msg::Limits;
use sealpost_core::padding::SizeClasses;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a relay needs to start.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// Directory for the generated certificate (and, later, the durable store).
    pub data_dir: PathBuf,
    /// Operator certificate chain (PEM); generated self-signed when absent.
    pub cert: Option<PathBuf>,
    /// Operator private key (PEM), with `cert`.
    pub key: Option<PathBuf>,
    /// Per-mailbox and per-connection limits.
    pub limits: RelayLimits,
    /// Put client addresses in log lines (debugging only; off by default).
    pub log_sensitive: bool,
    /// The crypto engine for deposit-tag verification and delivery sealing.
    pub engine: Engine,
    /// Two-hop forwarding: the forwarding key and what this relay forwards.
    pub forward: ForwardConfig,
}

/// The master key, for what the relay keeps sealed outside its store (the forwarding key);
/// never printed.
#[derive(Clone)]
pub struct MasterKey(pub std::sync::Arc<zeroize::Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Two-hop forwarding settings (docs/FORWARDING.md). Every relay opens FORWARDED requests
/// sealed to its forwarding key; forwarding FORWARD requests of clients to other relays is
/// off unless `enabled`.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Forward clients' FORWARD requests to other relays. Off by default: a forwarding relay
    /// opens connections to addresses its clients name.
    pub enabled: bool,
    /// The destinations this relay forwards to, `host:port` as senders name them; empty:
    /// any.
    pub allow: Vec<String>,
    /// Also forward to destinations that resolve to loopback, private, link-local, shared
    /// (CGNAT), multicast or other non-public addresses. Off by default: an open forwarding
    /// relay would otherwise let its clients reach (and probe) its own host and network. A
    /// destination named on `allow` is forwarded to whatever it resolves to.
    pub private_destinations: bool,
    /// FORWARD requests one source (an IPv4 address or an IPv6 /64) may send per second.
    pub source_rate: Rate,
    /// Connections to destination relays kept at once (the least recently used goes).
    pub max_destinations: usize,
    /// A connection to a destination unused for this long is closed (QUIC idle timeout).
    pub idle_timeout: Duration,
    /// How long a forwarded request may take (connecting included) before the sender is
    /// answered `UNREACHABLE`.
    pub timeout: Duration,
    /// The forwarding key file; `None`: `DATA_DIR/forward.key`, created at the first start.
    pub key_file: Option<PathBuf>,
    /// Seals the forwarding key file (from the settings' master key).
    pub master_key: Option<MasterKey>,
    /// How long a forwarding key retired by `rotate-forward-key` still opens requests, so
    /// that invitations carrying it keep working until their holders have newer ones.
    pub key_overlap: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            private_destinations: false,
            source_rate: Rate::new(100, 200),
            max_destinations: 256,
            idle_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            key_file: None,
            master_key: None,
            key_overlap: crate::forward::key::DEFAULT_OVERLAP,
        }
    }
}

/// Limits the relay enforces. Every queue and buffer in the relay is bounded by one of these.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Allowed body sizes.
    pub sizes: SizeClasses,
    /// Suites accepted for new mailboxes.
    pub suites: Vec<Suite>,
    /// Envelopes one mailbox may hold.
    pub max_envelopes: u32,
    /// Envelope bytes one mailbox may hold.
    pub max_bytes: u64,
    /// How long an unacknowledged envelope is kept.
    pub retention: Duration,
    /// How often expired envelopes are swept.
    pub expire_interval: Duration,
    /// Acknowledged or expired deposit nonces remembered per mailbox for duplicate detection,
    /// besides those of the envelopes still held.
    pub dedupe_window: usize,
    /// Largest subscribe window honoured.
    pub max_window: u32,
    /// Mailboxes the relay will create.
    pub max_mailboxes: u64,
    /// Concurrent bidirectional streams a connection can always hold. The QUIC limit granted is
    /// [`stream_credit`]`(max_streams)`, a little more (see there).
    pub max_streams: u32,
    /// Concurrent connections.
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A stream must send its first frame within this time.
    pub first_frame_timeout: Duration,
    /// Most envelopes verified and stored as one batch.
    pub max_batch: usize,
    /// Deposit shards (each owns a disjoint set of mailboxes and batches for them); 0 means
    /// one per CPU core.
    pub shards: usize,
    /// Kernel receive and send buffer requested for the UDP socket, bytes (0: the kernel's
    /// default).
    pub udp_buffer: usize,
    /// Largest frame length prefix accepted; `None` derives it from the largest body size.
    pub max_frame: Option<u32>,
    /// Open connections one source (an IPv4 address or an IPv6 /64) may hold; 0: no limit.
    pub max_connections_per_source: usize,
    /// How fast one source may open new connections.
    pub source_connection_rate: Rate,
    /// Request streams per second one source may open over all its connections.
    pub source_stream_rate: Rate,
    /// Faults per second one source may commit: rejected deposits (bad tag, unknown mailbox,
    /// malformed, bad size, unsupported), malformed or timed-out frames, requests refused for
    /// a rate limit. Beyond it its connections are closed and it is refused until the excess
    /// is paid back at this rate (at least one burst's worth, at most ten).
    pub source_fault_rate: Rate,
    /// When a new connection must first prove its address with a QUIC Retry.
    pub retry: RetryPolicy,
    /// Handshakes in progress from which [`RetryPolicy::Auto`] demands a Retry.
    pub retry_above_handshakes: usize,
    /// Mailboxes one source may create per second (excess gets `ERROR RATE_LIMITED`): each
    /// costs the store a record for as long as the retention keeps it.
    pub source_create_rate: Rate,
    /// Deposits per second one mailbox accepts (verified envelopes; excess gets
    /// `RATE_LIMITED` with a retry hint).
    pub mailbox_deposit_rate: Rate,
    /// Request streams per second one connection may open (excess gets `ERROR RATE_LIMITED`).
    pub connection_stream_rate: Rate,
    /// A frame that has begun must be complete within this time (slow senders holding
    /// partial frames are cut off).
    pub frame_timeout: Duration,
    /// Bytes half-received frames may hold relay-wide before begun frames get only a second
    /// to finish (instead of `frame_timeout`).
    pub partial_frame_budget_bytes: usize,
    /// Envelope bytes queued at or being processed by the deposit shards, relay-wide; deposit
    /// streams wait (and stop reading) beyond it.
    pub deposit_buffer_bytes: usize,
    /// QUIC flow-control window per stream: bytes a client may send ahead of what the relay
    /// has read.
    pub stream_receive_window: u32,
    /// QUIC flow-control window per connection, over all its streams.
    pub connection_receive_window: u32,
    /// Bytes the relay buffers for sending per connection (deliveries wait beyond it).
    pub connection_send_window: u32,
}

/// A rate with a burst: `per_sec` events a second on average, up to `burst` at once after a
/// quiet spell. A `per_sec` of 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained events per second; 0 turns the limit off.
    pub per_sec: u32,
    /// Events allowed at once (taken as at least 1 when the limit is on).
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 0,
    };

    /// `per_sec` a second with bursts of `burst`.
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec, burst }
    }

    /// Whether this rate limits anything.
    pub fn is_limited(self) -> bool {
        self.per_sec > 0
    }
}

/// When the relay asks a new connection to prove that it can receive at its source address
/// (a QUIC Retry: one extra round trip, and no handshake state kept for spoofed sources).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RetryPolicy {
    /// Only while many handshakes are in progress (see `retry_above_handshakes`).
    #[default]
    Auto,
    /// For every new connection.
    Always,
    /// Never.
    Never,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            sizes: SizeClasses::default(),
            suites: vec![Suite::ChaCha20Poly1305, Suite::Aes256Gcm],
            max_envelopes: 10_000,
            max_bytes: 256 * 1024 * 1024,
            retention: Duration::from_secs(7 * 24 * 3600),
            expire_interval: Duration::from_secs(60),
            dedupe_window: 1024,
            max_window: 1024,
            max_mailboxes: 10_000_000,
            max_streams: 64,
            max_connections: 100_000,
            idle_timeout: Duration::from_secs(30),
            first_frame_timeout: Duration::from_secs(10),
            max_batch: 256,
            shards: 0,
            udp_buffer: 8 << 20,
            max_frame: None,
            max_connections_per_source: 512,
            source_connection_rate: Rate::new(50, 200),
            source_stream_rate: Rate::new(1000, 2000),
            source_fault_rate: Rate::new(100, 1000),
            retry: RetryPolicy::Auto,
            retry_above_handshakes: 64,
            source_create_rate: Rate::new(10, 50),
            mailbox_deposit_rate: Rate::new(1000, 5000),
            connection_stream_rate: Rate::new(200, 400),
            frame_timeout: Duration::from_secs(30),
            partial_frame_budget_bytes: 64 << 20,
            deposit_buffer_bytes: 64 << 20,
            // quinn's defaults are 1.25 MB, unbounded and 10 MB. Halving and quartering them
            // made no difference above the noise in `run` at 1 KiB and 16 KiB on loopback
            // (docs/BENCHMARKS.md, "Abuse"), and they are per connection.
            stream_receive_window: 512 << 10,
            connection_receive_window: 2 << 20,
            connection_send_window: 2 << 20,
        }
    }
}

impl RelayLimits {
    /// The frame limit in force: the configured one, or exactly what the largest envelope
    /// needs (type byte plus envelope).
    pub fn frame_limit(&self) -> u32 {
        self.max_frame
            .unwrap_or(1 + OVERHEAD as u32 + self.sizes.max())
    }

    /// The quotas a store enforces for these limits.
    pub fn quotas(&self) -> crate::store::Quotas {
        crate::store::Quotas {
            max_envelopes: self.max_envelopes,
            max_bytes: self.max_bytes,
            max_mailboxes: self.max_mailboxes,
            dedupe_window: self.dedupe_window,
        }
    }

    /// The limits as announced on the wire.
    pub fn wire(&self) -> Limits {
        Limits {
            max_frame: self.frame_limit(),
            max_envelopes: self.max_envelopes,
            max_bytes: self.max_bytes,
            retention_secs: self.retention.as_secs(),
            max_window: self.max_window,
            sizes: self.sizes.clone(),
        }
    }
}

/// The QUIC stream limit (`initial_max_streams_bidi`) to grant so that a client can always hold
/// `max_streams` concurrent streams: `max_streams + ⌈max_streams / 7⌉`.
///
/// quinn-proto 0.11 returns stream credit in batches: as streams close it raises its limit at
/// once but sends MAX_STREAMS only when the unannounced part exceeds 1/8 of the limit
/// (`StreamsState::queue_max_stream_id`). A client whose short requests freed fewer streams
/// than that, and which then holds long-lived ones (subscriptions, which close none), waits
/// for credit forever: with a limit of 16, one finished request leaves it able to open 15.
/// Granting `L` with `L - ⌊L/8⌋ ≥ max_streams` covers the withheld part whatever the history;
/// docs/QUINN-STREAM-CREDIT.md has the analysis and the reproduction.
pub fn stream_credit(max_streams: u32) -> u32 {
    max_streams.saturating_add(max_streams.div_ceil(7))
}

impl RelayConfig {
    /// A configuration with the defaults and the given address and directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            cert: None,
            key: None,
            limits: RelayLimits::default(),
            log_sensitive: false,
            engine: Engine::detect(),
            forward: ForwardConfig::default(),
        }
    }
}
