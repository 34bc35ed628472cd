//! `run`: drive a relay with many mailboxes over many connections, verify every delivery
//! end to end, drain, and report.

use crate::message::{self, Stamp};
use crate::report::{Latency, Report, RunConfig, Second};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use sealpost_client::{Client, Mailbox};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::Invitation;
use sealpost_core::padding::SizeClasses;
use sealpost_relay::settings::StoreChoice;
use sealpost_relay::{Relay, RelayConfig, RelayLimits, StoreOptions};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

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
    /// Store of a spawned relay.
    pub store: StoreKind,
    /// Recipients stay offline during the load and only drain afterwards (a backlog).
    pub backlog: bool,
    /// End-to-end sealing in the generator.
    pub e2e: E2eMode,
    /// A counter the run also adds each distinct verified delivery to, for a caller that
    /// shows its own progress (`abuse` runs this load inside its phases).
    pub live_delivered: Option<Arc<AtomicU64>>,
}

/// A relay started for the run; shut down when the run ends.
pub struct SpawnedRelay {
    /// The relay, with its store.
    pub relay: Relay,
    _dir: tempfile::TempDir,
}

/// Which store a spawned relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// Starts an in-process relay with limits generous enough for a load test, allowing
/// `max_streams` concurrent streams per connection.
pub async fn spawn_relay(
    window: u32,
    store: StoreKind,
    max_streams: u32,
) -> anyhow::Result<SpawnedRelay> {
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let limits = RelayLimits {
        max_envelopes: 1_000_000,
        max_bytes: 8 << 30,
        max_window: window.max(1024),
        max_streams: max_streams.max(RelayLimits::default().max_streams),
        // One load generator stands for many clients: from one address, with few mailboxes
        // taking the load of many. The abuse limits would measure themselves, not the relay
        // (`sealpost-loadtest abuse` is where they are tested).
        max_connections_per_source: 0,
        source_connection_rate: sealpost_relay::Rate::UNLIMITED,
        mailbox_deposit_rate: sealpost_relay::Rate::UNLIMITED,
        connection_stream_rate: sealpost_relay::Rate::UNLIMITED,
        source_create_rate: sealpost_relay::Rate::UNLIMITED,
        source_stream_rate: sealpost_relay::Rate::UNLIMITED,
        source_fault_rate: sealpost_relay::Rate::UNLIMITED,
        // As large as this kernel allows, so the relay does not warn on every spawn.
        udp_buffer: std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(RelayLimits::default().udp_buffer, |max: usize| {
                max.min(RelayLimits::default().udp_buffer)
            }),
        ..RelayLimits::default()
    };
    let mut cfg = RelayConfig::new(
        "127.0.0.1:0".parse().expect("literal address"),
        dir.path().to_owned(),
    );
    cfg.limits = limits;
    cfg.engine = crate::engine_from_env()?;
    let choice = match store {
        StoreKind::Memory => StoreChoice::Memory,
        StoreKind::Disk => StoreChoice::Disk,
        StoreKind::Cluster => bail!(
            "the cluster store runs in relay processes: give --relays N (and --cluster-nodes or let the run start a cluster)"
        ),
    };
    // The store with its defaults, as `serve` would open it without a master key; with
    // SEALPOST_AT_REST=true as with one (a random key for the run), so envelopes are sealed at
    // rest (docs/AT-REST.md).
    let mut options = StoreOptions::new(choice);
    let at_rest = std::env::var("SEALPOST_AT_REST").is_ok_and(|v| v == "true" || v == "1");
    if at_rest {
        let key = sealpost_core::random::array::<32>().context("drawing a master key")?;
        options.master_key = Some(zeroize::Zeroizing::new(key));
    }
    let relay = Relay::open_with(cfg, options)
        .await
        .context("starting the in-process relay")?;
    if at_rest {
        eprintln!("{}", relay.store_announcement());
    }
    Ok(SpawnedRelay { relay, _dir: dir })
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// Bytes this process has caused to be written to storage (Linux `/proc/self/io`).
pub fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Disk space the files under `dir` occupy (allocated blocks where the platform reports them:
/// stores preallocate journals, whose apparent size says little).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += allocated(&m),
                Err(_) => {}
            }
        }
    }
    total
}

/// Per-mailbox bookkeeping, indexed by the generator's sequence number.
#[derive(Default)]
struct Track {
    acked: Vec<bool>,
    delivered: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::subscriber_connection;

    #[test]
    fn subscribers_sit_on_another_relay_than_their_senders() {
        for relays in 2..5 {
            for connections in relays..12 {
                for i in 0..50 {
                    let sub = subscriber_connection(i, connections, relays);
                    assert!(sub < connections);
                    assert_ne!(
                        sub % relays,
                        i % connections % relays,
                        "{i} {connections} {relays}"
                    );
                }
            }
        }
        for i in 0..20 {
            assert_eq!(subscriber_connection(i, 3, 1), i % 3);
        }
    }
}

fn mark(v: &mut Vec<bool>, i: u64) -> bool {
    let i = i as usize;
    if v.len() <= i {
        v.resize(i + 1, false);
    }
    std::mem::replace(&mut v[i], true)
}

#[derive(Default)]
struct Counters {
    deposited: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    delivered: AtomicU64,
    /// Deliveries after the warm-up: what throughput is computed from.
    delivered_measured: AtomicU64,
    duplicated: AtomicU64,
    corrupted: AtomicU64,
}

/// Latency histograms shared by every subscriber: the whole run's (after the warm-up) and
/// the current second's (for the progress line and the timeline).
struct Latencies {
    total: Histogram<u64>,
    second: Histogram<u64>,
}

/// How the generator seals message content end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

struct Ctx {
    run_id: u64,
    /// Deliveries arrive unsealed from the baseline forwarder.
    unsealed: bool,
    warmup_us: u64,
    latencies: Mutex<Latencies>,
    mode: E2eMode,
    size: u32,
    /// Per-mailbox keys in the fast mode.
    fast_keys: Vec<crate::fast::FastKey>,
    start: Instant,
    content_len: usize,
    sizes: SizeClasses,
    counters: Counters,
    tracks: Vec<Mutex<Track>>,
    live_delivered: Option<Arc<AtomicU64>>,
}

impl RunOptions {
    fn target_is_baseline(&self) -> bool {
        matches!(self.target, Target::Baseline)
    }
}

impl Ctx {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}

/// Runs the load and returns the report.
pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    if opts.mailboxes == 0 || opts.connections == 0 {
        bail!("--mailboxes and --connections must be at least 1");
    }
    if opts.depth == 0 || opts.window == 0 {
        bail!("--depth and --window must be at least 1");
    }
    if let Some(r) = opts.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number of envelopes per second");
    }
    if opts.backlog && opts.target_is_baseline() {
        bail!("the baseline forwarder has no store, so it cannot hold a backlog");
    }
    // Every mailbox's subscription is a stream on its connection, besides the deposit stream
    // and one request at a time (set-up CREATEs beyond it wait for credit, as QUIC intends).
    let streams = (opts.mailboxes.div_ceil(opts.connections) + 2).min(u32::MAX as usize) as u32;
    let spawned = match &opts.target {
        Target::Spawn => Some(spawn_relay(opts.window, opts.store, streams).await?),
        _ => None,
    };
    let baseline = match &opts.target {
        Target::Baseline => Some(crate::baseline::Baseline::start(streams).await?),
        _ => None,
    };
    let fleet = match &opts.target {
        Target::Processes(f) => {
            let f = f.clone();
            let window = opts.window;
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::fleet::Fleet::start(&f, streams, window)
                })
                .await
                .context("relay start-up task")??,
            )
        }
        _ => None,
    };
    let (addrs, pin, relay_label) = match (&opts.target, &spawned, &baseline, &fleet) {
        (Target::Remote { addrs, pin }, _, _, _) => (addrs.clone(), *pin, addrs.join(",")),
        (Target::Processes(_), _, _, Some(f)) => (f.addrs.clone(), f.pin, f.addrs.join(",")),
        (Target::Spawn, Some(s), _, _) => (
            vec![s.relay.handle().local_addr().to_string()],
            s.relay.handle().pin(),
            "spawned".to_owned(),
        ),
        (Target::Baseline, _, Some(b), _) => (
            vec![b.local_addr().to_string()],
            b.pin(),
            "baseline".to_owned(),
        ),
        _ => unreachable!("started above"),
    };
    if addrs.is_empty() {
        bail!("no relay address given");
    }
    if opts.connections < addrs.len() {
        bail!(
            "--connections {} is fewer than the {} relays: each relay needs a connection",
            opts.connections,
            addrs.len()
        );
    }

    let mut clients = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let addr = &addrs[i % addrs.len()];
        let c = Client::connect_pinned(addr, pin)
            .await
            .with_context(|| format!("connection {i} to {addr}"))?;
        clients.push(Arc::new(c));
    }
    let info = clients[0]
        .info()
        .await
        .context("asking the relay for its limits")?;
    if !info.limits.sizes.contains(opts.size) {
        bail!(
            "--size {} is not a body size this relay allows; allowed: {:?}",
            opts.size,
            info.limits.sizes.as_slice()
        );
    }
    let content_len = match opts.e2e {
        E2eMode::Hpke => e2e::max_content(opts.size),
        E2eMode::Fast => crate::fast::max_content(opts.size),
    };
    if content_len < message::HEADER {
        bail!(
            "--size {} leaves no room for the load generator's {}-byte stamp",
            opts.size,
            message::HEADER
        );
    }

    let progress = opts.progress && std::io::stderr().is_terminal();
    let mailboxes = create_mailboxes(&clients, opts.mailboxes, progress).await?;
    let invitations: Vec<Invitation> = mailboxes.iter().map(|m| m.invitation()).collect();
    let fast_keys = match opts.e2e {
        E2eMode::Fast => (0..opts.mailboxes)
            .map(|_| crate::fast::FastKey::generate())
            .collect::<anyhow::Result<_>>()?,
        E2eMode::Hpke => Vec::new(),
    };
    let ctx = Arc::new(Ctx {
        run_id: u64::from_be_bytes(sealpost_core::random::array().context("random source")?),
        unsealed: baseline.is_some(),
        warmup_us: opts.warmup.as_micros() as u64,
        latencies: Mutex::new(Latencies {
            total: new_histogram(),
            second: new_histogram(),
        }),
        mode: opts.e2e,
        size: opts.size,
        fast_keys,
        start: Instant::now(),
        content_len,
        sizes: info.limits.sizes.clone(),
        counters: Counters::default(),
        tracks: (0..opts.mailboxes)
            .map(|_| Mutex::new(Track::default()))
            .collect(),
        live_delivered: opts.live_delivered.clone(),
    });

    // Subscribers first, so deliveries flow from the first deposit (unless recipients are
    // offline for a backlog run, in which case they come after the load).
    let (stop_subs_tx, stop_subs) = watch::channel(false);
    let mut subs = JoinSet::new();
    let spawn_subs = |subs: &mut JoinSet<anyhow::Result<()>>| {
        for (i, mb) in mailboxes.iter().enumerate() {
            let client = clients[subscriber_connection(i, clients.len(), addrs.len())].clone();
            subs.spawn(subscriber(
                client,
                mb.clone(),
                i as u32,
                opts.window,
                ctx.clone(),
                stop_subs.clone(),
            ));
        }
    };
    if !opts.backlog {
        spawn_subs(&mut subs);
    }
    let written_before = write_bytes();
    let probe = crate::usage::Probe::new(fleet.as_ref());
    let usage_before = probe.sample();

    let stop_send = Arc::new(AtomicBool::new(false));
    let mut senders = JoinSet::new();
    let invitations = Arc::new(invitations);
    // In the open loop each connection sends its share of the rate.
    let per_conn_rate = opts.rate.map(|r| r / clients.len() as f64);
    for (ci, client) in clients.iter().enumerate() {
        let mine: Vec<u32> = (ci..opts.mailboxes)
            .step_by(clients.len())
            .map(|i| i as u32)
            .collect();
        senders.spawn(sender(
            client.clone(),
            mine,
            invitations.clone(),
            opts.depth,
            per_conn_rate,
            ctx.clone(),
            stop_send.clone(),
        ));
    }
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let ticker = tokio::spawn(tick(ctx.clone(), timeline.clone(), progress));

    tokio::time::sleep(opts.warmup + opts.duration).await;
    stop_send.store(true, Ordering::Relaxed);
    while let Some(r) = senders.join_next().await {
        r.context("sender task panicked")??;
    }
    let written_load = write_bytes().zip(written_before).map(|(a, b)| a - b);
    if opts.backlog {
        spawn_subs(&mut subs);
    }
    drain(&ctx, opts.drain_timeout).await;
    let elapsed = ctx.start.elapsed().as_secs_f64();
    let usage_after = probe.sample();
    let _ = stop_subs_tx.send(true);
    while let Some(r) = subs.join_next().await {
        r.context("subscriber task panicked")??;
    }
    ticker.abort();
    if progress {
        eprintln!();
    }
    let hist = ctx
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .total
        .clone();
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|p| p.into_inner()));

    let lost: u64 = ctx
        .tracks
        .iter()
        .map(|t| {
            let t = t.lock().unwrap_or_else(|p| p.into_inner());
            t.acked
                .iter()
                .enumerate()
                .filter(|(i, a)| **a && !t.delivered.get(*i).copied().unwrap_or(false))
                .count() as u64
        })
        .sum();
    let c = &ctx.counters;
    let delivered = c.delivered.load(Ordering::Relaxed);
    let measured = c.delivered_measured.load(Ordering::Relaxed);
    let measured_s = (elapsed - opts.warmup.as_secs_f64()).max(1e-9);
    let deposited = c.deposited.load(Ordering::Relaxed);
    let deposited_bytes = deposited * (opts.size as u64 + sealpost_core::envelope::OVERHEAD as u64);
    let spawned_local = spawned.is_some();
    let store_label = match &opts.target {
        Target::Spawn => Some(opts.store),
        Target::Processes(f) => Some(f.store),
        _ => None,
    };
    let usage = probe.usage(
        usage_before,
        usage_after,
        delivered,
        c.acked.load(Ordering::Relaxed),
    );
    // Give the store's background flush and compaction a moment, then measure what is left.
    let (data_dir_bytes, data_dir_bytes_reclaimed) = match &spawned {
        Some(s) if opts.store == StoreKind::Disk => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = dir_size(s._dir.path());
            let after = match s.relay.disk_store() {
                Some(d) => {
                    let d = d.clone();
                    tokio::task::spawn_blocking(move || d.reclaim_space())
                        .await
                        .context("reclaim task")??;
                    Some(dir_size(s._dir.path()))
                }
                None => None,
            };
            (Some(before), after)
        }
        _ => (None, None),
    };
    let report = Report {
        config: RunConfig {
            relay: relay_label,
            mailboxes: opts.mailboxes,
            connections: opts.connections,
            size: opts.size,
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            mode: if opts.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate: opts.rate,
            depth: opts.depth,
            window: opts.window,
            drain_timeout_s: opts.drain_timeout.as_secs_f64(),
            store: store_label,
            backlog: opts.backlog,
            e2e: opts.e2e,
        },
        machine: crate::report::Machine::this(),
        relays: addrs.clone(),
        cross_relay: addrs.len() > 1,
        cluster_nodes: fleet
            .as_ref()
            .map(|f| f.cluster_nodes.clone())
            .filter(|n| !n.is_empty()),
        cluster_started: fleet.as_ref().is_some_and(|f| f.cluster_started),
        usage,
        timeline,
        disk_write_bytes_during_load: written_load.filter(|_| spawned_local),
        write_bytes_per_deposited_byte: written_load
            .filter(|_| spawned_local && deposited_bytes > 0)
            .map(|w| w as f64 / deposited_bytes as f64),
        data_dir_bytes_after_drain: data_dir_bytes,
        data_dir_bytes_after_reclaim: data_dir_bytes_reclaimed,
        deposited,
        acked: c.acked.load(Ordering::Relaxed),
        delivered,
        lost,
        duplicated: c.duplicated.load(Ordering::Relaxed),
        corrupted: c.corrupted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        duration_s: elapsed,
        measured_s,
        deliveries_per_s: measured as f64 / measured_s,
        bytes_per_s: measured as f64 * opts.size as f64 / measured_s,
        latency_us: Latency {
            p50: hist.value_at_quantile(0.50),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
    };
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    if let Some(s) = spawned {
        // Clients are gone: the connections close at once, and the disk store's final flush
        // has its share of the budget.
        s.relay
            .shutdown(Duration::from_secs(10))
            .await
            .context("stopping the in-process relay")?;
    }
    if let Some(b) = baseline {
        b.shutdown().await;
    }
    // Stops the relay processes, then the cluster if the run started it.
    drop(fleet);
    Ok(report)
}

/// The connection mailbox `i` is subscribed on. Its deposits go over connection `i mod C`, to
/// relay `(i mod C) mod R`; with several relays the subscription goes to the next relay, over
/// one of that relay's connections (connection `k` is to relay `k mod R`), so every delivery
/// crosses from one relay to another.
fn subscriber_connection(i: usize, connections: usize, relays: usize) -> usize {
    if relays <= 1 {
        return i % connections;
    }
    let to = (i % connections % relays + 1) % relays;
    // Connections to relay `to`: to, to + R, … below C (at least one, as C >= R).
    let of_relay = (connections - to).div_ceil(relays);
    to + relays * ((i / connections) % of_relay)
}

async fn create_mailboxes(
    clients: &[Arc<Client>],
    n: usize,
    progress: bool,
) -> anyhow::Result<Vec<Arc<Mailbox>>> {
    let t0 = Instant::now();
    let mut out: Vec<Option<Arc<Mailbox>>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0usize;
    let mut done = 0usize;
    while done < n {
        while next < n && set.len() < 64 {
            let c = clients[next % clients.len()].clone();
            let i = next;
            set.spawn(async move {
                let mb = c
                    .create_patiently(Suite::ChaCha20Poly1305, Duration::from_secs(30))
                    .await;
                (i, mb)
            });
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            let (i, mb) = r.context("create task panicked")?;
            out[i] = Some(Arc::new(mb.with_context(|| {
                format!(
                    "creating mailbox {i} (a relay limits mailboxes created per address: \
                         raise source_creates_per_sec on a relay under load test)"
                )
            })?));
            done += 1;
            if progress && (done.is_multiple_of(1000) || done == n) {
                eprint!(
                    "\rcreating mailboxes: {done}/{n} ({:.0} s)   ",
                    t0.elapsed().as_secs_f64()
                );
                if done == n {
                    eprintln!();
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|m| m.expect("every mailbox created"))
        .collect())
}

async fn sender(
    client: Arc<Client>,
    mine: Vec<u32>,
    invitations: Arc<Vec<Invitation>>,
    depth: usize,
    rate: Option<f64>,
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if mine.is_empty() {
        return Ok(());
    }
    let (mut tx, mut rx) = client
        .open_deposit()
        .await
        .context("opening a deposit stream")?;
    tracing::debug!(mailboxes = mine.len(), "deposit stream open");
    // One entry per unanswered deposit: its capacity is the pipeline depth.
    let (qtx, mut qrx) = mpsc::channel::<(u32, u64)>(depth);
    let rctx = ctx.clone();
    let reader = tokio::spawn(async move {
        while let Some(statuses) = rx.next().await.context("reading deposit results")? {
            for s in statuses {
                let (mb, seq) = qrx
                    .recv()
                    .await
                    .context("a result for an envelope never sent")?;
                if s.is_success() {
                    mark(
                        &mut rctx.tracks[mb as usize]
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .acked,
                        seq,
                    );
                    rctx.counters.acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    rctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        anyhow::Ok(())
    });
    let mut next_seq = vec![0u64; mine.len()];
    // Open loop: envelope n of this connection is due at n / rate after the start.
    let mut sent = 0u64;
    let interval_us = rate.map(|r| 1e6 / r);
    'load: loop {
        for (k, &mb) in mine.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break 'load;
            }
            let sent_us = match interval_us {
                None => ctx.now_us(),
                Some(iv) => {
                    let due = (sent as f64 * iv) as u64;
                    let now = ctx.now_us();
                    if due > now {
                        // Never early. tokio's timer ticks in milliseconds, so a wake-up may
                        // be late; every envelope overdue by then goes at once, and its
                        // latency still counts from when it was due.
                        tokio::time::sleep(Duration::from_micros(due - now)).await;
                    }
                    due
                }
            };
            sent += 1;
            let seq = next_seq[k];
            next_seq[k] += 1;
            let stamp = Stamp {
                mailbox: mb,
                seq,
                sent_us,
            };
            let content = message::build(ctx.run_id, stamp, ctx.content_len);
            let inv = &invitations[mb as usize];
            let env = match ctx.mode {
                E2eMode::Hpke => {
                    e2e::seal_for_invitation(&Engine::ring(), inv, &ctx.sizes, &content)
                        .context("sealing a message")?
                }
                E2eMode::Fast => {
                    let mut rng = rand::rng();
                    let body = ctx.fast_keys[mb as usize].seal(
                        &inv.deposit_id,
                        &content,
                        ctx.size,
                        &mut rng,
                    )?;
                    let mut nonce = [0u8; 12];
                    rand::RngCore::fill_bytes(&mut rng, &mut nonce);
                    sealpost_core::envelope::build(
                        &Engine::ring(),
                        &inv.deposit_key,
                        &inv.deposit_id,
                        &nonce,
                        &body,
                    )
                }
            };
            if qtx.send((mb, seq)).await.is_err() {
                break 'load;
            }
            tx.send(&env).await.context("sending a deposit")?;
            ctx.counters.deposited.fetch_add(1, Ordering::Relaxed);
        }
    }
    tx.finish();
    drop(qtx);
    reader.await.context("result reader panicked")?
}

async fn subscriber(
    client: Arc<Client>,
    mailbox: Arc<Mailbox>,
    index: u32,
    window: u32,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut sub = client
        .subscribe(&mailbox.access(), window)
        .await
        .with_context(|| format!("subscribing to mailbox {index}"))?;
    tracing::debug!(index, "subscribed");
    loop {
        let d = tokio::select! {
            d = next_delivery(&mut sub, ctx.unsealed) => d,
            _ = stop.changed() => break,
        };
        let Some(d) = d.with_context(|| format!("receiving on mailbox {index}"))? else {
            break;
        };
        let now = ctx.now_us();
        let content = match ctx.mode {
            E2eMode::Hpke => mailbox.open(&d).ok().map(|c| c.to_vec()),
            E2eMode::Fast => {
                ctx.fast_keys[index as usize].open(&mailbox.deposit_id, d.envelope.body())
            }
        };
        let stamp = content
            .and_then(|c| message::check(ctx.run_id, &c, ctx.content_len))
            .filter(|s| s.mailbox == index);
        match stamp {
            None => {
                ctx.counters.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            Some(s) => {
                let again = mark(
                    &mut ctx.tracks[index as usize]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .delivered,
                    s.seq,
                );
                if again {
                    ctx.counters.duplicated.fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(live) = &ctx.live_delivered {
                        live.fetch_add(1, Ordering::Relaxed);
                    }
                    let latency = now.saturating_sub(s.sent_us).max(1);
                    let mut l = ctx.latencies.lock().unwrap_or_else(|p| p.into_inner());
                    l.second.saturating_record(latency);
                    if now >= ctx.warmup_us {
                        ctx.counters
                            .delivered_measured
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if s.sent_us >= ctx.warmup_us {
                        l.total.saturating_record(latency);
                    }
                }
            }
        }
        sub.ack(d.seq)
            .await
            .with_context(|| format!("acknowledging on mailbox {index}"))?;
    }
    sub.finish();
    Ok(())
}

/// The next delivery, opened from the relay's delivery layer, or taken as it is from the
/// baseline forwarder (envelope followed by a 16-byte placeholder tag).
async fn next_delivery(
    sub: &mut sealpost_client::Subscription,
    unsealed: bool,
) -> Result<Option<sealpost_client::Delivery>, sealpost_client::ClientError> {
    if !unsealed {
        return sub.next().await;
    }
    let Some(d) = sub.next_unopened().await? else {
        return Ok(None);
    };
    let keep = d.sealed.len().saturating_sub(sealpost_core::suite::TAG_LEN);
    let envelope = sealpost_core::envelope::Envelope::parse_any_size(d.sealed.slice(..keep))?;
    Ok(Some(sealpost_client::Delivery {
        seq: d.seq,
        envelope,
    }))
}

/// Waits until every acknowledged envelope is delivered, or until the drain stops progressing.
async fn drain(ctx: &Ctx, timeout: Duration) {
    let c = &ctx.counters;
    let mut last = c.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let delivered = c.delivered.load(Ordering::Relaxed);
        if delivered >= c.acked.load(Ordering::Relaxed) {
            return;
        }
        if delivered != last {
            last = delivered;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once a second: appends a timeline entry and, on a terminal, rewrites the progress line.
async fn tick(ctx: Arc<Ctx>, timeline: Arc<Mutex<Vec<Second>>>, progress: bool) {
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
        let p99 = {
            let mut l = ctx.latencies.lock().unwrap_or_else(|p| p.into_inner());
            let p = l.second.value_at_quantile(0.99);
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
            p99_us: p99,
        };
        if progress {
            eprint!(
                "\r{:>5.0} s{}  {} deposits/s  {} deliveries/s  p99 {:.2} ms  errors {}  total delivered {}   ",
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
