//! `abuse`: bounded memory under attack, measured.
//!
//! The relay runs as a child process (`sealpost-relay serve`, memory store by default) so that
//! its resident memory can be read from `/proc/PID/status` every 100 ms. A well-behaved client
//! ([`crate::run`], open loop, verified deliveries) first runs alone (the baseline phase), then
//! again while hostile connections from several loopback source addresses (127.0.0.2, .3, …)
//! attack the relay (the attack phase). The hostile connections share one UDP endpoint per
//! source address and are divided among these attacks:
//!
//! - `half-open`: as many streams as the relay grants, each holding a partial frame header;
//! - `slowloris`: small DEPOSIT frames sent one byte at a time with long pauses;
//! - `trickle`: maximum-size frames announced and their payload sent in tiny chunks (on half of
//!   the streams as the first frame, on the other half after a complete first frame);
//! - `churn`: SUBSCRIBE with a valid proof, then unsubscribe (finish or reset), in a loop;
//! - `badtag-flood`: pipelined deposits with invalid tags, to real mailboxes and unknown ids.
//!
//! Every hostile stream starts again when the relay ends it, and every hostile connection
//! reconnects with exponential backoff when refused or closed. The report compares the two
//! phases' deposit-to-delivery p99, the relay's peak RSS with a budget, and counts what the
//! hostile connections achieved.

use crate::report::{Machine, Report};
use crate::run::{E2eMode, RunOptions, StoreKind, Target};
use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use quinn::{ClientConfig, Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use rand::Rng;
use sealpost_client::stream::FrameReader;
use sealpost_client::{Client, MailboxAccess};
use sealpost_core::engine::Engine;
use sealpost_core::frame::{self, FrameType};
use sealpost_core::keys::{EXPORTER_LABEL, EXPORTER_LEN, ProofPurpose};
use sealpost_core::msg::{Subscribe, decode_deposit_result, frame_with};
use sealpost_core::{AeadKey, Suite};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One kind of hostile behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attack {
    /// Streams holding a partial frame header.
    HalfOpen,
    /// Small frames one byte at a time with long pauses.
    Slowloris,
    /// Maximum-size frames whose payload arrives in tiny chunks.
    Trickle,
    /// SUBSCRIBE and unsubscribe in a loop.
    Churn,
    /// Pipelined deposits with invalid tags.
    BadtagFlood,
}

impl Attack {
    /// Every attack, in report order.
    pub const ALL: [Attack; 5] = [
        Attack::HalfOpen,
        Attack::Slowloris,
        Attack::Trickle,
        Attack::Churn,
        Attack::BadtagFlood,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::HalfOpen => "half-open",
            Attack::Slowloris => "slowloris",
            Attack::Trickle => "trickle",
            Attack::Churn => "churn",
            Attack::BadtagFlood => "badtag-flood",
        }
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown attack {s:?}: expected one of {}",
                    Attack::ALL.map(Attack::name).join(", ")
                )
            })
    }
}

impl Serialize for Attack {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The relay under attack.
#[derive(Debug, Clone)]
pub enum RelaySource {
    /// Start `bin serve` as a child on a free loopback port; its RSS is sampled.
    Spawn {
        /// The `sealpost-relay` binary.
        bin: PathBuf,
        /// Its store.
        store: StoreKind,
        /// Further `serve` options, each `KEY=VALUE` or `KEY` (passed as `--KEY=VALUE`).
        args: Vec<String>,
    },
    /// A relay already running on this machine: no RSS measurement, and its metrics only if
    /// `admin` is given.
    External {
        /// Its QUIC address (a loopback address: the attack stays on this machine).
        addr: SocketAddr,
        /// Its certificate pin.
        pin: [u8; 32],
        /// Its admin listener, for /metrics.
        admin: Option<SocketAddr>,
    },
}

/// Options of an abuse run.
#[derive(Debug, Clone)]
pub struct AbuseOptions {
    /// The relay.
    pub relay: RelaySource,
    /// Hostile connections, divided among `attacks`.
    pub hostile: usize,
    /// Loopback source addresses for them: 127.0.0.2 up to 127.0.0.(1 + sources).
    pub sources: u8,
    /// The attacks to run.
    pub attacks: Vec<Attack>,
    /// The well-behaved client's open-loop rate, envelopes per second.
    pub rate: f64,
    /// Its envelope body size.
    pub size: u32,
    /// Its mailboxes.
    pub mailboxes: usize,
    /// Its connections.
    pub connections: usize,
    /// Measured load per phase (after the warm-up).
    pub phase: Duration,
    /// Warm-up at the start of each phase, not measured.
    pub warmup: Duration,
    /// Time the attack runs before the attack phase's load starts (connections are opened
    /// over its first half).
    pub ramp: Duration,
    /// Time after the attack stops during which RSS is still sampled.
    pub recovery: Duration,
    /// Resident memory the relay must stay under, MiB.
    pub memory_budget_mib: u64,
    /// Kill the relay and stop the run if its resident memory exceeds this, MiB.
    pub abort_rss_mib: u64,
    /// Largest allowed ratio of the attack phase's p99 to the baseline's.
    pub p99_ratio_target: f64,
    /// Worker threads of the runtime the hostile connections run on.
    pub attack_threads: usize,
    /// Most streams one hostile connection holds at once (the relay's grant may be lower).
    pub max_streams_per_conn: usize,
    /// Pause between two bytes of a slowloris stream.
    pub slow_pause: Duration,
    /// Bytes a trickle stream sends at a time.
    pub trickle_bytes: usize,
    /// Pause between two trickle chunks.
    pub trickle_interval: Duration,
    /// Body size of the flood's envelopes.
    pub flood_size: u32,
    /// Mailboxes created for the churn and flood attacks.
    pub attack_mailboxes: usize,
    /// Print a progress line every second to standard error.
    pub progress: bool,
    /// Keep the attacker on a CPU of its own and the relay and the well-behaved client on
    /// the others, in both phases (see [`crate::cpus`]); off: all share every CPU.
    pub split_cpus: bool,
}

impl AbuseOptions {
    /// The defaults of `sealpost-loadtest abuse` for this relay.
    pub fn new(relay: RelaySource) -> Self {
        Self {
            relay,
            hostile: 1000,
            sources: 8,
            attacks: Attack::ALL.to_vec(),
            rate: 2000.0,
            size: 1024,
            mailboxes: 4,
            connections: 2,
            phase: Duration::from_secs(20),
            warmup: Duration::from_secs(2),
            ramp: Duration::from_secs(10),
            recovery: Duration::from_secs(3),
            memory_budget_mib: 512,
            abort_rss_mib: 4096,
            p99_ratio_target: 2.0,
            attack_threads: 1,
            max_streams_per_conn: 256,
            slow_pause: Duration::from_millis(1000),
            trickle_bytes: 1,
            trickle_interval: Duration::from_millis(1000),
            flood_size: 1024,
            attack_mailboxes: 64,
            progress: true,
            split_cpus: true,
        }
    }
}

const PHASES: [&str; 5] = ["setup", "baseline", "ramp", "attack", "recovery"];
const SETUP: usize = 0;
const BASELINE: usize = 1;
const RAMP: usize = 2;
const ATTACK: usize = 3;
const RECOVERY: usize = 4;

/// What one kind of hostile connection achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostileKindReport {
    /// The attack.
    pub attack: String,
    /// Connections assigned to it.
    pub connections: usize,
    /// Connection attempts (first tries and reconnections).
    pub attempts: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Attempts the relay refused (it closed the connection during the handshake).
    pub refused: u64,
    /// Attempts that failed otherwise (timeout, no answer).
    pub failed: u64,
    /// Established connections the relay closed or that timed out.
    pub closed_by_relay: u64,
    /// Established at the end of the attack phase.
    pub up_at_end: u64,
    /// Most established at once.
    pub up_peak: u64,
    /// Streams opened.
    pub streams_opened: u64,
    /// Streams the relay ended (ERROR, finish, STOP_SENDING or reset) while the connection
    /// lived.
    pub streams_ended_by_relay: u64,
    /// ERROR frames received.
    pub error_frames: u64,
    /// Bytes written on streams.
    pub bytes_sent: u64,
    /// Whole requests sent: deposits (flood, slowloris, trickle) or SUBSCRIBEs (churn).
    pub requests: u64,
    /// SUBSCRIBEs answered with SUBSCRIBED (churn).
    pub subscribed: u64,
    /// Deposit statuses received, by name (flood).
    pub deposit_statuses: BTreeMap<String, u64>,
}

#[derive(Default)]
struct KindStats {
    attempts: AtomicU64,
    established: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    closed_by_relay: AtomicU64,
    up: AtomicU64,
    up_peak: AtomicU64,
    streams_opened: AtomicU64,
    streams_ended_by_relay: AtomicU64,
    error_frames: AtomicU64,
    bytes_sent: AtomicU64,
    requests: AtomicU64,
    subscribed: AtomicU64,
    statuses: Mutex<BTreeMap<&'static str, u64>>,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl KindStats {
    fn report(&self, attack: Attack, connections: usize) -> HostileKindReport {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HostileKindReport {
            attack: attack.name().to_owned(),
            connections,
            attempts: g(&self.attempts),
            established: g(&self.established),
            refused: g(&self.refused),
            failed: g(&self.failed),
            closed_by_relay: g(&self.closed_by_relay),
            up_at_end: g(&self.up),
            up_peak: g(&self.up_peak),
            streams_opened: g(&self.streams_opened),
            streams_ended_by_relay: g(&self.streams_ended_by_relay),
            error_frames: g(&self.error_frames),
            bytes_sent: g(&self.bytes_sent),
            requests: g(&self.requests),
            subscribed: g(&self.subscribed),
            deposit_statuses: self
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }
}

/// Counters of every attack kind.
struct AttackStats {
    kinds: Vec<(Attack, usize, KindStats)>,
}

impl AttackStats {
    fn of(&self, a: Attack) -> &KindStats {
        &self
            .kinds
            .iter()
            .find(|k| k.0 == a)
            .expect("stats exist for every attack run")
            .2
    }

    fn up(&self) -> u64 {
        self.kinds
            .iter()
            .map(|k| k.2.up.load(Ordering::Relaxed))
            .sum()
    }

    fn report(&self) -> Vec<HostileKindReport> {
        self.kinds.iter().map(|k| k.2.report(k.0, k.1)).collect()
    }
}

/// One sample of the relay's resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// The phase it was taken in.
    pub phase: &'static str,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
}

/// The relay's resident memory over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssReport {
    /// The budget, bytes.
    pub budget_bytes: u64,
    /// Once set up, before the baseline phase.
    pub idle_bytes: Option<u64>,
    /// Highest sample in the baseline phase.
    pub peak_baseline_bytes: Option<u64>,
    /// Highest sample while the attack ran (ramp and attack phases).
    pub peak_attack_bytes: Option<u64>,
    /// Highest sample of the whole run.
    pub peak_bytes: Option<u64>,
    /// The last sample, after the recovery time.
    pub after_recovery_bytes: Option<u64>,
    /// VmHWM (the kernel's high-water mark of the resident set) at the end.
    pub vm_hwm_bytes: Option<u64>,
}

/// Deposit-to-delivery latency in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One phase of the well-behaved client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    /// Its latency, if the phase completed.
    pub latency_ms: Option<LatencyMs>,
    /// The full load report, if the phase completed.
    pub run: Option<Report>,
    /// Why it did not complete.
    pub error: Option<String>,
}

impl PhaseReport {
    fn p99_ms(&self) -> Option<f64> {
        self.latency_ms.as_ref().map(|l| l.p99)
    }

    /// Everything deposited was acknowledged and delivered once, intact.
    fn complete(&self) -> bool {
        self.run.as_ref().is_some_and(|r| {
            r.deposited > 0
                && r.acked == r.deposited
                && r.delivered == r.acked
                && r.lost == 0
                && r.corrupted == 0
                && r.duplicated == 0
                && r.rejected == 0
        })
    }
}

/// The relay's metrics at three moments (counters and gauges; histograms left out).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsReport {
    /// Before the baseline phase.
    pub start: Option<BTreeMap<String, f64>>,
    /// After the baseline phase.
    pub after_baseline: Option<BTreeMap<String, f64>>,
    /// At the end of the attack phase, before the attack stopped.
    pub after_attack: Option<BTreeMap<String, f64>>,
}

/// The targets and whether they were met.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Peak RSS ≤ budget (`None`: not measured, external relay).
    pub memory_within_budget: Option<bool>,
    /// Attack p99 ≤ target × baseline p99 (`None`: a phase did not complete).
    pub p99_within_target: Option<bool>,
    /// The well-behaved client's deposits were all acknowledged and delivered in both phases.
    pub deliveries_complete: bool,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// All of the above held.
    pub pass: bool,
}

/// The configuration of a run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseConfig {
    /// `spawned (memory store)` or the external relay's address.
    pub relay: String,
    /// Which CPUs the attacker and the rest ran on.
    pub cpus: String,
    /// Options passed to the spawned relay.
    pub relay_args: Vec<String>,
    /// Hostile connections.
    pub hostile: usize,
    /// Source addresses.
    pub sources: Vec<String>,
    /// Attacks run.
    pub attacks: Vec<Attack>,
    /// Well-behaved rate, envelopes/s.
    pub rate: f64,
    /// Well-behaved body size.
    pub size: u32,
    /// Well-behaved mailboxes.
    pub mailboxes: usize,
    /// Well-behaved connections.
    pub connections: usize,
    /// Seconds of measured load per phase.
    pub phase_s: f64,
    /// Seconds of warm-up per phase.
    pub warmup_s: f64,
    /// Seconds the attack ran before the attack phase.
    pub ramp_s: f64,
    /// RSS budget, MiB.
    pub memory_budget_mib: u64,
    /// RSS abort limit, MiB.
    pub abort_rss_mib: u64,
    /// p99 ratio target.
    pub p99_ratio_target: f64,
    /// Attacker runtime threads.
    pub attack_threads: usize,
    /// Stream cap per hostile connection.
    pub max_streams_per_conn: usize,
    /// The relay's frame limit (from INFO): what trickle announces.
    pub relay_max_frame: u32,
    /// Slowloris pause between bytes, ms.
    pub slow_pause_ms: u64,
    /// Trickle chunk, bytes.
    pub trickle_bytes: usize,
    /// Trickle pause between chunks, ms.
    pub trickle_interval_ms: u64,
    /// Flood body size.
    pub flood_size: u32,
}

/// Everything an abuse run measured.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    /// The configuration.
    pub config: AbuseConfig,
    /// Where it ran.
    pub machine: Machine,
    /// The well-behaved client alone.
    pub baseline: PhaseReport,
    /// The well-behaved client under attack.
    pub attack: PhaseReport,
    /// attack p99 / baseline p99.
    pub p99_ratio: Option<f64>,
    /// The relay's resident memory.
    pub rss: RssReport,
    /// Per attack kind.
    pub hostile: Vec<HostileKindReport>,
    /// The relay's metrics.
    pub metrics: MetricsReport,
    /// RSS every 100 ms.
    pub rss_timeline: Vec<RssSample>,
    /// Targets met or not.
    pub verdict: Verdict,
}

/// Reads a `kB` field (VmRSS, VmHWM…) of `/proc/PID/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb * 1024)
}

/// The spawned relay; killed when dropped.
struct RelayChild {
    child: Arc<Mutex<Child>>,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_port(tcp: bool) -> anyhow::Result<u16> {
    Ok(if tcp {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// `KEY=VALUE` → `--KEY=VALUE`; `KEY` → `--KEY`; anything already starting with `-` as is.
fn relay_flag(arg: &str) -> String {
    if arg.starts_with('-') {
        arg.to_owned()
    } else {
        format!("--{arg}")
    }
}

fn spawn_relay(
    bin: &std::path::Path,
    store: StoreKind,
    args: &[String],
) -> anyhow::Result<(RelayChild, SocketAddr, [u8; 32], SocketAddr)> {
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port(false)?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port(true)?).parse()?;
    let log = dir.path().join("relay.log");
    let log_file = std::fs::File::create(&log).context("creating the relay's log file")?;
    let mut argv: Vec<OsString> = vec![
        "--store".into(),
        match store {
            StoreKind::Memory => "memory",
            StoreKind::Disk => "disk",
            StoreKind::Cluster => anyhow::bail!(
                "abuse starts its relay on the memory or disk store; for the cluster store start the relays yourself and pass --target"
            ),
        }
        .into(),
        "--listen".into(),
        addr.to_string().into(),
        "--admin".into(),
        admin.to_string().into(),
        "--data-dir".into(),
        dir.path().into(),
    ];
    argv.extend(args.iter().map(|a| OsString::from(relay_flag(a))));
    let p = crate::child::start_serve(bin, &argv, Stdio::from(log_file))?;
    let pid = p.child.id();
    Ok((
        RelayChild {
            child: Arc::new(Mutex::new(p.child)),
            pid,
            log,
            _dir: dir,
        },
        addr,
        p.pin,
        admin,
    ))
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Samples the relay's RSS every 100 ms on a thread of its own (so a busy runtime cannot
/// delay it), and kills the relay if it exceeds the abort limit or notices if it exits.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<SamplerShared>,
}

#[derive(Default)]
struct SamplerShared {
    samples: Mutex<Vec<RssSample>>,
    now: AtomicU64,
    peak: AtomicU64,
    aborted: Mutex<Option<String>>,
}

impl Sampler {
    fn start(
        relay: &RelayChild,
        phase: Arc<AtomicUsize>,
        t0: Instant,
        abort_bytes: u64,
        abort_tx: watch::Sender<bool>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(SamplerShared::default());
        let (child, pid, log) = (relay.child.clone(), relay.pid, relay.log.clone());
        let (st, sh) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let abort = |why: String| {
                *sh.aborted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                let _ = abort_tx.send(true);
            };
            while !st.load(Ordering::Relaxed) {
                let exited = child
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_wait()
                    .ok()
                    .flatten();
                if let Some(status) = exited {
                    abort(format!(
                        "the relay exited ({status}); its log ends:\n{}",
                        log_tail(&log, 10)
                    ));
                    return;
                }
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    sh.now.store(rss, Ordering::Relaxed);
                    sh.peak.fetch_max(rss, Ordering::Relaxed);
                    sh.samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(RssSample {
                            t_ms: t0.elapsed().as_millis() as u64,
                            phase: PHASES[phase.load(Ordering::Relaxed).min(PHASES.len() - 1)],
                            rss_bytes: rss,
                        });
                    if rss > abort_bytes {
                        let _ = child.lock().unwrap_or_else(|p| p.into_inner()).kill();
                        abort(format!(
                            "the relay's RSS reached {} MiB, over the abort limit of {} MiB: killed it",
                            rss >> 20,
                            abort_bytes >> 20
                        ));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            thread: Some(thread),
            shared,
        }
    }

    fn finish(mut self) -> (Vec<RssSample>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = std::mem::take(
            &mut *self
                .shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let aborted = self
            .shared
            .aborted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (samples, aborted)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// GET /metrics from the admin listener; counters and gauges by `name{labels}`.
async fn scrape(admin: SocketAddr) -> Option<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(parse_metrics(body))
}

/// Counters and gauges of a Prometheus text page; histogram series are left out.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            let name = k.split('{').next().unwrap_or(k);
            let histogram = name.ends_with("_bucket")
                || name.ends_with("_sum")
                || name.ends_with("_count")
                || k.contains("quantile=");
            if histogram {
                return None;
            }
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Metrics shown in the summary: refusals, limits, connections and deposit statuses.
fn interesting(key: &str) -> bool {
    const WORDS: [&str; 10] = [
        "refused",
        "rate_limited",
        "limit",
        "retry",
        "busy",
        "timeout",
        "timed_out",
        "evict",
        "reject",
        "sealpost_connections",
    ];
    WORDS.iter().any(|w| key.contains(w)) || key.starts_with("sealpost_deposits_total")
}

/// A mailbox the attacker owns (created through the client library), for churn and flood.
#[derive(Clone)]
struct OwnBox {
    access: MailboxAccess,
}

/// What every hostile task shares.
struct AttackCtx {
    addr: SocketAddr,
    stats: AttackStats,
    stopping: AtomicBool,
    boxes: Vec<OwnBox>,
    /// Deposit frames with invalid tags, to own mailboxes and to unknown ids.
    flood_frames: Vec<Bytes>,
    /// A complete small DEPOSIT frame (smallest body, invalid tag).
    small_frame: Bytes,
    /// A DEPOSIT frame of the relay's maximum length.
    max_frame: Bytes,
    max_streams: usize,
    slow_pause: Duration,
    trickle_bytes: usize,
    trickle_interval: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frame limit for what the attacker reads back (ERRORs, results).
const READ_LIMIT: u32 = 1 << 20;

/// `d` give or take a quarter, so that thousands of tasks do not move in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// A DEPOSIT frame whose envelope has a `body` of zeros and a tag under a random key (so it
/// never verifies).
fn bad_deposit(deposit_id: &sealpost_core::DepositId, body: u32) -> anyhow::Result<Bytes> {
    let key = AeadKey::generate(Suite::ChaCha20Poly1305).context("random key")?;
    let nonce: [u8; 12] = sealpost_core::random::array().context("random nonce")?;
    let env = sealpost_core::envelope::build(
        &Engine::ring(),
        &key,
        deposit_id,
        &nonce,
        &vec![0u8; body as usize],
    );
    let mut f = BytesMut::with_capacity(frame::HEADER_LEN + env.len());
    f.put_slice(&frame::header(FrameType::Deposit, env.len()));
    f.put_slice(&env);
    Ok(f.freeze())
}

/// A DEPOSIT frame whose length prefix is exactly `max_frame`: an envelope header claiming the
/// largest body, then zeros.
fn max_deposit(max_frame: u32, body: u32) -> Bytes {
    let mut f = BytesMut::with_capacity(frame::LEN_PREFIX + max_frame as usize);
    f.put_u32(max_frame);
    f.put_u8(FrameType::Deposit as u8);
    f.put_u8(sealpost_core::envelope::VERSION);
    f.put_u8(Suite::ChaCha20Poly1305 as u8);
    f.put_u16(0);
    f.put_u32(body);
    f.resize(frame::LEN_PREFIX + max_frame as usize, 0);
    f.freeze()
}

fn hostile_client_config(pin: [u8; 32]) -> anyhow::Result<ClientConfig> {
    let crypto = sealpost_client::tls::client_crypto(&sealpost_client::tls::Trust::Pin(pin))?;
    let mut cfg = ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    // Hold connections open even when a stream sends nothing.
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(0u32.into());
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// The hostile connections on a runtime of their own.
struct Attacker {
    rt: Option<tokio::runtime::Runtime>,
    endpoints: Vec<Endpoint>,
    ctx: Arc<AttackCtx>,
}

impl Attacker {
    fn start(
        opts: &AbuseOptions,
        ctx: Arc<AttackCtx>,
        pin: [u8; 32],
        cpus: Option<nix::sched::CpuSet>,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.attack_threads.max(1))
            .thread_name("sealpost-abuse")
            .on_thread_start(move || {
                if let Some(c) = &cpus {
                    // Best effort: without it the run still happens, on shared CPUs.
                    let _ = crate::cpus::pin_this_thread(c);
                }
            })
            .enable_all()
            .build()
            .context("starting the attacker's runtime")?;
        let endpoints = {
            let _in_rt = rt.enter();
            (0..opts.sources)
                .map(|i| {
                    let ip = Ipv4Addr::new(127, 0, 0, 2 + i);
                    Endpoint::client(SocketAddr::new(IpAddr::V4(ip), 0)).with_context(|| {
                        format!(
                            "binding a UDP socket to {ip} (Linux routes all of 127/8 to loopback)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let cfg = hostile_client_config(pin)?;
        let kinds = opts.attacks.len();
        // Connections are opened over the first half of the ramp.
        let spread = opts.ramp / 2;
        for i in 0..opts.hostile {
            let kind = opts.attacks[i % kinds];
            // Each kind's connections rotate over every source address.
            let ep = endpoints[(i / kinds) % endpoints.len()].clone();
            let delay = spread.mul_f64(i as f64 / opts.hostile as f64);
            rt.spawn(hostile_connection(
                ep,
                cfg.clone(),
                ctx.clone(),
                kind,
                i,
                delay,
            ));
        }
        Ok(Self {
            rt: Some(rt),
            endpoints,
            ctx,
        })
    }

    /// Closes every hostile connection and stops the runtime.
    async fn stop(mut self) {
        self.ctx.stopping.store(true, Ordering::Relaxed);
        for ep in &self.endpoints {
            ep.close(0u32.into(), b"done");
        }
        // Let the CONNECTION_CLOSE frames leave before the runtime goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One hostile connection: connect (with backoff when refused), attack until the connection
/// ends, reconnect.
async fn hostile_connection(
    ep: Endpoint,
    cfg: ClientConfig,
    ctx: Arc<AttackCtx>,
    kind: Attack,
    index: usize,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let st = ctx.stats.of(kind);
    let mut backoff = BACKOFF_MIN;
    while !ctx.stopping.load(Ordering::Relaxed) {
        inc(&st.attempts);
        let connecting = match ep.connect_with(cfg.clone(), ctx.addr, "localhost") {
            Ok(c) => c,
            Err(_) => {
                // The endpoint is closing (the run is ending) or cannot send.
                inc(&st.failed);
                tokio::time::sleep(jitter(backoff)).await;
                continue;
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => {
                inc(&st.established);
                let up = st.up.fetch_add(1, Ordering::Relaxed) + 1;
                st.up_peak.fetch_max(up, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                match kind {
                    Attack::Churn => churn(&conn, &ctx, index).await,
                    Attack::BadtagFlood => flood(&conn, &ctx, index).await,
                    _ => hold_streams(kind, &conn, &ctx).await,
                }
                st.up.fetch_sub(1, Ordering::Relaxed);
                if !ctx.stopping.load(Ordering::Relaxed)
                    && !matches!(conn.close_reason(), Some(ConnectionError::LocallyClosed))
                {
                    inc(&st.closed_by_relay);
                }
            }
            Ok(Err(
                ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_),
            )) => {
                inc(&st.refused);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Ok(Err(_)) | Err(_) => {
                inc(&st.failed);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
    }
}

/// Opens streams as long as the relay grants them (up to the cap), each running `kind`'s
/// attack; returns when the connection ends.
async fn hold_streams(kind: Attack, conn: &Connection, ctx: &Arc<AttackCtx>) {
    let st = ctx.stats.of(kind);
    let mut set = JoinSet::new();
    let mut n = 0u64;
    loop {
        while set.try_join_next().is_some() {}
        if set.len() >= ctx.max_streams {
            tokio::select! {
                _ = set.join_next() => continue,
                _ = conn.closed() => break,
            }
        }
        // Waits while the relay grants no more streams.
        let Ok((send, recv)) = conn.open_bi().await else {
            break;
        };
        inc(&st.streams_opened);
        n += 1;
        set.spawn(hostile_stream(
            kind,
            conn.clone(),
            send,
            recv,
            ctx.clone(),
            n,
        ));
    }
}

/// Writes `bytes`, counting them.
async fn put(send: &mut SendStream, st: &KindStats, bytes: &[u8]) -> Result<(), quinn::WriteError> {
    send.write_all(bytes).await?;
    st.bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Reads what the relay sends back until it ends the stream, counting ERROR frames.
async fn until_relay_ends(reader: &mut FrameReader, st: &KindStats) {
    while let Ok(Some(f)) = reader.next_frame().await {
        if f.ty == FrameType::Error {
            inc(&st.error_frames);
        }
    }
}

/// One stream of a half-open, slowloris or trickle attack; returns when the relay ends it.
async fn hostile_stream(
    kind: Attack,
    conn: Connection,
    mut send: SendStream,
    recv: RecvStream,
    ctx: Arc<AttackCtx>,
    n: u64,
) {
    let st = ctx.stats.of(kind);
    let mut reader = FrameReader::new(recv, READ_LIMIT);
    let attack = async {
        match kind {
            Attack::HalfOpen => {
                // 1 to 3 bytes of a 4-byte length prefix, then nothing. (A stream on which
                // nothing is sent does not exist for the relay: QUIC announces a stream with
                // its first data.)
                let k = 1 + (n % 3) as usize;
                put(&mut send, st, &ctx.small_frame[..k]).await?;
                std::future::pending::<()>().await;
            }
            Attack::Slowloris => loop {
                for b in ctx.small_frame.iter() {
                    put(&mut send, st, &[*b]).await?;
                    tokio::time::sleep(jitter(ctx.slow_pause)).await;
                }
                inc(&st.requests);
            },
            Attack::Trickle => {
                // Half the streams trickle their first frame; the other half open as deposit
                // streams with a complete small frame and trickle the next one.
                if n.is_multiple_of(2) {
                    put(&mut send, st, &ctx.small_frame).await?;
                    inc(&st.requests);
                }
                loop {
                    for chunk in ctx.max_frame.chunks(ctx.trickle_bytes) {
                        put(&mut send, st, chunk).await?;
                        tokio::time::sleep(jitter(ctx.trickle_interval)).await;
                    }
                    inc(&st.requests);
                }
            }
            Attack::Churn | Attack::BadtagFlood => {}
        }
        Ok::<(), quinn::WriteError>(())
    };
    tokio::select! {
        _ = attack => {}
        _ = until_relay_ends(&mut reader, st) => {}
    }
    if conn.close_reason().is_none() {
        inc(&st.streams_ended_by_relay);
    }
    let _ = send.reset(0u32.into());
    reader.stop();
}

/// The connection's TLS exporter value, which subscribe proofs are bound to.
fn exporter(conn: &Connection) -> Option<[u8; EXPORTER_LEN]> {
    let mut out = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

/// SUBSCRIBE with a valid proof, wait for the answer, unsubscribe (a clean finish or a
/// reset, alternately), and again, as fast as the relay answers.
async fn churn(conn: &Connection, ctx: &Arc<AttackCtx>, index: usize) {
    let st = ctx.stats.of(Attack::Churn);
    let Some(exp) = exporter(conn) else {
        return;
    };
    if ctx.boxes.is_empty() {
        return;
    }
    for round in 0usize.. {
        let mb = &ctx.boxes[(index + round) % ctx.boxes.len()].access;
        let req = Subscribe {
            recipient_id: mb.recipient_id,
            proof: mb
                .keys
                .auth
                .proof(ProofPurpose::Subscribe, &mb.recipient_id, &exp),
            window: 1024,
        };
        let Ok((mut send, recv)) = conn.open_bi().await else {
            return;
        };
        inc(&st.streams_opened);
        let mut reader = FrameReader::new(recv, READ_LIMIT);
        if put(
            &mut send,
            st,
            &frame_with(FrameType::Subscribe, |b| req.encode(b)),
        )
        .await
        .is_ok()
        {
            inc(&st.requests);
            match tokio::time::timeout(CONNECT_TIMEOUT, reader.next_frame()).await {
                Ok(Ok(Some(f))) if f.ty == FrameType::Subscribed => inc(&st.subscribed),
                Ok(Ok(Some(f))) if f.ty == FrameType::Error => inc(&st.error_frames),
                _ => {}
            }
        }
        if round.is_multiple_of(2) {
            let _ = send.finish();
        } else {
            let _ = send.reset(0u32.into());
        }
        reader.stop();
        if conn.close_reason().is_some() {
            return;
        }
    }
}

/// Pipelines deposits with invalid tags on one stream as fast as flow control allows, reading
/// the results; a new stream when the relay ends one.
async fn flood(conn: &Connection, ctx: &Arc<AttackCtx>, index: usize) {
    let st = ctx.stats.of(Attack::BadtagFlood);
    loop {
        let Ok((mut send, recv)) = conn.open_bi().await else {
            return;
        };
        inc(&st.streams_opened);
        let mut reader = FrameReader::new(recv, READ_LIMIT);
        let write = async {
            for k in index.. {
                let f = &ctx.flood_frames[k % ctx.flood_frames.len()];
                send.write_chunk(f.clone()).await?;
                st.bytes_sent.fetch_add(f.len() as u64, Ordering::Relaxed);
                inc(&st.requests);
            }
            Ok::<(), quinn::WriteError>(())
        };
        let read = async {
            while let Ok(Some(f)) = reader.next_frame().await {
                match f.ty {
                    FrameType::DepositResult => {
                        if let Ok(statuses) = decode_deposit_result(&f.payload) {
                            let mut m = st.statuses.lock().unwrap_or_else(|p| p.into_inner());
                            for s in statuses.statuses {
                                *m.entry(sealpost_relay::metrics::status_label(s))
                                    .or_default() += 1;
                            }
                        }
                    }
                    FrameType::Error => inc(&st.error_frames),
                    _ => {}
                }
            }
        };
        tokio::select! {
            _ = write => {}
            _ = read => {}
        }
        let _ = send.reset(0u32.into());
        reader.stop();
        if conn.close_reason().is_some() {
            return;
        }
        inc(&st.streams_ended_by_relay);
    }
}

/// One phase of the well-behaved client, cut short if the run aborts.
async fn well_behaved(
    opts: &AbuseOptions,
    addr: SocketAddr,
    pin: [u8; 32],
    live: Arc<AtomicU64>,
    abort: &mut watch::Receiver<bool>,
) -> PhaseReport {
    let ro = RunOptions {
        target: Target::Remote {
            addrs: vec![addr.to_string()],
            pin,
        },
        mailboxes: opts.mailboxes,
        connections: opts.connections,
        size: opts.size,
        duration: opts.phase,
        depth: 256,
        rate: Some(opts.rate),
        warmup: opts.warmup,
        window: 256,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: StoreKind::Memory,
        backlog: false,
        e2e: E2eMode::Fast,
        live_delivered: Some(live),
        via: None,
        label: String::new(),
    };
    let r = tokio::select! {
        r = crate::run::run(ro) => r.map_err(|e| format!("{e:#}")),
        _ = aborted(abort) => Err("the run was aborted".to_owned()),
    };
    match r {
        Ok(run) => {
            let ms = |us: u64| us as f64 / 1000.0;
            let l = &run.latency_us;
            PhaseReport {
                latency_ms: Some(LatencyMs {
                    p50: ms(l.p50),
                    p99: ms(l.p99),
                    p999: ms(l.p999),
                    max: ms(l.max),
                }),
                run: Some(run),
                error: None,
            }
        }
        Err(e) => PhaseReport {
            error: Some(e),
            ..PhaseReport::default()
        },
    }
}

/// Resolves once the run aborts; never if it cannot (no sampler, so no sender).
async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps `d` unless the run aborts first.
async fn wait_or_abort(d: Duration, abort: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = aborted(abort) => {}
    }
}

/// Once a second: phase, elapsed, deliveries, hostile connections up, relay RSS.
#[allow(clippy::too_many_arguments)]
async fn progress(
    t0: Instant,
    phase: Arc<AtomicUsize>,
    live: Arc<AtomicU64>,
    ctx: Arc<AttackCtx>,
    hostile: usize,
    rss: Option<Arc<SamplerShared>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let terminal = std::io::stderr().is_terminal();
    loop {
        tick.tick().await;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rss = rss.as_ref().map_or("RSS not measured".to_owned(), |s| {
            format!(
                "relay RSS {:.0} MiB (peak {:.0})",
                mib(s.now.load(Ordering::Relaxed)),
                mib(s.peak.load(Ordering::Relaxed))
            )
        });
        let line = format!(
            "{:>5.0} s  {:<8}  delivered {:>8}  hostile up {:>4}/{}  {}",
            t0.elapsed().as_secs_f64(),
            PHASES[phase.load(Ordering::Relaxed).min(PHASES.len() - 1)],
            live.load(Ordering::Relaxed),
            ctx.stats.up(),
            hostile,
            rss
        );
        if terminal {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

fn check(opts: &AbuseOptions) -> anyhow::Result<()> {
    if opts.attacks.is_empty() {
        bail!("--attacks names no attack");
    }
    if opts.sources == 0 || opts.sources > 250 {
        bail!("--sources must be between 1 and 250 (127.0.0.2 up to 127.0.0.251)");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of envelopes per second");
    }
    if opts.mailboxes == 0 || opts.connections == 0 {
        bail!("--mailboxes and --connections must be at least 1");
    }
    if opts.phase.is_zero() {
        bail!("--phase-secs must be positive");
    }
    if opts.trickle_bytes == 0 || opts.max_streams_per_conn == 0 {
        bail!("--trickle-bytes and --max-streams-per-conn must be at least 1");
    }
    if !(opts.p99_ratio_target.is_finite() && opts.p99_ratio_target > 0.0) {
        bail!("--p99-ratio must be positive");
    }
    if let RelaySource::External { addr, .. } = &opts.relay
        && !addr.ip().is_loopback()
    {
        bail!("--target must be a loopback address: the attack never leaves this machine");
    }
    Ok(())
}

/// Runs the scenario: baseline phase, ramp, attack phase, recovery; returns the report.
pub async fn run(opts: AbuseOptions) -> anyhow::Result<AbuseReport> {
    check(&opts)?;
    let t0 = Instant::now();
    let phase = Arc::new(AtomicUsize::new(SETUP));
    let (abort_tx, mut abort) = watch::channel(false);
    let (relay, addr, pin, admin, relay_label, relay_args) = match &opts.relay {
        RelaySource::Spawn { bin, store, args } => {
            let (child, addr, pin, admin) = spawn_relay(bin, *store, args)?;
            let label = format!("spawned ({} store)", store.name());
            let shown = args.iter().map(|a| relay_flag(a)).collect();
            (Some(child), addr, pin, Some(admin), label, shown)
        }
        RelaySource::External { addr, pin, admin } => {
            (None, *addr, *pin, *admin, addr.to_string(), Vec::new())
        }
    };
    // The attacker gets a CPU of its own in both phases (the baseline then runs on the same
    // CPUs as the attack phase).
    let placement = if opts.split_cpus {
        crate::cpus::Placement::split()?
    } else {
        None
    };
    let cpus_label = match &placement {
        Some(p) => {
            crate::cpus::pin_process(std::process::id(), &p.rest)
                .context("placing this process's threads")?;
            if let Some(r) = &relay {
                crate::cpus::pin_process(r.pid, &p.rest).context("placing the relay's threads")?;
            }
            p.describe()
        }
        None => "shared: attacker, relay and well-behaved client on every CPU".to_owned(),
    };
    let abort_bytes = opts.abort_rss_mib.saturating_mul(1 << 20);
    let sampler = relay
        .as_ref()
        .map(|r| Sampler::start(r, phase.clone(), t0, abort_bytes, abort_tx));

    // Set-up: the relay's limits, and the attacker's own mailboxes, made by a real client.
    let setup = Client::connect_pinned(&addr.to_string(), pin)
        .await
        .with_context(|| format!("connecting to the relay at {addr}"))?;
    let info = setup
        .info()
        .await
        .context("asking the relay for its limits")?;
    let sizes = info.limits.sizes.clone();
    for (what, s) in [("--size", opts.size), ("--flood-size", opts.flood_size)] {
        if !sizes.contains(s) {
            bail!(
                "{what} {s} is not a body size this relay allows; allowed: {:?}",
                sizes.as_slice()
            );
        }
    }
    let mut boxes = Vec::with_capacity(opts.attack_mailboxes);
    for _ in 0..opts.attack_mailboxes {
        // The relay limits how fast one address creates mailboxes; the set-up waits its turn.
        let mb = setup
            .create_patiently(Suite::ChaCha20Poly1305, Duration::from_secs(60))
            .await
            .context("creating the attacker's mailboxes")?;
        boxes.push(OwnBox {
            access: mb.access(),
        });
    }
    setup.close().await;
    let mut flood_frames = Vec::with_capacity(64);
    for k in 0..64 {
        let id = match boxes.get(k / 2 % boxes.len().max(1)) {
            Some(b) if k % 2 == 0 => b.access.deposit_id,
            _ => sealpost_core::random::array().context("random deposit id")?,
        };
        flood_frames.push(bad_deposit(&id, opts.flood_size)?);
    }
    let kinds: Vec<(Attack, usize, KindStats)> = opts
        .attacks
        .iter()
        .enumerate()
        .map(|(j, a)| {
            let n = opts.hostile / opts.attacks.len()
                + usize::from(j < opts.hostile % opts.attacks.len());
            (*a, n, KindStats::default())
        })
        .collect();
    let ctx = Arc::new(AttackCtx {
        addr,
        stats: AttackStats { kinds },
        stopping: AtomicBool::new(false),
        boxes,
        flood_frames,
        small_frame: bad_deposit(&[0x5a; 16], sizes.as_slice()[0])?,
        max_frame: max_deposit(info.limits.max_frame, sizes.max()),
        max_streams: opts.max_streams_per_conn,
        slow_pause: opts.slow_pause,
        trickle_bytes: opts.trickle_bytes,
        trickle_interval: opts.trickle_interval,
    });
    let live = Arc::new(AtomicU64::new(0));
    let ticker = opts.progress.then(|| {
        tokio::spawn(progress(
            t0,
            phase.clone(),
            live.clone(),
            ctx.clone(),
            opts.hostile,
            sampler.as_ref().map(|s| s.shared.clone()),
        ))
    });
    let mut metrics = MetricsReport::default();
    let scrape_now = async || match admin {
        Some(a) => scrape(a).await,
        None => None,
    };
    metrics.start = scrape_now().await;
    let rss_idle = relay
        .as_ref()
        .and_then(|r| proc_status_bytes(r.pid, "VmRSS"));

    phase.store(BASELINE, Ordering::Relaxed);
    let baseline = well_behaved(&opts, addr, pin, live.clone(), &mut abort).await;
    metrics.after_baseline = scrape_now().await;

    let (attack, hostile) = if *abort.borrow() {
        (
            PhaseReport {
                error: Some("not run: the run was aborted".into()),
                ..PhaseReport::default()
            },
            ctx.stats.report(),
        )
    } else {
        phase.store(RAMP, Ordering::Relaxed);
        let attacker = Attacker::start(&opts, ctx.clone(), pin, placement.map(|p| p.attacker))?;
        wait_or_abort(opts.ramp, &mut abort).await;
        phase.store(ATTACK, Ordering::Relaxed);
        let attack = well_behaved(&opts, addr, pin, live.clone(), &mut abort).await;
        metrics.after_attack = scrape_now().await;
        let hostile = ctx.stats.report();
        attacker.stop().await;
        phase.store(RECOVERY, Ordering::Relaxed);
        wait_or_abort(opts.recovery, &mut abort).await;
        (attack, hostile)
    };
    let vm_hwm = relay
        .as_ref()
        .and_then(|r| proc_status_bytes(r.pid, "VmHWM"));
    let (rss_timeline, aborted) = match sampler {
        Some(s) => s.finish(),
        None => (Vec::new(), None),
    };
    drop(relay);
    if let Some(t) = ticker {
        t.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }

    let peak = |phases: &[&str]| {
        rss_timeline
            .iter()
            .filter(|s| phases.is_empty() || phases.contains(&s.phase))
            .map(|s| s.rss_bytes)
            .max()
    };
    let budget_bytes = opts.memory_budget_mib.saturating_mul(1 << 20);
    let measured = matches!(opts.relay, RelaySource::Spawn { .. });
    let rss = RssReport {
        budget_bytes,
        idle_bytes: rss_idle,
        peak_baseline_bytes: peak(&["baseline"]),
        peak_attack_bytes: peak(&["ramp", "attack"]),
        peak_bytes: peak(&[]),
        after_recovery_bytes: rss_timeline.last().map(|s| s.rss_bytes),
        vm_hwm_bytes: vm_hwm,
    };
    let p99_ratio = match (baseline.p99_ms(), attack.p99_ms()) {
        (Some(b), Some(a)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let memory_within_budget = measured.then(|| {
        rss.peak_bytes.is_some_and(|p| p <= budget_bytes)
            && rss.vm_hwm_bytes.is_none_or(|h| h <= budget_bytes)
    });
    let p99_within_target = p99_ratio.map(|r| r <= opts.p99_ratio_target);
    let deliveries_complete = baseline.complete() && attack.complete();
    let pass = aborted.is_none()
        && memory_within_budget != Some(false)
        && p99_within_target == Some(true)
        && deliveries_complete;
    Ok(AbuseReport {
        config: AbuseConfig {
            relay: relay_label,
            cpus: cpus_label,
            relay_args,
            hostile: opts.hostile,
            sources: (0..opts.sources)
                .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i).to_string())
                .collect(),
            attacks: opts.attacks.clone(),
            rate: opts.rate,
            size: opts.size,
            mailboxes: opts.mailboxes,
            connections: opts.connections,
            phase_s: opts.phase.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            ramp_s: opts.ramp.as_secs_f64(),
            memory_budget_mib: opts.memory_budget_mib,
            abort_rss_mib: opts.abort_rss_mib,
            p99_ratio_target: opts.p99_ratio_target,
            attack_threads: opts.attack_threads,
            max_streams_per_conn: opts.max_streams_per_conn,
            relay_max_frame: info.limits.max_frame,
            slow_pause_ms: opts.slow_pause.as_millis() as u64,
            trickle_bytes: opts.trickle_bytes,
            trickle_interval_ms: opts.trickle_interval.as_millis() as u64,
            flood_size: opts.flood_size,
        },
        machine: Machine::this(),
        baseline,
        attack,
        p99_ratio,
        rss,
        hostile,
        metrics,
        rss_timeline,
        verdict: Verdict {
            memory_within_budget,
            p99_within_target,
            deliveries_complete,
            aborted,
            pass,
        },
    })
}

impl AbuseReport {
    /// A summary for a person, ending with the PASS or FAIL line.
    pub fn print(&self) {
        let c = &self.config;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "relay {}{}  well-behaved: {} envelopes/s of {} B into {} mailboxes over {} connections, {} s per phase (+{} s warm-up)",
            c.relay,
            if c.relay_args.is_empty() {
                String::new()
            } else {
                format!(" [{}]", c.relay_args.join(" "))
            },
            c.rate,
            c.size,
            c.mailboxes,
            c.connections,
            c.phase_s,
            c.warmup_s
        );
        println!("cpus: {}", c.cpus);
        println!(
            "attack: {} hostile connections from {} source addresses ({} .. {}), {}",
            c.hostile,
            c.sources.len(),
            c.sources.first().map_or("-", String::as_str),
            c.sources.last().map_or("-", String::as_str),
            c.attacks
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, p) in [("baseline", &self.baseline), ("attack", &self.attack)] {
            match (&p.latency_ms, &p.run, &p.error) {
                (Some(l), Some(r), _) => println!(
                    "{name:<9} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} deposited, {} delivered, {} lost, {} rejected)",
                    l.p50, l.p99, l.p999, l.max, r.deposited, r.delivered, r.lost, r.rejected
                ),
                (_, _, Some(e)) => println!("{name:<9} did not complete: {e}"),
                _ => println!("{name:<9} did not complete"),
            }
        }
        match self.p99_ratio {
            Some(r) => println!(
                "p99 attack / baseline: {r:.2} (target <= {:.1})",
                c.p99_ratio_target
            ),
            None => println!("p99 attack / baseline: not available"),
        }
        let opt = |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1} MiB", mib(b)));
        if self.rss_timeline.is_empty() {
            println!("relay RSS: not measured (external relay)");
        } else {
            println!(
                "relay RSS: idle {}  baseline peak {}  attack peak {}  after recovery {}  VmHWM {}  (budget {} MiB)",
                opt(self.rss.idle_bytes),
                opt(self.rss.peak_baseline_bytes),
                opt(self.rss.peak_attack_bytes),
                opt(self.rss.after_recovery_bytes),
                opt(self.rss.vm_hwm_bytes),
                c.memory_budget_mib
            );
        }
        println!(
            "{:<13} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6} {:>5} {:>8} {:>9} {:>7} {:>10}",
            "hostile",
            "conns",
            "attempts",
            "estab",
            "refused",
            "failed",
            "closed",
            "up",
            "streams",
            "ended",
            "errors",
            "requests"
        );
        for h in &self.hostile {
            println!(
                "{:<13} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6} {:>5} {:>8} {:>9} {:>7} {:>10}",
                h.attack,
                h.connections,
                h.attempts,
                h.established,
                h.refused,
                h.failed,
                h.closed_by_relay,
                h.up_at_end,
                h.streams_opened,
                h.streams_ended_by_relay,
                h.error_frames,
                h.requests
            );
            if !h.deposit_statuses.is_empty() {
                let s: Vec<String> = h
                    .deposit_statuses
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                println!("{:<13} statuses: {}", "", s.join(", "));
            }
            if h.attack == "churn" {
                println!("{:<13} subscribed: {}", "", h.subscribed);
            }
        }
        if let Some(after) = &self.metrics.after_attack {
            let before = self.metrics.after_baseline.as_ref();
            let shown: Vec<String> = after
                .iter()
                .filter(|(k, _)| interesting(k))
                .map(|(k, v)| {
                    let d = before.and_then(|b| b.get(k)).map_or(*v, |b| v - b);
                    format!("  {k} {v} (+{d} in the attack phase)")
                })
                .collect();
            if !shown.is_empty() {
                println!("relay metrics at the end of the attack phase:");
                for l in shown {
                    println!("{l}");
                }
            }
        }
        let v = &self.verdict;
        let mut why = Vec::new();
        if let Some(a) = &v.aborted {
            why.push(format!("aborted: {a}"));
        }
        match v.memory_within_budget {
            Some(false) => why.push(format!(
                "relay RSS peak {} over the {} MiB budget",
                opt(self.rss.peak_bytes.max(self.rss.vm_hwm_bytes)),
                c.memory_budget_mib
            )),
            None => why.push("memory not measured".into()),
            Some(true) => {}
        }
        match (v.p99_within_target, self.p99_ratio) {
            (Some(false), Some(r)) => {
                why.push(format!("p99 ratio {r:.2} over {:.1}", c.p99_ratio_target))
            }
            (None, _) | (_, None) => why.push("p99 ratio not available".into()),
            _ => {}
        }
        if !v.deliveries_complete {
            why.push(
                "the well-behaved client did not get every deposit acknowledged and delivered"
                    .into(),
            );
        }
        println!(
            "{}{}",
            if v.pass { "PASS" } else { "FAIL" },
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names_round_trip() {
        for a in Attack::ALL {
            assert_eq!(a.name().parse::<Attack>().unwrap(), a);
        }
        assert!("slow".parse::<Attack>().is_err());
    }

    #[test]
    fn relay_flags() {
        assert_eq!(relay_flag("max-streams=8"), "--max-streams=8");
        assert_eq!(relay_flag("--shards=1"), "--shards=1");
    }

    #[test]
    fn metrics_page_keeps_counters_and_gauges() {
        let page = "# HELP x y\n# TYPE a counter\na_total 3\nb{status=\"ok\"} 4.5\nc_bucket{le=\"1\"} 2\nc_sum 1\nc_count 2\n";
        let m = parse_metrics(page);
        assert_eq!(m.len(), 2);
        assert_eq!(m["a_total"], 3.0);
        assert_eq!(m["b{status=\"ok\"}"], 4.5);
    }

    #[test]
    fn attack_frames_have_the_announced_lengths() {
        let f = max_deposit(1000, 900);
        assert_eq!(f.len(), 4 + 1000);
        assert_eq!(&f[..4], &1000u32.to_be_bytes());
        let d = bad_deposit(&[1; 16], 256).unwrap();
        let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
        assert_eq!(d.len(), 4 + len);
        assert_eq!(len, 1 + sealpost_core::envelope::OVERHEAD + 256);
    }
}
