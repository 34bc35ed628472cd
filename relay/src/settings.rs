//! The operator's settings: a TOML file, environment variables and flags, merged with flags
//! over environment over file over defaults, then checked and turned into a [`RelayConfig`].
//!
//! Every key is optional in the file; unknown keys are refused (a misspelt key that silently
//! does nothing is worse than an error). `check-config` prints the effective settings.

use crate::config::{ForwardConfig, Rate, RelayConfig, RelayLimits, RetryPolicy};
use sealpost_core::engine::{Engine, EngineError};
use sealpost_core::padding::SizeClasses;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("setting `{key}` = {value}: {allowed}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A value is out of range, named as the operator wrote it (see
    /// [`Provenance::explain`](crate::provenance::Provenance::explain)).
    #[error("{written}: {allowed}")]
    InvalidAsWritten {
        /// The setting and value as given: `--flag value`, `VAR=value` or `key = value` in a
        /// file.
        written: String,
        /// What is allowed.
        allowed: String,
    },
}

/// Where mailboxes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreChoice {
    /// Durable, in DATA_DIR/store.
    Disk,
    /// Volatile, for benchmarks.
    Memory,
    /// In a Valkey cluster (`cluster_nodes`), shared by every relay of a deployment; needs the
    /// master key.
    Cluster,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Every setting, as the file spells it. `None` means "not given here".
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// UDP address for QUIC [default: 127.0.0.1:4433].
    #[arg(long, env = "SEALPOST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address of the admin listener: /metrics, /healthz, /servingz, /readyz [default:
    /// 127.0.0.1:9464]. Never the QUIC address.
    #[arg(long, env = "SEALPOST_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Data directory: store/ and the generated certificate's tls/ [default: sealpost-data].
    #[arg(long, env = "SEALPOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Certificate chain (PEM) instead of the generated self-signed one; needs `key`.
    #[arg(long, env = "SEALPOST_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for `cert`.
    #[arg(long, env = "SEALPOST_KEY")]
    pub key: Option<PathBuf>,
    /// `disk` (durable), `memory` (volatile) or `cluster` (a Valkey cluster, see
    /// `cluster_nodes`) [default: disk].
    #[arg(long, env = "SEALPOST_STORE")]
    pub store: Option<StoreChoice>,
    /// Some nodes of the Valkey cluster for `store = "cluster"`, HOST:PORT (comma-separated on
    /// the command line and in the environment, a list in the file); the rest are learnt
    /// from them.
    #[arg(long, value_delimiter = ',', env = "SEALPOST_CLUSTER_NODES")]
    pub cluster_nodes: Option<Vec<String>>,
    /// File with the 32-byte master key as 64 hex digits; mailbox secrets are then encrypted
    /// at rest. (SEALPOST_MASTER_KEY may hold the key itself.)
    #[arg(long, env = "SEALPOST_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Seal stored envelopes under epoch keys and destroy each key once every envelope of its
    /// epoch is acknowledged or expired (crypto-shredding, docs/AT-REST.md); needs the master
    /// key, and is off without one [default: true].
    #[arg(long, env = "SEALPOST_AT_REST", num_args = 0..=1, default_missing_value = "true")]
    pub at_rest: Option<bool>,
    /// Seconds of one at-rest epoch: envelopes stored in one window share a key per shard,
    /// destroyed once they are all gone; shorter windows shred sooner and make more keys
    /// [default: 3600].
    #[arg(long, env = "SEALPOST_AT_REST_EPOCH_SECS")]
    pub at_rest_epoch_secs: Option<u64>,
    /// Cluster store only: seconds after an at-rest epoch's window ends during which
    /// envelopes sealed under it are still stored (Valkey refuses later ones; the relay
    /// seals them again under the next epoch). Must exceed the relays' and nodes' clock
    /// differences plus the longest deposit; an epoch's key is destroyed no sooner than twice
    /// this after its window ends [default: 120].
    #[arg(long, env = "SEALPOST_AT_REST_SETTLE_SECS")]
    pub at_rest_settle_secs: Option<u64>,
    /// Bytes kept free on the disk store's filesystem: below this, deposits and CREATE are
    /// refused (STORAGE_FULL) and /readyz reports not ready, while deliveries and ACKs go
    /// on; 0 = no reserve [default: 268435456, 256 MiB].
    #[arg(long, env = "SEALPOST_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// `human` or `json` [default: human].
    #[arg(long, env = "SEALPOST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// DEBUGGING ONLY: put client addresses in log lines (mailbox ids and keys are never
    /// logged) [default: false].
    #[arg(long, env = "SEALPOST_LOG_SENSITIVE_DEBUG", num_args = 0..=1, default_missing_value = "true")]
    pub log_sensitive_debug: Option<bool>,
    /// Allowed body sizes, comma-separated [default: 256,1024,4096,16384,65536].
    #[arg(long, value_delimiter = ',', env = "SEALPOST_SIZES")]
    pub sizes: Option<Vec<u32>>,
    /// Envelopes one mailbox may hold [default: 10000].
    #[arg(long, env = "SEALPOST_MAX_ENVELOPES")]
    pub max_envelopes: Option<u32>,
    /// Envelope bytes one mailbox may hold [default: 268435456].
    #[arg(long, env = "SEALPOST_MAX_BYTES")]
    pub max_bytes: Option<u64>,
    /// Mailboxes the relay will create [default: 10000000].
    #[arg(long, env = "SEALPOST_MAX_MAILBOXES")]
    pub max_mailboxes: Option<u64>,
    /// Seconds an unacknowledged envelope is kept [default: 604800].
    #[arg(long, env = "SEALPOST_RETENTION_SECS")]
    pub retention_secs: Option<u64>,
    /// Seconds between expiry sweeps [default: 60].
    #[arg(long, env = "SEALPOST_EXPIRE_INTERVAL_SECS")]
    pub expire_interval_secs: Option<u64>,
    /// Removed nonces remembered per mailbox for duplicate detection [default: 1024].
    #[arg(long, env = "SEALPOST_DEDUPE_WINDOW")]
    pub dedupe_window: Option<usize>,
    /// Largest subscribe window honoured [default: 1024].
    #[arg(long, env = "SEALPOST_MAX_WINDOW")]
    pub max_window: Option<u32>,
    /// Concurrent streams a connection can always hold [default: 64].
    #[arg(long, env = "SEALPOST_MAX_STREAMS")]
    pub max_streams: Option<u32>,
    /// Concurrent connections [default: 100000].
    #[arg(long, env = "SEALPOST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds of silence after which a connection is closed [default: 30].
    #[arg(long, env = "SEALPOST_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Most envelopes verified and stored as one batch [default: 256].
    #[arg(long, env = "SEALPOST_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Deposit shards; 0 = one per CPU core [default: 0].
    #[arg(long, env = "SEALPOST_SHARDS")]
    pub shards: Option<usize>,
    /// Kernel UDP buffer size requested, bytes; 0 = kernel default [default: 8388608].
    #[arg(long, env = "SEALPOST_UDP_BUFFER")]
    pub udp_buffer: Option<usize>,
    /// Seconds a shutdown may take before connections are cut [default: 10].
    #[arg(long, env = "SEALPOST_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Open connections one source address (IPv4 address, IPv6 /64) may hold; 0 = no
    /// limit [default: 512].
    #[arg(long, env = "SEALPOST_MAX_CONNECTIONS_PER_SOURCE")]
    pub max_connections_per_source: Option<usize>,
    /// New connections per second one source may open; 0 = no limit [default: 50].
    #[arg(long, env = "SEALPOST_SOURCE_CONNECTIONS_PER_SEC")]
    pub source_connections_per_sec: Option<u32>,
    /// New connections one source may open at once after a quiet spell [default: 200].
    #[arg(long, env = "SEALPOST_SOURCE_CONNECTION_BURST")]
    pub source_connection_burst: Option<u32>,
    /// Request streams per second one source may open over all its connections; 0 = no
    /// limit [default: 1000].
    #[arg(long, env = "SEALPOST_SOURCE_STREAMS_PER_SEC")]
    pub source_streams_per_sec: Option<u32>,
    /// Request streams one source may open at once after a quiet spell [default: 2000].
    #[arg(long, env = "SEALPOST_SOURCE_STREAM_BURST")]
    pub source_stream_burst: Option<u32>,
    /// Faults per second one source may commit (rejected deposits, malformed or timed-out
    /// frames, requests over a rate limit) before its connections are closed and it is
    /// refused for a while; 0 = no limit [default: 100].
    #[arg(long, env = "SEALPOST_SOURCE_FAULTS_PER_SEC")]
    pub source_faults_per_sec: Option<u32>,
    /// Faults one source may commit at once [default: 1000].
    #[arg(long, env = "SEALPOST_SOURCE_FAULT_BURST")]
    pub source_fault_burst: Option<u32>,
    /// QUIC address validation (Retry) for new connections: `auto` (while many handshakes
    /// are in progress), `always` or `never` [default: auto].
    #[arg(long, env = "SEALPOST_RETRY")]
    pub retry: Option<RetryPolicy>,
    /// Handshakes in progress from which `retry = "auto"` validates addresses [default: 64].
    #[arg(long, env = "SEALPOST_RETRY_ABOVE_HANDSHAKES")]
    pub retry_above_handshakes: Option<usize>,
    /// Mailboxes one source may create per second; 0 = no limit [default: 10].
    #[arg(long, env = "SEALPOST_SOURCE_CREATES_PER_SEC")]
    pub source_creates_per_sec: Option<u32>,
    /// Mailboxes one source may create at once after a quiet spell [default: 50].
    #[arg(long, env = "SEALPOST_SOURCE_CREATE_BURST")]
    pub source_create_burst: Option<u32>,
    /// Deposits per second one mailbox accepts; 0 = no limit [default: 1000].
    #[arg(long, env = "SEALPOST_MAILBOX_DEPOSITS_PER_SEC")]
    pub mailbox_deposits_per_sec: Option<u32>,
    /// Deposits one mailbox accepts at once after a quiet spell [default: 5000].
    #[arg(long, env = "SEALPOST_MAILBOX_DEPOSIT_BURST")]
    pub mailbox_deposit_burst: Option<u32>,
    /// Request streams per second one connection may open; 0 = no limit [default: 200].
    #[arg(long, env = "SEALPOST_CONNECTION_STREAMS_PER_SEC")]
    pub connection_streams_per_sec: Option<u32>,
    /// Request streams one connection may open at once after a quiet spell [default: 400].
    #[arg(long, env = "SEALPOST_CONNECTION_STREAM_BURST")]
    pub connection_stream_burst: Option<u32>,
    /// Seconds a frame that has begun may take to arrive in full [default: 30].
    #[arg(long, env = "SEALPOST_FRAME_TIMEOUT_SECS")]
    pub frame_timeout_secs: Option<u64>,
    /// Bytes half-received frames may hold relay-wide before begun frames get 1 s instead of
    /// frame_timeout_secs [default: 67108864].
    #[arg(long, env = "SEALPOST_PARTIAL_FRAME_BUDGET_BYTES")]
    pub partial_frame_budget_bytes: Option<usize>,
    /// Envelope bytes queued for the deposit shards, relay-wide [default: 67108864].
    #[arg(long, env = "SEALPOST_DEPOSIT_BUFFER_BYTES")]
    pub deposit_buffer_bytes: Option<usize>,
    /// QUIC flow-control window per stream, bytes [default: 524288].
    #[arg(long, env = "SEALPOST_STREAM_RECEIVE_WINDOW")]
    pub stream_receive_window: Option<u32>,
    /// QUIC flow-control window per connection, bytes [default: 2097152].
    #[arg(long, env = "SEALPOST_CONNECTION_RECEIVE_WINDOW")]
    pub connection_receive_window: Option<u32>,
    /// Bytes buffered for sending per connection [default: 2097152].
    #[arg(long, env = "SEALPOST_CONNECTION_SEND_WINDOW")]
    pub connection_send_window: Option<u32>,
    /// Crypto engine for deposit tags and delivery sealing: `auto` (the fastest this CPU runs),
    /// `avx512`, `avx2`, `ring` or `portable` [default: auto].
    #[arg(long, env = "SEALPOST_BACKEND")]
    pub backend: Option<String>,
    /// Forward clients' FORWARD requests to other relays (two-hop forwarding; the relay then
    /// opens connections to the relays its clients name) [default: false].
    #[arg(long, env = "SEALPOST_FORWARD", num_args = 0..=1, default_missing_value = "true")]
    pub forward: Option<bool>,
    /// The only destination relays forwarded to, HOST:PORT as senders name them
    /// (comma-separated on the command line and in the environment, a list in the file);
    /// empty: any [default: empty].
    #[arg(long, value_delimiter = ',', env = "SEALPOST_FORWARD_ALLOW")]
    pub forward_allow: Option<Vec<String>>,
    /// Also forward to destinations that resolve to loopback, private, link-local or other
    /// non-public addresses (a deployment on a private network, tests); destinations named
    /// in `forward_allow` are always allowed [default: false].
    #[arg(long, env = "SEALPOST_FORWARD_PRIVATE_DESTINATIONS", num_args = 0..=1, default_missing_value = "true")]
    pub forward_private_destinations: Option<bool>,
    /// FORWARD requests one source may send per second; 0 = no limit [default: 100].
    #[arg(long, env = "SEALPOST_SOURCE_FORWARDS_PER_SEC")]
    pub source_forwards_per_sec: Option<u32>,
    /// FORWARD requests one source may send at once after a quiet spell [default: 200].
    #[arg(long, env = "SEALPOST_SOURCE_FORWARD_BURST")]
    pub source_forward_burst: Option<u32>,
    /// The forwarding key file, shared by every relay of one deployment (copy one relay's
    /// DATA_DIR/forward.key); never created [default: DATA_DIR/forward.key, created at the
    /// first start].
    #[arg(long, env = "SEALPOST_FORWARD_KEY_FILE")]
    pub forward_key_file: Option<PathBuf>,
    /// Seconds a forwarding key retired by `rotate-forward-key` still opens forwarded
    /// requests, so that invitations carrying it keep working until senders have new ones;
    /// 0 to 31536000 [default: 2592000, 30 days].
    #[arg(long, env = "SEALPOST_FORWARD_KEY_OVERLAP_SECS")]
    pub forward_key_overlap_secs: Option<u64>,
    /// Connections to destination relays a forwarding relay keeps at once (the least
    /// recently used goes first) [default: 256].
    #[arg(long, env = "SEALPOST_FORWARD_MAX_DESTINATIONS")]
    pub forward_max_destinations: Option<usize>,
    /// Seconds a connection to a destination relay may stay unused before QUIC closes it
    /// [default: 30].
    #[arg(long, env = "SEALPOST_FORWARD_IDLE_TIMEOUT_SECS")]
    pub forward_idle_timeout_secs: Option<u64>,
    /// Seconds a forwarded request may take, connecting included, before the sender is
    /// answered UNREACHABLE [default: 10].
    #[arg(long, env = "SEALPOST_FORWARD_TIMEOUT_SECS")]
    pub forward_timeout_secs: Option<u64>,
}

/// The longest `forward_key_overlap_secs`: a year. A retired key is kept on disk and in
/// memory for the overlap; beyond a year it is hardly retired.
const MAX_KEY_OVERLAP_SECS: u64 = 365 * 24 * 3600;

/// The default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9464";
/// The default QUIC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

macro_rules! overlay {
    ($dst:ident, $src:ident, $($f:ident),*) => {
        $( if $src.$f.is_some() { $dst.$f = $src.$f.clone(); } )*
    };
}

impl Settings {
    /// Reads a settings file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| SettingsError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses settings from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// `self` with every setting `over` gives replacing this one's.
    pub fn overlaid(mut self, over: &Settings) -> Self {
        overlay!(
            self,
            over,
            listen,
            admin,
            data_dir,
            cert,
            key,
            store,
            cluster_nodes,
            master_key_file,
            at_rest,
            at_rest_epoch_secs,
            at_rest_settle_secs,
            min_free_disk_bytes,
            log_format,
            log_sensitive_debug,
            sizes,
            max_envelopes,
            max_bytes,
            max_mailboxes,
            retention_secs,
            expire_interval_secs,
            dedupe_window,
            max_window,
            max_streams,
            max_connections,
            idle_timeout_secs,
            max_batch,
            shards,
            udp_buffer,
            shutdown_timeout_secs,
            max_connections_per_source,
            source_connections_per_sec,
            source_connection_burst,
            source_streams_per_sec,
            source_stream_burst,
            source_faults_per_sec,
            source_fault_burst,
            retry,
            retry_above_handshakes,
            source_creates_per_sec,
            source_create_burst,
            mailbox_deposits_per_sec,
            mailbox_deposit_burst,
            connection_streams_per_sec,
            connection_stream_burst,
            frame_timeout_secs,
            partial_frame_budget_bytes,
            deposit_buffer_bytes,
            stream_receive_window,
            connection_receive_window,
            connection_send_window,
            backend,
            forward,
            forward_allow,
            forward_private_destinations,
            source_forwards_per_sec,
            source_forward_burst,
            forward_key_file,
            forward_key_overlap_secs,
            forward_max_destinations,
            forward_idle_timeout_secs,
            forward_timeout_secs
        );
        self
    }

    /// Every setting filled in: the given ones, and the defaults for the rest.
    pub fn effective(&self) -> Self {
        let d = RelayLimits::default();
        let f = ForwardConfig::default();
        Self {
            listen: Some(
                self.listen
                    .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("literal")),
            ),
            admin: Some(
                self.admin
                    .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("literal")),
            ),
            data_dir: Some(
                self.data_dir
                    .clone()
                    .unwrap_or_else(|| "sealpost-data".into()),
            ),
            cert: self.cert.clone(),
            key: self.key.clone(),
            store: Some(self.store.unwrap_or(StoreChoice::Disk)),
            cluster_nodes: self.cluster_nodes.clone(),
            master_key_file: self.master_key_file.clone(),
            at_rest: Some(self.at_rest.unwrap_or(true)),
            at_rest_epoch_secs: Some(
                self.at_rest_epoch_secs
                    .unwrap_or(crate::store::at_rest::DEFAULT_WINDOW.as_secs()),
            ),
            at_rest_settle_secs: Some(
                self.at_rest_settle_secs
                    .unwrap_or(crate::store::at_rest::DEFAULT_SETTLE.as_secs()),
            ),
            min_free_disk_bytes: Some(
                self.min_free_disk_bytes
                    .unwrap_or(crate::store::disk::DEFAULT_MIN_FREE_BYTES),
            ),
            log_format: Some(self.log_format.unwrap_or(LogFormat::Human)),
            log_sensitive_debug: Some(self.log_sensitive_debug.unwrap_or(false)),
            sizes: Some(
                self.sizes
                    .clone()
                    .unwrap_or_else(|| d.sizes.as_slice().to_vec()),
            ),
            max_envelopes: Some(self.max_envelopes.unwrap_or(d.max_envelopes)),
            max_bytes: Some(self.max_bytes.unwrap_or(d.max_bytes)),
            max_mailboxes: Some(self.max_mailboxes.unwrap_or(d.max_mailboxes)),
            retention_secs: Some(self.retention_secs.unwrap_or(d.retention.as_secs())),
            expire_interval_secs: Some(
                self.expire_interval_secs
                    .unwrap_or(d.expire_interval.as_secs()),
            ),
            dedupe_window: Some(self.dedupe_window.unwrap_or(d.dedupe_window)),
            max_window: Some(self.max_window.unwrap_or(d.max_window)),
            max_streams: Some(self.max_streams.unwrap_or(d.max_streams)),
            max_connections: Some(self.max_connections.unwrap_or(d.max_connections)),
            idle_timeout_secs: Some(self.idle_timeout_secs.unwrap_or(d.idle_timeout.as_secs())),
            max_batch: Some(self.max_batch.unwrap_or(d.max_batch)),
            shards: Some(self.shards.unwrap_or(d.shards)),
            udp_buffer: Some(self.udp_buffer.unwrap_or(d.udp_buffer)),
            shutdown_timeout_secs: Some(self.shutdown_timeout_secs.unwrap_or(10)),
            max_connections_per_source: Some(
                self.max_connections_per_source
                    .unwrap_or(d.max_connections_per_source),
            ),
            source_connections_per_sec: Some(
                self.source_connections_per_sec
                    .unwrap_or(d.source_connection_rate.per_sec),
            ),
            source_connection_burst: Some(
                self.source_connection_burst
                    .unwrap_or(d.source_connection_rate.burst),
            ),
            source_streams_per_sec: Some(
                self.source_streams_per_sec
                    .unwrap_or(d.source_stream_rate.per_sec),
            ),
            source_stream_burst: Some(
                self.source_stream_burst
                    .unwrap_or(d.source_stream_rate.burst),
            ),
            source_faults_per_sec: Some(
                self.source_faults_per_sec
                    .unwrap_or(d.source_fault_rate.per_sec),
            ),
            source_fault_burst: Some(self.source_fault_burst.unwrap_or(d.source_fault_rate.burst)),
            retry: Some(self.retry.unwrap_or(d.retry)),
            retry_above_handshakes: Some(
                self.retry_above_handshakes
                    .unwrap_or(d.retry_above_handshakes),
            ),
            source_creates_per_sec: Some(
                self.source_creates_per_sec
                    .unwrap_or(d.source_create_rate.per_sec),
            ),
            source_create_burst: Some(
                self.source_create_burst
                    .unwrap_or(d.source_create_rate.burst),
            ),
            mailbox_deposits_per_sec: Some(
                self.mailbox_deposits_per_sec
                    .unwrap_or(d.mailbox_deposit_rate.per_sec),
            ),
            mailbox_deposit_burst: Some(
                self.mailbox_deposit_burst
                    .unwrap_or(d.mailbox_deposit_rate.burst),
            ),
            connection_streams_per_sec: Some(
                self.connection_streams_per_sec
                    .unwrap_or(d.connection_stream_rate.per_sec),
            ),
            connection_stream_burst: Some(
                self.connection_stream_burst
                    .unwrap_or(d.connection_stream_rate.burst),
            ),
            frame_timeout_secs: Some(self.frame_timeout_secs.unwrap_or(d.frame_timeout.as_secs())),
            partial_frame_budget_bytes: Some(
                self.partial_frame_budget_bytes
                    .unwrap_or(d.partial_frame_budget_bytes),
            ),
            deposit_buffer_bytes: Some(self.deposit_buffer_bytes.unwrap_or(d.deposit_buffer_bytes)),
            stream_receive_window: Some(
                self.stream_receive_window
                    .unwrap_or(d.stream_receive_window),
            ),
            connection_receive_window: Some(
                self.connection_receive_window
                    .unwrap_or(d.connection_receive_window),
            ),
            connection_send_window: Some(
                self.connection_send_window
                    .unwrap_or(d.connection_send_window),
            ),
            backend: Some(self.backend.clone().unwrap_or_else(|| "auto".into())),
            forward: Some(self.forward.unwrap_or(false)),
            forward_allow: Some(self.forward_allow.clone().unwrap_or_default()),
            forward_private_destinations: Some(self.forward_private_destinations.unwrap_or(false)),
            source_forwards_per_sec: Some(
                self.source_forwards_per_sec
                    .unwrap_or(f.source_rate.per_sec),
            ),
            source_forward_burst: Some(self.source_forward_burst.unwrap_or(f.source_rate.burst)),
            forward_key_file: self.forward_key_file.clone(),
            forward_key_overlap_secs: Some(
                self.forward_key_overlap_secs
                    .unwrap_or(f.key_overlap.as_secs()),
            ),
            forward_max_destinations: Some(
                self.forward_max_destinations.unwrap_or(f.max_destinations),
            ),
            forward_idle_timeout_secs: Some(
                self.forward_idle_timeout_secs
                    .unwrap_or(f.idle_timeout.as_secs()),
            ),
            forward_timeout_secs: Some(self.forward_timeout_secs.unwrap_or(f.timeout.as_secs())),
        }
    }

    /// Checks every value and builds the relay configuration.
    pub fn validate(&self) -> Result<Validated, SettingsError> {
        let e = self.effective();
        let get = |v: Option<u64>| v.unwrap_or_default();
        let invalid = |key: &'static str, value: String, allowed: &str| SettingsError::Invalid {
            key,
            value,
            allowed: allowed.to_owned(),
        };
        let listen = e.listen.expect("filled in");
        let admin = e.admin.expect("filled in");
        let same_port = admin.port() != 0 && admin.port() == listen.port();
        if same_port
            && (admin.ip() == listen.ip()
                || admin.ip().is_unspecified()
                || listen.ip().is_unspecified())
        {
            return Err(invalid(
                "admin",
                admin.to_string(),
                "must not be the QUIC listen address",
            ));
        }
        let cluster_nodes = cluster_nodes(&e)?;
        let sizes_v = e.sizes.clone().unwrap_or_default();
        let sizes_text = || {
            let list: Vec<String> = sizes_v.iter().map(u32::to_string).collect();
            list.join(",")
        };
        // Refused rather than normalised: a list out of order or with a class too small for
        // any sealed message is a mistake the operator should see, not one the relay fixes.
        if sizes_v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "sizes",
                sizes_text(),
                "must be strictly ascending (each size larger than the one before)",
            ));
        }
        if let Some(small) = sizes_v
            .iter()
            .find(|&&s| (s as usize) < sealpost_core::e2e::MIN_BODY)
        {
            return Err(invalid(
                "sizes",
                sizes_text(),
                &format!(
                    "each size must be at least {} bytes (the end-to-end header of a sealed \
                     message); {small} is smaller",
                    sealpost_core::e2e::MIN_BODY
                ),
            ));
        }
        let sizes = SizeClasses::new(sizes_v.clone())
            .map_err(|err| invalid("sizes", sizes_text(), &err.to_string()))?;
        match (&e.cert, &e.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    if e.cert.is_some() { "cert" } else { "key" },
                    "(only one given)".into(),
                    "cert and key go together",
                ));
            }
            _ => {}
        }
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, "0".into(), "must be at least 1"))
            } else {
                Ok(v)
            }
        };
        positive("max_envelopes", get(e.max_envelopes.map(u64::from)))?;
        positive("max_bytes", get(e.max_bytes))?;
        positive("max_mailboxes", get(e.max_mailboxes))?;
        positive("retention_secs", get(e.retention_secs))?;
        positive("expire_interval_secs", get(e.expire_interval_secs))?;
        let epoch = get(e.at_rest_epoch_secs);
        if !(1..=7 * 24 * 3600).contains(&epoch) {
            return Err(invalid(
                "at_rest_epoch_secs",
                epoch.to_string(),
                "must be between 1 and 604800 (a week)",
            ));
        }
        let settle = get(e.at_rest_settle_secs);
        if !(1..=3600).contains(&settle) {
            return Err(invalid(
                "at_rest_settle_secs",
                settle.to_string(),
                "must be between 1 and 3600 (an hour)",
            ));
        }
        positive("max_window", get(e.max_window.map(u64::from)))?;
        positive("max_streams", get(e.max_streams.map(u64::from)))?;
        positive("max_connections", get(e.max_connections.map(|v| v as u64)))?;
        positive("shutdown_timeout_secs", get(e.shutdown_timeout_secs))?;
        let idle = get(e.idle_timeout_secs);
        if !(1..=600).contains(&idle) {
            return Err(invalid(
                "idle_timeout_secs",
                idle.to_string(),
                "must be between 1 and 600",
            ));
        }
        let batch = e.max_batch.unwrap_or_default();
        if !(1..=u16::MAX as usize).contains(&batch) {
            return Err(invalid(
                "max_batch",
                batch.to_string(),
                "must be between 1 and 65535",
            ));
        }
        let shards = e.shards.unwrap_or_default();
        if shards > 1024 {
            return Err(invalid(
                "shards",
                shards.to_string(),
                "must be between 0 (one per core) and 1024",
            ));
        }
        let frame_timeout = get(e.frame_timeout_secs);
        if !(1..=3600).contains(&frame_timeout) {
            return Err(invalid(
                "frame_timeout_secs",
                frame_timeout.to_string(),
                "must be between 1 and 3600",
            ));
        }
        // A rate whose burst is 0 would refuse everything; say so rather than start a relay
        // that cannot be used.
        let rate = |key: &'static str, per_sec: Option<u32>, burst: Option<u32>| {
            let (per_sec, burst) = (per_sec.unwrap_or_default(), burst.unwrap_or_default());
            if per_sec > 0 && burst == 0 {
                Err(invalid(
                    key,
                    "0".into(),
                    "must be at least 1 while the rate it goes with is on",
                ))
            } else {
                Ok(Rate::new(per_sec, burst))
            }
        };
        let source_connection_rate = rate(
            "source_connection_burst",
            e.source_connections_per_sec,
            e.source_connection_burst,
        )?;
        let source_stream_rate = rate(
            "source_stream_burst",
            e.source_streams_per_sec,
            e.source_stream_burst,
        )?;
        let source_fault_rate = rate(
            "source_fault_burst",
            e.source_faults_per_sec,
            e.source_fault_burst,
        )?;
        let source_create_rate = rate(
            "source_create_burst",
            e.source_creates_per_sec,
            e.source_create_burst,
        )?;
        let mailbox_deposit_rate = rate(
            "mailbox_deposit_burst",
            e.mailbox_deposits_per_sec,
            e.mailbox_deposit_burst,
        )?;
        let connection_stream_rate = rate(
            "connection_stream_burst",
            e.connection_streams_per_sec,
            e.connection_stream_burst,
        )?;
        let frame_limit = 1 + sealpost_core::envelope::OVERHEAD as u64 + u64::from(sizes.max());
        let window = |key: &'static str, v: Option<u32>, least: u64| {
            let v = v.unwrap_or_default();
            if u64::from(v) < least {
                Err(invalid(
                    key,
                    v.to_string(),
                    &format!(
                        "must be at least {least} (a whole frame of the largest size class, with its header)"
                    ),
                ))
            } else {
                Ok(v)
            }
        };
        let stream_receive_window = window(
            "stream_receive_window",
            e.stream_receive_window,
            frame_limit + 4,
        )?;
        let connection_receive_window = window(
            "connection_receive_window",
            e.connection_receive_window,
            u64::from(stream_receive_window),
        )?;
        let connection_send_window = window(
            "connection_send_window",
            e.connection_send_window,
            frame_limit + 4,
        )?;
        let deposit_buffer_bytes = e.deposit_buffer_bytes.unwrap_or_default();
        if (deposit_buffer_bytes as u64) < frame_limit {
            return Err(invalid(
                "deposit_buffer_bytes",
                deposit_buffer_bytes.to_string(),
                &format!("must be at least {frame_limit} (one envelope of the largest size class)"),
            ));
        }
        let backend = e.backend.clone().unwrap_or_default();
        let engine = if backend.trim().eq_ignore_ascii_case("auto") {
            Engine::detect()
        } else {
            // Said with every way the value may have come in, SEALPOST_BACKEND most of all.
            let why = |err: EngineError| {
                invalid(
                    "backend",
                    backend.clone(),
                    &format!(
                        "{err} (set by --backend, SEALPOST_BACKEND or the file; `auto` picks the fastest)"
                    ),
                )
            };
            Engine::new(backend.parse().map_err(why)?).map_err(why)?
        };
        let limits = RelayLimits {
            sizes,
            max_envelopes: e.max_envelopes.unwrap_or_default(),
            max_bytes: get(e.max_bytes),
            retention: Duration::from_secs(get(e.retention_secs)),
            expire_interval: Duration::from_secs(get(e.expire_interval_secs)),
            dedupe_window: e.dedupe_window.unwrap_or_default(),
            max_window: e.max_window.unwrap_or_default(),
            max_mailboxes: get(e.max_mailboxes),
            max_streams: e.max_streams.unwrap_or_default(),
            max_connections: e.max_connections.unwrap_or_default(),
            idle_timeout: Duration::from_secs(idle),
            max_batch: batch,
            shards,
            udp_buffer: e.udp_buffer.unwrap_or_default(),
            max_connections_per_source: e.max_connections_per_source.unwrap_or_default(),
            source_connection_rate,
            source_stream_rate,
            source_fault_rate,
            retry: e.retry.unwrap_or_default(),
            retry_above_handshakes: e.retry_above_handshakes.unwrap_or_default(),
            source_create_rate,
            mailbox_deposit_rate,
            connection_stream_rate,
            frame_timeout: Duration::from_secs(frame_timeout),
            partial_frame_budget_bytes: e.partial_frame_budget_bytes.unwrap_or_default(),
            deposit_buffer_bytes,
            stream_receive_window,
            connection_receive_window,
            connection_send_window,
            ..RelayLimits::default()
        };
        let data_dir = e.data_dir.clone().expect("filled in");
        let forward = ForwardConfig {
            enabled: e.forward.unwrap_or(false),
            allow: forward_allow(&e)?,
            private_destinations: e.forward_private_destinations.unwrap_or(false),
            source_rate: rate(
                "source_forward_burst",
                e.source_forwards_per_sec,
                e.source_forward_burst,
            )?,
            key_file: e.forward_key_file.clone(),
            max_destinations: match e.forward_max_destinations.unwrap_or_default() {
                0 => {
                    return Err(invalid(
                        "forward_max_destinations",
                        "0".into(),
                        "at least 1 connection to destination relays",
                    ));
                }
                n => n,
            },
            idle_timeout: match e.forward_idle_timeout_secs.unwrap_or_default() {
                s @ 1..=3600 => Duration::from_secs(s),
                s => {
                    return Err(invalid(
                        "forward_idle_timeout_secs",
                        s.to_string(),
                        "1 to 3600 seconds",
                    ));
                }
            },
            timeout: match e.forward_timeout_secs.unwrap_or_default() {
                s @ 1..=300 => Duration::from_secs(s),
                s => {
                    return Err(invalid(
                        "forward_timeout_secs",
                        s.to_string(),
                        "1 to 300 seconds",
                    ));
                }
            },
            key_overlap: match e.forward_key_overlap_secs.unwrap_or_default() {
                s @ 0..=MAX_KEY_OVERLAP_SECS => Duration::from_secs(s),
                s => {
                    return Err(invalid(
                        "forward_key_overlap_secs",
                        s.to_string(),
                        "0 to 31536000 seconds (a year)",
                    ));
                }
            },
            master_key: None,
        };
        Ok(Validated {
            relay: RelayConfig {
                listen,
                data_dir,
                cert: e.cert.clone(),
                key: e.key.clone(),
                limits,
                log_sensitive: e.log_sensitive_debug.unwrap_or(false),
                engine,
                forward,
            },
            admin,
            store: e.store.expect("filled in"),
            cluster_nodes,
            master_key_file: e.master_key_file.clone(),
            at_rest: e.at_rest.unwrap_or(true),
            at_rest_epoch: Duration::from_secs(epoch),
            at_rest_settle: Duration::from_secs(settle),
            min_free_disk_bytes: get(e.min_free_disk_bytes),
            log_format: e.log_format.expect("filled in"),
            log_sensitive_debug: e.log_sensitive_debug.unwrap_or(false),
            shutdown_timeout: Duration::from_secs(get(e.shutdown_timeout_secs)),
            effective: e,
        })
    }
}

/// The forwarding allow-list: each entry HOST:PORT, as a sender would name the relay.
fn forward_allow(e: &Settings) -> Result<Vec<String>, SettingsError> {
    let list: Vec<String> = e
        .forward_allow
        .iter()
        .flatten()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    for n in &list {
        sealpost_core::invitation::check_relay_address(n).map_err(|why| {
            SettingsError::Invalid {
                key: "forward_allow",
                value: list.join(","),
                allowed: why,
            }
        })?;
    }
    Ok(list)
}

/// The cluster store's seed nodes: required with `store = "cluster"`, each HOST:PORT.
fn cluster_nodes(e: &Settings) -> Result<Vec<String>, SettingsError> {
    let nodes: Vec<String> = e
        .cluster_nodes
        .iter()
        .flatten()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    let invalid = |allowed: &str| SettingsError::Invalid {
        key: "cluster_nodes",
        value: nodes.join(","),
        allowed: allowed.to_owned(),
    };
    if e.store != Some(StoreChoice::Cluster) {
        return Ok(Vec::new());
    }
    if nodes.is_empty() {
        return Err(invalid(
            "store = \"cluster\" needs the cluster's nodes: cluster_nodes = [\"HOST:PORT\", ...] in the file, SEALPOST_CLUSTER_NODES or --cluster-nodes HOST:PORT,...",
        ));
    }
    for n in &nodes {
        let port_ok = n.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(invalid(&format!(
                "{n:?} is not HOST:PORT (for example 10.0.0.5:6379)"
            )));
        }
    }
    Ok(nodes)
}

/// Settings that passed [`Settings::validate`].
#[derive(Debug, Clone)]
pub struct Validated {
    /// What the relay starts with.
    pub relay: RelayConfig,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Store choice.
    pub store: StoreChoice,
    /// The Valkey cluster's seed nodes, HOST:PORT (checked; empty unless the store is
    /// `cluster`).
    pub cluster_nodes: Vec<String>,
    /// Master key file.
    pub master_key_file: Option<PathBuf>,
    /// Seal envelopes at rest (with a master key).
    pub at_rest: bool,
    /// The at-rest epoch window.
    pub at_rest_epoch: Duration,
    /// The at-rest settle grace of the cluster store.
    pub at_rest_settle: Duration,
    /// The disk store's free-space reserve, bytes.
    pub min_free_disk_bytes: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Sensitive fields in logs (debugging only).
    pub log_sensitive_debug: bool,
    /// Bound on a graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Every setting, defaults filled in.
    pub effective: Settings,
}

impl Validated {
    /// The effective settings as TOML, secrets redacted (a master key given through
    /// SEALPOST_MASTER_KEY shows as `master_key = "<redacted>"`).
    pub fn to_toml(&self, master_key_in_env: bool) -> String {
        let mut out = toml::to_string(&self.effective).unwrap_or_else(|e| format!("# {e}\n"));
        if master_key_in_env {
            out.push_str("# from SEALPOST_MASTER_KEY:\n# master_key = \"<redacted>\"\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = Settings::from_toml("listen = \"127.0.0.1:1\"\nmax_envelopess = 3\n").unwrap_err();
        assert!(e.contains("max_envelopess"), "{e}");
    }

    #[test]
    fn bad_types_are_named() {
        let e = Settings::from_toml("max_streams = \"many\"\n").unwrap_err();
        assert!(e.contains("max_streams"), "{e}");
    }

    #[test]
    fn out_of_range_values_say_what_is_allowed() {
        let s = Settings::from_toml("max_batch = 0\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_batch") && e.contains("between 1 and 65535"),
            "{e}"
        );
        let s = Settings::from_toml("sizes = []\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("sizes"));
        let s = Settings::from_toml("sizes = [1024, 256]\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("1024,256") && e.contains("ascending"), "{e}");
        let s = Settings::from_toml("sizes = [256, 256]\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("ascending"));
        let s = Settings::from_toml("sizes = [51, 256]\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("at least 52") && e.contains("51"), "{e}");
        let s = Settings::from_toml("sizes = [52, 256]\n").unwrap();
        assert!(s.validate().is_ok());
        let s = Settings::from_toml("admin = \"127.0.0.1:4433\"\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("admin"));
    }

    #[test]
    fn abuse_limits_are_read_and_checked() {
        let s = Settings::from_toml(
            "retry = \"always\"\nmailbox_deposits_per_sec = 7\nmailbox_deposit_burst = 9\n\
             max_connections_per_source = 3\nconnection_streams_per_sec = 0\n",
        )
        .unwrap();
        let l = s.validate().unwrap().relay.limits;
        assert_eq!(l.retry, RetryPolicy::Always);
        assert_eq!(l.mailbox_deposit_rate, Rate::new(7, 9));
        assert_eq!(l.max_connections_per_source, 3);
        assert!(!l.connection_stream_rate.is_limited());
        let e = Settings::from_toml("retry = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("retry"), "{e}");
        let s =
            Settings::from_toml("source_connections_per_sec = 5\nsource_connection_burst = 0\n")
                .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("source_connection_burst"), "{e}");
        let s = Settings::from_toml("stream_receive_window = 1000\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("stream_receive_window") && e.contains("65593"),
            "{e}"
        );
        let s = Settings::from_toml("at_rest_epoch_secs = 0\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("at_rest_epoch_secs") && e.contains("604800"),
            "{e}"
        );
        let s = Settings::from_toml("at_rest = false\nat_rest_epoch_secs = 60\n").unwrap();
        let v = s.validate().unwrap();
        assert!(!v.at_rest);
        assert_eq!(v.at_rest_epoch, Duration::from_secs(60));
        assert!(Settings::default().validate().unwrap().at_rest);
        let d = Settings::default().validate().unwrap();
        assert_eq!(d.at_rest_settle, crate::store::at_rest::DEFAULT_SETTLE);
        let s = Settings::from_toml("at_rest_settle_secs = 0\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("at_rest_settle_secs") && e.contains("3600"),
            "{e}"
        );
        let s = Settings::from_toml("at_rest_settle_secs = 5\n").unwrap();
        assert_eq!(s.validate().unwrap().at_rest_settle, Duration::from_secs(5));
        let s = Settings::from_toml("frame_timeout_secs = 0\n").unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("frame_timeout_secs")
        );
    }

    #[test]
    fn the_cluster_store_needs_its_nodes() {
        let s = Settings::from_toml("store = \"cluster\"\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("cluster_nodes") && e.contains("SEALPOST_CLUSTER_NODES"),
            "{e}"
        );
        let s =
            Settings::from_toml("store = \"cluster\"\ncluster_nodes = [\"valkey-0\"]\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("valkey-0") && e.contains("HOST:PORT"), "{e}");
        let s = Settings::from_toml(
            "store = \"cluster\"\ncluster_nodes = [\"10.0.0.5:6379\", \" valkey-1:6379 \"]\n",
        )
        .unwrap();
        let v = s.validate().unwrap();
        assert_eq!(v.store, StoreChoice::Cluster);
        assert_eq!(v.cluster_nodes, ["10.0.0.5:6379", "valkey-1:6379"]);
        // Nodes given for another store are kept in the effective settings but not used.
        let s = Settings::from_toml("cluster_nodes = [\"10.0.0.5:6379\"]\n").unwrap();
        assert!(s.validate().unwrap().cluster_nodes.is_empty());
    }

    #[test]
    fn later_layers_win() {
        let file = Settings::from_toml("max_streams = 10\nmax_window = 20\n").unwrap();
        let flags = Settings {
            max_streams: Some(99),
            ..Settings::default()
        };
        let v = file.overlaid(&flags).validate().unwrap();
        assert_eq!(v.relay.limits.max_streams, 99);
        assert_eq!(v.relay.limits.max_window, 20);
        assert_eq!(
            v.relay.limits.max_envelopes,
            RelayLimits::default().max_envelopes
        );
    }

    #[test]
    fn effective_settings_round_trip_through_toml() {
        let v = Settings::default().validate().unwrap();
        let text = v.to_toml(false);
        let again = Settings::from_toml(&text).unwrap().validate().unwrap();
        assert_eq!(again.relay.listen, v.relay.listen);
        assert_eq!(again.admin, v.admin);
    }

    /// Forwarding is off unless asked for; its list, rate and pool settings reach the
    /// configuration, and values that cannot work are refused naming the key.
    #[test]
    fn forwarding_settings() {
        let v = Settings::default().validate().unwrap();
        assert!(!v.relay.forward.enabled);
        assert!(v.relay.forward.allow.is_empty());
        assert_eq!(
            v.relay.forward.key_overlap,
            Duration::from_secs(30 * 24 * 3600)
        );
        let v = Settings::from_toml(
            "forward = true\nforward_allow = [\"a.example:4433\", \" [::1]:4433 \"]\n\
             source_forwards_per_sec = 7\nsource_forward_burst = 9\nforward_timeout_secs = 3\n\
             forward_max_destinations = 5\nforward_key_file = \"/etc/sealpost/forward.key\"\n\
             forward_key_overlap_secs = 60\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let f = &v.relay.forward;
        assert!(f.enabled);
        assert_eq!(f.allow, ["a.example:4433", "[::1]:4433"]);
        assert_eq!(f.source_rate, Rate::new(7, 9));
        assert_eq!(f.timeout, Duration::from_secs(3));
        assert_eq!(f.max_destinations, 5);
        assert_eq!(f.key_overlap, Duration::from_secs(60));
        assert_eq!(
            f.key_file.as_deref(),
            Some(Path::new("/etc/sealpost/forward.key"))
        );
        for (bad, key) in [
            ("forward_allow = [\"no-port\"]", "forward_allow"),
            ("forward_timeout_secs = 0", "forward_timeout_secs"),
            ("forward_max_destinations = 0", "forward_max_destinations"),
            ("forward_idle_timeout_secs = 0", "forward_idle_timeout_secs"),
            (
                "forward_key_overlap_secs = 31536001",
                "forward_key_overlap_secs",
            ),
        ] {
            let e = Settings::from_toml(bad)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
