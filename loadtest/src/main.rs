//! `sealpost-loadtest`: load a sealpost relay and check what it delivers.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sealpost_core::Suite;
use sealpost_core::engine::{Backend, Engine};
use sealpost_loadtest::html::reports::Saved;
use sealpost_loadtest::report::ms;
use sealpost_loadtest::run::{E2eMode, RunOptions, Target, Via, run};
use sealpost_loadtest::speed::{self, Op, SpeedOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sealpost-loadtest",
    version,
    about = "Load generator for sealpost relays"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deposit and receive through a relay for a while, verify every delivery, report.
    Run(RunArgs),
    /// The same load against an in-process forwarder with the same framing over quinn but no
    /// crypto and no store: the transport's limit on this machine.
    Baseline(BaselineArgs),
    /// Baseline, relay with the memory store, relay with the disk store: the same load,
    /// interleaved and repeated; medians and the ratios relay / baseline.
    Compare(CompareArgs),
    /// Open-loop runs at rising rates (fractions of the closed-loop maximum), relay and
    /// baseline interleaved, until the p99 or errors pass a bound: the latency-vs-throughput
    /// curve and the highest rate that meets --p99-ms.
    Sweep(SweepArgs),
    /// Render saved JSON reports (run, baseline, compare, sweep, speed, chaos; several runs are
    /// overlaid) as one self-contained HTML file with SVG charts.
    Report(ReportArgs),
    /// Measure the crypto engine against ring, same work, same run.
    Speed(SpeedArgs),
    /// Per-envelope cost of one engine operation and how much of it lies outside the kernels
    /// (total minus the kernels-alone floor), per backend and batch size.
    Overhead(OverheadArgs),
    /// Kill relays (and, on the cluster store, Valkey primaries) with SIGKILL at random moments
    /// under load, bring them back, and check that nothing acknowledged was lost, corrupted or
    /// stored twice.
    ///
    /// Prints a line per kill cycle on standard error while it runs, then the table of cycles,
    /// the totals and, last, a PASS or FAIL line on standard output.
    ///
    /// Exit status: 0 PASS; 2 FAIL (something acknowledged lost, corrupted or stored twice,
    /// a deposit refused or never acknowledged, or a killed part that did not come back: the
    /// FAIL line says which); 1 could not run (bad options, the relays or the cluster did not
    /// start: the error says why).
    Chaos(ChaosArgs),
    /// Many mailboxes, cheaply? Create N (a few with an envelope) in a disk store, then measure
    /// the real relay's restart time to ready, resident memory per mailbox and disk use.
    Mailboxes {
        /// Mailboxes to create.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// How many of them hold an envelope.
        #[arg(long, default_value_t = 2000)]
        active: u64,
        /// Data directory to build (must not hold a store yet); a temporary one by default.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The sealpost-relay binary (default: next to this one).
        #[arg(long)]
        relay_bin: Option<PathBuf>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Bounded memory under attack: a well-behaved client alone, then again while hostile
    /// connections from several loopback addresses attack the relay (half-open streams,
    /// slowloris, trickled maximum-size frames, subscribe churn, bad-tag floods); compares the
    /// p99 latencies and the relay's peak RSS with their targets; exits 2 on FAIL.
    Abuse(Box<AbuseArgs>),
    /// dudect-style constant-time check of the engine (fixed vs random inputs, Welch's t-test).
    CtCheck {
        /// Timed batches per class.
        #[arg(long, default_value_t = 200_000)]
        samples: usize,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args)]
struct AbuseArgs {
    /// The sealpost-relay binary to start (default: next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Store of the started relay: memory or disk.
    #[arg(long, default_value = "memory")]
    store: sealpost_loadtest::run::StoreKind,
    /// A further `sealpost-relay serve` option for the started relay, KEY=VALUE (passed as
    /// --KEY=VALUE; repeatable), e.g. --relay-arg max-streams=100.
    #[arg(long = "relay-arg", value_name = "KEY=VALUE")]
    relay_args: Vec<String>,
    /// Attack a relay already running at this loopback address instead of starting one (its
    /// RSS is not measured, so the memory target is not checked).
    #[arg(long, requires = "pin", conflicts_with_all = ["relay_bin", "relay_args"])]
    target: Option<std::net::SocketAddr>,
    /// The --target relay's certificate pin (64 hex digits).
    #[arg(long, requires = "target")]
    pin: Option<String>,
    /// The --target relay's admin address, for its /metrics.
    #[arg(long, requires = "target")]
    admin: Option<std::net::SocketAddr>,
    /// Hostile connections, divided evenly among the attacks.
    #[arg(long, default_value_t = 1000)]
    hostile: usize,
    /// Loopback source addresses for them: 127.0.0.2 up to 127.0.0.(1 + N).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Attacks, comma-separated: half-open, slowloris, trickle, churn, badtag-flood.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "half-open,slowloris,trickle,churn,badtag-flood"
    )]
    attacks: Vec<sealpost_loadtest::abuse::Attack>,
    /// The well-behaved client's open-loop rate, envelopes per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Its envelope body size.
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Its mailboxes.
    #[arg(long, default_value_t = 4)]
    mailboxes: usize,
    /// Its connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds of measured load in each phase (baseline, attack).
    #[arg(long, default_value_t = 20.0)]
    phase_secs: f64,
    /// Seconds of unmeasured load at the start of each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds the attack runs before the attack phase starts (connections open over the first
    /// half).
    #[arg(long, default_value_t = 10.0)]
    ramp_secs: f64,
    /// Seconds RSS is still sampled after the attack stops.
    #[arg(long, default_value_t = 3.0)]
    recovery_secs: f64,
    /// The relay's resident memory must stay under this, MiB.
    #[arg(long, default_value_t = 512)]
    memory_budget_mib: u64,
    /// Kill the relay and stop if its resident memory exceeds this, MiB.
    #[arg(long, default_value_t = 4096)]
    abort_rss_mib: u64,
    /// Largest allowed attack p99 / baseline p99.
    #[arg(long, default_value_t = 2.0)]
    p99_ratio: f64,
    /// Worker threads of the attacker's own runtime.
    #[arg(long, default_value_t = 1)]
    attack_threads: usize,
    /// Let the attacker share every CPU with the relay and the well-behaved client (by
    /// default it gets the last CPU to itself, and they the others, in both phases: on a real
    /// network the attacker's CPU is not the relay's).
    #[arg(long)]
    share_cpus: bool,
    /// Most streams one hostile connection holds (the relay may grant fewer).
    #[arg(long, default_value_t = 256)]
    max_streams_per_conn: usize,
    /// Milliseconds between two bytes of a slowloris stream.
    #[arg(long, default_value_t = 1000)]
    slow_pause_ms: u64,
    /// Bytes a trickle stream sends at a time.
    #[arg(long, default_value_t = 1)]
    trickle_bytes: usize,
    /// Milliseconds between two trickle chunks.
    #[arg(long, default_value_t = 1000)]
    trickle_interval_ms: u64,
    /// Body size of the bad-tag flood's envelopes.
    #[arg(long, default_value_t = 1024)]
    flood_size: u32,
    /// Mailboxes the attacker creates for churn and flood.
    #[arg(long, default_value_t = 64)]
    attack_mailboxes: usize,
    /// Write the report (with the RSS timeline) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Store of the spawned relay: memory or disk.
    #[arg(long, default_value = "memory")]
    store: sealpost_loadtest::run::StoreKind,
    /// Offered rates as fractions of each target's closed-loop maximum, comma-separated,
    /// rising.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2"
    )]
    steps: Vec<f64>,
    /// The p99 a rate must meet, milliseconds: the sweep reports the highest rate meeting it.
    #[arg(long, default_value_t = 10.0)]
    p99_ms: f64,
    /// Stop a target's sweep after a step whose p99 exceeds this, milliseconds (or after any
    /// step with errors).
    #[arg(long, default_value_t = 100.0)]
    stop_p99_ms: f64,
    /// Write the sweep (every step's full report) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the sweep as a self-contained HTML page with charts to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// JSON reports written with --json by run, baseline, compare, sweep, speed or chaos.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long)]
    html: PathBuf,
    /// The page's title.
    #[arg(long, default_value = "sealpost-loadtest report")]
    title: String,
    /// Also write every chart as its own SVG file into this directory (created if missing).
    #[arg(long)]
    svg_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SpeedArgs {
    /// Bytes authenticated per envelope (the envelope for verify, the plaintext for seal/open).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,256,1024,4096,16384,65536"
    )]
    sizes: Vec<usize>,
    /// Envelopes per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds of measurement per side (ours, ring) per cell.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Operations, comma-separated: verify, seal, open.
    #[arg(long, value_delimiter = ',', default_value = "verify,seal,open")]
    ops: Vec<Op>,
    /// Suites, comma-separated: chacha20poly1305, aes256gcm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chacha20poly1305,aes256gcm"
    )]
    suites: Vec<Suite>,
    /// Backends of ours to measure, comma-separated (avx512, avx2, portable, avx512-emulated);
    /// default: SEALPOST_BACKEND if set, else every one this CPU runs natively.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// Write the report (machine, clock, kernel floors, rows) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the matrix as a self-contained HTML page with charts to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct OverheadArgs {
    /// Operation: verify, seal or open.
    #[arg(long, default_value = "verify")]
    op: Op,
    /// Bytes authenticated per envelope: the AAD for verify, the plaintext (with a 24-byte AAD)
    /// for seal and open.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Envelopes per batch call, comma-separated; one row each.
    #[arg(long, value_delimiter = ',', default_value = "64,1000")]
    batch: Vec<usize>,
    /// Backends, comma-separated (avx512, avx2, portable, avx512-emulated); default: every SIMD
    /// backend this CPU runs natively (avx512 and/or avx2).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// Batch calls per measurement (fixed, e.g. for valgrind); default: as many as take about
    /// 0.5 s, found by timing a short warm-up.
    #[arg(long)]
    iterations: Option<u64>,
    /// Measurements per cell; the median is reported.
    #[arg(long, default_value_t = 7)]
    repeat: usize,
    /// Skip the core-clock measurement and the kernel floor (under valgrind, where neither
    /// means anything): TSC ticks only.
    #[arg(long)]
    no_floor: bool,
    /// Core cycles per envelope outside the kernels that meet the target.
    #[arg(long, default_value_t = 60.0)]
    target: f64,
    /// Write the report (machine, clock, kernel floors, rows) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The load itself, the same for `run`, `baseline` and `compare`.
#[derive(Args, Clone)]
struct LoadArgs {
    /// Mailboxes to create and load (up to 100 000 and more; each subscription is a stream).
    #[arg(long, default_value_t = 100)]
    mailboxes: usize,
    /// QUIC connections to spread them over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Envelope body size in bytes (one of the relay's allowed sizes).
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load first that count for nothing (connections, caches and batches settle).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: envelopes per second over all connections, on a fixed schedule; latency is
    /// measured from each envelope's intended send time. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Unanswered deposits per connection.
    #[arg(long, default_value_t = 256)]
    depth: usize,
    /// Subscribe window per mailbox.
    #[arg(long, default_value_t = 256)]
    window: u32,
    /// Seconds the drain may go without progress before the rest counts as lost.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// No progress line (it is shown only on a terminal anyway).
    #[arg(long)]
    quiet: bool,
    /// End-to-end sealing in the generator: `fast` (a per-mailbox symmetric key: the relay's
    /// work is the same, and the generator's X25519 does not set the pace) or `hpke` (per
    /// message, as real clients; the generator then tops out near 3 000 envelopes/s a core).
    /// The same default for run, baseline, compare and sweep, so their figures compare.
    #[arg(long, default_value = "fast")]
    e2e: sealpost_loadtest::run::E2eMode,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["spawn_relay", "relay"])))]
struct RunArgs {
    /// Start a relay in this process on a free loopback port (store: --store); with --relays
    /// or --store cluster, `sealpost-relay serve` child processes instead.
    #[arg(long)]
    spawn_relay: bool,
    /// Address of a running relay, host:port (repeatable or comma-separated; connections are
    /// spread over them and each mailbox is subscribed on another relay than it is deposited
    /// to).
    #[arg(long, requires = "pin", value_delimiter = ',')]
    relay: Vec<String>,
    /// The running relays' certificate pin (64 hex digits; the same certificate on all).
    #[arg(long)]
    pin: Option<String>,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with charts to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Store of the spawned relay: memory, disk or cluster (relay processes on a Valkey
    /// cluster).
    #[arg(long, default_value = "memory")]
    store: sealpost_loadtest::run::StoreKind,
    /// Keep recipients offline during the load, so a backlog builds; they drain afterwards.
    #[arg(long)]
    backlog: bool,
    /// Deposit through a forwarding relay (two-hop forwarding, docs/FORWARDING.md): `spawn`
    /// starts one in this process on another loopback port, with forwarding on; HOST:PORT
    /// names a running relay with `forward = true` (and `source_forwards_per_sec = 0` or
    /// enough for the load, and `forward_private_destinations = true` for a target on a
    /// private or loopback address), with --via-pin. Each envelope is one FORWARD; subscriptions stay
    /// on the target relay. A running target (--relay) gets all forwarded traffic from the
    /// forwarding relay over one connection: raise its max_streams and its per-source and
    /// per-connection stream rates (the run does so for the relays it starts).
    #[arg(long, value_name = "spawn|HOST:PORT")]
    via: Option<String>,
    /// The certificate pin of the --via relay (64 hex digits).
    #[arg(long, requires = "via")]
    via_pin: Option<String>,
}

/// Relay child processes (`run --spawn-relay --relays N`, `compare --cluster`).
#[derive(Args, Clone)]
struct FleetArgs {
    /// Run the spawned relays as this many `sealpost-relay serve` processes (their CPU is then
    /// measured); 1 on the disk store; default 2 on the cluster store.
    #[arg(long)]
    relays: Option<usize>,
    /// Nodes of a running Valkey cluster for the cluster store, HOST:PORT,...; without it a
    /// cluster is started with deploy/valkey/cluster.sh in a temporary directory and stopped
    /// at the end.
    #[arg(long, value_delimiter = ',')]
    cluster_nodes: Option<Vec<String>>,
    /// The sealpost-relay binary (default: next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// deploy/valkey/cluster.sh (default: the one of the source tree this was built from).
    #[arg(long)]
    cluster_script: Option<PathBuf>,
    /// The master key file for relays on a given cluster (every relay of a cluster needs the
    /// one it was first used with); default: a new key, right for a fresh cluster.
    #[arg(long)]
    master_key_file: Option<PathBuf>,
}

impl FleetArgs {
    fn options(
        &self,
        store: sealpost_loadtest::run::StoreKind,
    ) -> anyhow::Result<sealpost_loadtest::fleet::FleetOptions> {
        use sealpost_loadtest::run::StoreKind;
        Ok(sealpost_loadtest::fleet::FleetOptions {
            store,
            relays: self.relays.unwrap_or(match store {
                StoreKind::Cluster => 2,
                _ => 1,
            }),
            cluster_nodes: self.cluster_nodes.clone(),
            relay_bin: sealpost_loadtest::child::relay_bin(self.relay_bin.clone())?,
            cluster_script: self
                .cluster_script
                .clone()
                .unwrap_or_else(sealpost_loadtest::fleet::default_cluster_script),
            master_key_file: self.master_key_file.clone(),
        })
    }
}

#[derive(Args)]
struct ChaosArgs {
    /// Store of the relays: disk (one relay, restarted on its data directory) or cluster
    /// (--relays relay processes on a Valkey cluster).
    #[arg(long, default_value = "disk")]
    store: sealpost_loadtest::run::StoreKind,
    /// What to kill, comma-separated: relays, primaries (Valkey primaries; cluster store
    /// only). Default: relays on the disk store, relays,primaries on the cluster store.
    #[arg(long, value_delimiter = ',')]
    kill: Option<Vec<sealpost_loadtest::chaos::KillKind>>,
    /// Kill cycles per kind to kill (in random order).
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Mean milliseconds from one cycle's end to the next kill (each lands at a random moment
    /// from half to one and a half times this).
    #[arg(long, default_value_t = 1500)]
    kill_every_ms: u64,
    /// Mailboxes under load (default 4 on the disk store, 12 on the cluster store, so that
    /// every primary holds some).
    #[arg(long)]
    mailboxes: Option<usize>,
    /// Envelope body size.
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Deposits in flight at once.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// The deploy/valkey/cluster.sh --dir of the cluster given with --cluster-nodes (its
    /// nodes' pidfiles): needed to kill its primaries.
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Write the report as JSON to this file (with one record per cycle and a per-second
    /// timeline).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page to this file: the cycles on a timeline
    /// (answers and deliveries per second, every kill, promotion and recovery marked), the
    /// per-cycle table and the verdict.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct BaselineArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with charts to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Rounds of baseline, memory, disk (and cluster).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Add a cluster-store column: --relays relay processes (default 2) on a Valkey cluster
    /// (--cluster-nodes, or one started for the comparison); the disk store then also runs as
    /// a relay process, so that both relays' CPU is measured alike.
    #[arg(long)]
    cluster: bool,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Write the comparison (medians, ratios, every run's report) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the comparison as a self-contained HTML page with charts to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

impl LoadArgs {
    fn options(&self, target: Target) -> anyhow::Result<RunOptions> {
        Ok(RunOptions {
            target,
            mailboxes: self.mailboxes,
            connections: self.connections,
            size: self.size,
            duration: secs("duration", self.duration)?,
            warmup: secs("warmup", self.warmup)?,
            rate: self.rate,
            depth: self.depth,
            window: self.window,
            drain_timeout: secs("drain-timeout", self.drain_timeout)?,
            progress: !self.quiet,
            store: sealpost_loadtest::run::StoreKind::Memory,
            backlog: false,
            e2e: self.e2e,
            live_delivered: None,
            via: None,
            label: String::new(),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALPOST_LOG")
                .unwrap_or_else(|_| "warn,fjall=error,lsm_tree=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run_cmd(a).await,
        Cmd::Baseline(a) => baseline_cmd(a).await,
        Cmd::Compare(a) => compare_cmd(a).await,
        Cmd::Speed(a) => speed_cmd(a),
        Cmd::Sweep(a) => sweep_cmd(a).await,
        Cmd::Report(a) => html_report_cmd(a),
        Cmd::Overhead(a) => overhead_cmd(a),
        Cmd::CtCheck { samples, json } => ct_cmd(samples, json),
        Cmd::Abuse(a) => abuse_cmd(*a).await,
        Cmd::Mailboxes {
            count,
            active,
            data_dir,
            relay_bin,
            json,
        } => many_cmd(count, active, data_dir, relay_bin, json).await,
        Cmd::Chaos(a) => chaos_cmd(a).await,
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
}

async fn run_cmd(a: RunArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::run::StoreKind;
    let processes = a.store == StoreKind::Cluster || a.fleet.relays.is_some();
    let target = match (a.spawn_relay, a.relay) {
        (true, _) if processes => Target::Processes(a.fleet.options(a.store)?),
        (true, _) => Target::Spawn,
        (false, addrs) if !addrs.is_empty() => {
            let pin = a.pin.as_deref().context("--relay needs --pin")?;
            let pin = sealpost_client::tls::parse_pin(pin)?;
            Target::Remote { addrs, pin }
        }
        (false, _) => anyhow::bail!("give --spawn-relay or --relay ADDR --pin PIN"),
    };
    let mut opts = a.load.options(target)?;
    opts.store = a.store;
    opts.backlog = a.backlog;
    opts.via = match (a.via.as_deref(), a.via_pin.as_deref()) {
        (None, _) => None,
        (Some("spawn"), None) => Some(Via::Spawn),
        (Some("spawn"), Some(_)) => {
            anyhow::bail!("--via spawn starts its own relay: drop --via-pin")
        }
        (Some(addr), Some(pin)) => Some(Via::Remote {
            addr: addr.to_owned(),
            pin: sealpost_client::tls::parse_pin(pin)?,
        }),
        (Some(_), None) => anyhow::bail!("--via HOST:PORT needs --via-pin PIN"),
    };
    report_cmd(opts, a.json, a.html).await
}

async fn baseline_cmd(a: BaselineArgs) -> anyhow::Result<ExitCode> {
    report_cmd(a.load.options(Target::Baseline)?, a.json, a.html).await
}

async fn report_cmd(
    opts: RunOptions,
    json: Option<PathBuf>,
    html: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut report = run(opts).await?;
    report.command = Some(command_line());
    report.print();
    if let Some(path) = json {
        write_json(&path, &report)?;
    }
    if let Some(path) = html {
        let name = report.config.relay.clone();
        write_html(
            &path,
            "sealpost-loadtest run",
            vec![(name, Saved::Run(Box::new(report.clone())))],
        )?;
    }
    // A run that lost or corrupted anything fails, so scripts notice.
    let clean = report.lost == 0 && report.corrupted == 0 && report.duplicated == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn compare_cmd(a: CompareArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::compare;
    let template = a.load.options(Target::Baseline)?;
    let cluster = if a.cluster {
        Some(compare::ClusterColumn {
            fleet: a
                .fleet
                .options(sealpost_loadtest::run::StoreKind::Cluster)?,
        })
    } else {
        None
    };
    println!("{}", compare_preamble(&template, a.repeat));
    println!(
        "{:<9} {:>5} {:>13} {:>8} {:>8} {:>8} {:>8} {:>14} {:>12} {:>13}",
        "kind",
        "round",
        "deliveries/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "lost/dup/corr",
        "relay s/100k",
        "valkey s/100k"
    );
    let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let mut r = compare::compare(template, a.repeat, cluster, |run| {
        let rep = &run.report;
        let l = &rep.latency_us;
        let u = rep.usage.as_ref();
        println!(
            "{:<9} {:>5} {:>13.0} {:>8.1} {:>8} {:>8} {:>8} {:>14} {:>12} {:>13}",
            run.kind,
            run.repeat,
            rep.deliveries_per_s,
            rep.bytes_per_s / 1e6,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            format!("{}/{}/{}", rep.lost, rep.duplicated, rep.corrupted),
            cpu(u.map(|u| u.relay_cpu_s_per_100k_deliveries)),
            cpu(u.and_then(|u| u.valkey_cpu_s_per_100k_deliveries)),
        );
    })
    .await?;
    println!();
    println!(
        "medians over {} rounds, [min–max] beside each; {} B envelopes:",
        r.repeats, r.size
    );
    println!(
        "{:<9} {:>24} {:>22} {:>22} {:>22} {:>14}",
        "kind", "deliveries/s", "p50 ms", "p99 ms", "p999 ms", "lost/dup/corr"
    );
    for (kind, m) in [
        ("baseline", Some(&r.baseline)),
        ("memory", Some(&r.memory)),
        ("disk", Some(&r.disk)),
        ("cluster", r.cluster.as_ref()),
    ] {
        let Some(m) = m else { continue };
        let [rate, p50, p99, p999, faults] = m.cells();
        println!("{kind:<9} {rate:>24} {p50:>22} {p99:>22} {p999:>22} {faults:>14}");
        if m.relay_cpu_s_per_100k.is_some() {
            println!(
                "{:<9} cpu s per 100k deliveries: relay {}  valkey {}",
                "",
                cpu(m.relay_cpu_s_per_100k),
                cpu(m.valkey_cpu_s_per_100k)
            );
        }
    }
    println!(
        "relay / baseline deliveries/s: memory {:.2}  disk {:.2}{}",
        r.ratios.memory,
        r.ratios.disk,
        r.ratios
            .cluster
            .map_or(String::new(), |c| format!("  cluster {c:.2}"))
    );
    if let Some(c) = &r.cluster_vs_disk {
        println!(
            "cluster / disk: deliveries/s {:.2}  relay CPU per delivery {}",
            c.deliveries_per_s,
            c.relay_cpu_per_delivery
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        );
    }
    r.command = Some(command_line());
    if let Some(path) = a.json {
        write_json(&path, &r)?;
    }
    if let Some(path) = a.html {
        write_html(
            &path,
            "sealpost-loadtest compare",
            vec![("compare".to_owned(), Saved::Compare(Box::new(r.clone())))],
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The command line as typed, for the reports (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn write_html(
    path: &std::path::Path,
    title: &str,
    reports: Vec<(String, Saved)>,
) -> anyhow::Result<sealpost_loadtest::html::Page> {
    let page = sealpost_loadtest::html::reports::page(title, &reports)?;
    std::fs::write(path, page.render()).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {} ({} charts)", path.display(), page.chart_count());
    Ok(page)
}

fn html_report_cmd(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for f in &a.files {
        let name = f.file_stem().map_or_else(
            || f.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        reports.push((name, Saved::read(f)?));
    }
    let page = write_html(&a.html, &a.title, reports)?;
    if let Some(dir) = a.svg_dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, svg) in page.svg_files() {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sweep_cmd(a: SweepArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::sweep::{SweepOptions, sweep};
    let mut template = a.load.options(Target::Spawn)?;
    template.store = a.store;
    println!(
        "sweep: relay ({} store) and baseline, open loop at {} of each one's closed-loop maximum; p99 target {} ms, stop over {} ms; {}",
        a.store.name(),
        a.steps
            .iter()
            .map(|f| format!("{:.0}%", f * 100.0))
            .collect::<Vec<_>>()
            .join(","),
        a.p99_ms,
        a.stop_p99_ms,
        match template.e2e {
            E2eMode::Hpke => "hpke sealing in the generator",
            E2eMode::Fast => "fast sealing in the generator (relay work unchanged)",
        }
    );
    println!(
        "{:<9} {:>6} {:>10} {:>11} {:>8} {:>8} {:>8} {:>7}",
        "target", "of max", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let mut r = sweep(
        SweepOptions {
            template,
            fractions: a.steps,
            p99_target_ms: a.p99_ms,
            stop_p99_ms: a.stop_p99_ms,
        },
        |kind, fraction, rep| {
            let l = &rep.latency_us;
            println!(
                "{:<9} {:>6} {:>10} {:>11.0} {:>8} {:>8} {:>8} {:>7}",
                kind,
                fraction.map_or("closed".to_owned(), |f| format!("{:.0}%", f * 100.0)),
                rep.config
                    .rate
                    .map_or("-".to_owned(), |r| format!("{r:.0}")),
                rep.deliveries_per_s,
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                rep.rejected + rep.lost + rep.duplicated + rep.corrupted
            );
        },
    )
    .await?;
    r.command = Some(command_line());
    for c in &r.curves {
        println!(
            "{}: closed-loop {:.0} deliveries/s; highest rate with p99 <= {} ms: {}; stopped: {}",
            c.kind,
            c.closed_loop_per_s,
            r.p99_target_ms,
            c.best_rate
                .map_or("none of the steps".to_owned(), |b| format!("{b:.0}/s")),
            c.stopped
        );
    }
    if let Some(path) = a.json {
        write_json(&path, &r)?;
    }
    if let Some(path) = a.html {
        write_html(
            &path,
            "sealpost-loadtest sweep",
            vec![("sweep".to_owned(), Saved::Sweep(Box::new(r.clone())))],
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What every run of a comparison shares, said once above the table: the sealing mode and
/// what its latency means.
fn compare_preamble(o: &RunOptions, repeats: usize) -> String {
    format!(
        "{repeats} rounds of baseline, memory, disk (and cluster with --cluster), interleaved; {} mailboxes, {} connections, {} s each; end-to-end sealing in the generator: {}; {}",
        o.mailboxes,
        o.connections,
        o.duration.as_secs_f64(),
        match o.e2e {
            E2eMode::Hpke => "hpke",
            E2eMode::Fast => "fast (relay work unchanged)",
        },
        match o.rate {
            Some(r) => format!("open loop at {r:.0} envelopes/s"),
            None => format!(
                "closed loop at depth {}: latency is mostly queueing at that depth",
                o.depth
            ),
        }
    )
}

fn speed_cmd(a: SpeedArgs) -> anyhow::Result<ExitCode> {
    if a.batch == 0 || a.sizes.is_empty() || a.seconds <= 0.0 {
        anyhow::bail!("--batch, --sizes and --seconds must be positive");
    }
    // --backends, else SEALPOST_BACKEND (one backend), else every native backend of ours.
    let engines = if !a.backends.is_empty() {
        a.backends
            .iter()
            .map(|b| Engine::new(*b))
            .collect::<Result<Vec<_>, _>>()?
    } else if std::env::var(sealpost_core::engine::BACKEND_ENV).is_ok_and(|v| !v.trim().is_empty())
    {
        vec![sealpost_loadtest::engine_from_env()?]
    } else {
        speed::default_engines()
    };
    println!(
        "backends on this machine: {}; measuring: {}",
        Backend::supported()
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        engines
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let opts = SpeedOptions {
        sizes: a.sizes,
        batch: a.batch,
        seconds: a.seconds,
        ops: a.ops,
        suites: a.suites,
        engines,
    };
    println!(
        "ratio: ours / the faster of ring and aws-lc-rs; c/B: core cycles per byte (ours, ring); c/env: ours per envelope; floor: fraction of the kernels-alone cost reached"
    );
    speed::print_header();
    let mut report = speed::run(&opts, speed::print_row);
    report.command = Some(command_line());
    if let Some(c) = report.core_cycles_per_tsc_tick {
        println!("core cycles per TSC tick: {c:.3}");
    }
    for k in &report.kernels {
        let f = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.3}"));
        println!(
            "kernels alone, {}: ChaCha20 {} c/B, Poly1305 {} c/B, key block {} c/lane, tag {} c/lane",
            k.backend,
            f(k.chacha_core_cycles_per_byte),
            f(k.poly_core_cycles_per_byte),
            f(k.key_core_cycles_per_lane),
            f(k.finish_core_cycles_per_lane)
        );
    }
    if let Some(path) = a.json {
        write_json(&path, &report)?;
    }
    if let Some(path) = a.html {
        write_html(
            &path,
            "sealpost-loadtest speed",
            vec![("speed".to_owned(), Saved::Speed(Box::new(report.clone())))],
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn overhead_cmd(a: OverheadArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::overhead::{self, OverheadOptions};
    let engines = if a.backends.is_empty() {
        overhead::default_engines()
    } else {
        a.backends
            .iter()
            .map(|b| Engine::new(*b))
            .collect::<Result<Vec<_>, _>>()?
    };
    if engines.is_empty() {
        anyhow::bail!(
            "this CPU runs no SIMD backend (supported: {}); name one with --backends",
            Backend::supported()
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let opts = OverheadOptions {
        op: a.op,
        size: a.size,
        batches: a.batch,
        engines,
        iterations: a.iterations,
        repeat: a.repeat,
        floor: !a.no_floor,
        target: a.target,
        ..OverheadOptions::default()
    };
    println!(
        "overhead: {} {} B, batches {}, backends {}, {} measurements per cell{}",
        format!("{:?}", opts.op).to_lowercase(),
        opts.size,
        opts.batches
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
        opts.engines
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join(","),
        opts.repeat,
        if opts.floor {
            "; measuring the core clock and the kernel floor first"
        } else {
            ""
        }
    );
    let report = overhead::run(&opts, overhead::print_sample)?;
    overhead::print_summary(&report);
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ct_cmd(samples: usize, json: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::ctcheck;
    if samples < 1000 {
        anyhow::bail!("--samples must be at least 1000 for the t-test to mean anything");
    }
    let results = ctcheck::run(samples);
    if results.is_empty() {
        anyhow::bail!("no time-stamp counter on this CPU: ct-check needs x86_64");
    }
    println!(
        "{:<9} {:<7} {:>9} {:>8}  verdict (|t| < {})",
        "backend",
        "op",
        "samples",
        "t",
        ctcheck::THRESHOLD
    );
    for r in &results {
        let verdict = if r.pass {
            "no leak detected"
        } else {
            "LEAK: timings tell the classes apart"
        };
        println!(
            "{:<9} {:<7} {:>9} {:>8.2}  {verdict}",
            r.backend, r.op, r.samples, r.t
        );
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if results.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn chaos_cmd(a: ChaosArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::chaos::{self, KillKind};
    let fleet = a.fleet.options(a.store)?;
    let mut opts = chaos::ChaosOptions::new(a.store, fleet.relay_bin.clone());
    opts.fleet = fleet;
    opts.cluster_dir = a.cluster_dir;
    if let Some(kinds) = a.kill {
        let mut kinds: Vec<KillKind> = kinds;
        kinds.dedup();
        opts.kinds = kinds;
    }
    opts.cycles = a.cycles;
    opts.kill_every = Duration::from_millis(a.kill_every_ms);
    if let Some(m) = a.mailboxes {
        opts.mailboxes = m;
    }
    opts.size = a.size;
    opts.depositors = a.depth;
    let mut r = chaos::run(opts).await?;
    r.command = Some(command_line());
    if let Some(path) = a.json {
        write_json(&path, &r)?;
    }
    if let Some(path) = a.html {
        write_html(
            &path,
            "sealpost-loadtest chaos",
            vec![("chaos".to_owned(), Saved::Chaos(Box::new(r.clone())))],
        )?;
    }
    // After every progress line (the run has returned): the table is not interleaved.
    print!("{}", r.text());
    Ok(if r.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn many_cmd(
    count: u64,
    active: u64,
    data_dir: Option<PathBuf>,
    relay_bin: Option<PathBuf>,
    json: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = data_dir.unwrap_or_else(|| tmp.path().to_owned());
    if dir.join("store").exists() {
        anyhow::bail!(
            "{} already holds a store; give an empty --data-dir",
            dir.display()
        );
    }
    let r = sealpost_loadtest::many::run(
        sealpost_loadtest::child::relay_bin(relay_bin)?,
        dir,
        count,
        active.min(count),
    )
    .await?;
    println!(
        "{} mailboxes ({} with an envelope): created in {:.1} s, data directory {:.1} MiB",
        r.mailboxes,
        r.active,
        r.create_s,
        r.data_dir_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "relay restart to ready {:.2} s; resident {:.1} MiB vs {:.1} MiB empty: {:.0} bytes per mailbox",
        r.restart_to_ready_s,
        r.rss_bytes as f64 / (1024.0 * 1024.0),
        r.rss_empty_bytes as f64 / (1024.0 * 1024.0),
        r.rss_bytes_per_mailbox
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn abuse_cmd(a: AbuseArgs) -> anyhow::Result<ExitCode> {
    use sealpost_loadtest::abuse::{self, AbuseOptions, RelaySource};
    let relay = match a.target {
        Some(addr) => RelaySource::External {
            addr,
            pin: sealpost_client::tls::parse_pin(
                a.pin.as_deref().context("--target needs --pin")?,
            )?,
            admin: a.admin,
        },
        None => RelaySource::Spawn {
            bin: sealpost_loadtest::child::relay_bin(a.relay_bin)?,
            store: a.store,
            args: a.relay_args,
        },
    };
    let ms = Duration::from_millis;
    let opts = AbuseOptions {
        hostile: a.hostile,
        sources: a.sources,
        attacks: a.attacks,
        rate: a.rate,
        size: a.size,
        mailboxes: a.mailboxes,
        connections: a.connections,
        phase: secs("phase-secs", a.phase_secs)?,
        warmup: secs("warmup-secs", a.warmup_secs)?,
        ramp: secs("ramp-secs", a.ramp_secs)?,
        recovery: secs("recovery-secs", a.recovery_secs)?,
        memory_budget_mib: a.memory_budget_mib,
        abort_rss_mib: a.abort_rss_mib,
        p99_ratio_target: a.p99_ratio,
        attack_threads: a.attack_threads,
        split_cpus: !a.share_cpus,
        max_streams_per_conn: a.max_streams_per_conn,
        slow_pause: ms(a.slow_pause_ms),
        trickle_bytes: a.trickle_bytes,
        trickle_interval: ms(a.trickle_interval_ms),
        flood_size: a.flood_size,
        attack_mailboxes: a.attack_mailboxes,
        progress: !a.quiet,
        ..AbuseOptions::new(relay)
    };
    // On Ctrl-C the run is dropped, which kills the relay child.
    let report = tokio::select! {
        r = abuse::run(opts) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    report.print();
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.verdict.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
