//! `chaos`: relays as child processes (on the disk store, or several on a Valkey cluster),
//! under steady load, with parts of the system SIGKILLed at random moments: a relay (started
//! again on the same address), or a Valkey primary (its replica takes over; the node is started
//! again and rejoins as a replica). Deposits go through one relay and subscriptions through
//! another, and both move when theirs dies. At the end everything pending is sent again until
//! answered and the recipients drain; then the check: nothing acknowledged lost, corrupted or
//! stored twice, and how the deposits sent while something was down were answered.

mod ledger;
mod load;
mod report;

pub use ledger::{ChaosSecond, OutcomeCounts};
pub use report::{ChaosReport, CycleRecord, KillKind, progress_line};

use crate::cluster_nodes::ClusterNodes;
use crate::fleet::{Fleet, FleetOptions};
use crate::run::StoreKind;
use anyhow::{Context, bail};
use ledger::{Ledger, Shared, lock};
use load::DepositPlan;
use rand::Rng;
use rand::seq::SliceRandom;
use sealpost_client::Client;
use sealpost_client::tls::Trust;
use sealpost_core::Suite;
use sealpost_core::e2e;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the pending deposits may take to be answered at the end, and then the recipients
/// to be delivered everything acknowledged.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How long after a kill deposits may take to be acknowledged again (a client notices a
/// silently dead relay by its keep-alive, every 5 s, at worst).
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// How long a killed primary's replica may take to be promoted (the test cluster's node
/// timeout is 2 s; an election takes about as long again).
const PROMOTION_LIMIT: Duration = Duration::from_secs(30);

/// How long a killed node may take to rejoin and the cluster to be ok and in sync again.
const REJOIN_LIMIT: Duration = Duration::from_secs(60);

/// Options of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The relays (store, how many, the cluster, binary). `disk`: exactly one relay.
    pub fleet: FleetOptions,
    /// With `fleet.cluster_nodes` given and primaries to kill: the `cluster.sh --dir` of that
    /// cluster, where the nodes' pidfiles are.
    pub cluster_dir: Option<PathBuf>,
    /// What to kill; each kind `cycles` times, in random order.
    pub kinds: Vec<KillKind>,
    /// Kill cycles per kind.
    pub cycles: usize,
    /// Mean time from one cycle's end to the next kill (each lands at a random moment from
    /// half to one and a half times this).
    pub kill_every: Duration,
    /// Mailboxes under load.
    pub mailboxes: usize,
    /// Body size.
    pub size: u32,
    /// Deposits in flight at once (one depositor task each).
    pub depositors: usize,
    /// Print a line to standard error after each cycle.
    pub progress: bool,
}

impl ChaosOptions {
    /// What the command line defaults to for `store`, with the relay binary `relay_bin`:
    /// relays only on the disk store (one relay), relays and primaries on the cluster store
    /// (two relays, on a cluster started for the run).
    pub fn new(store: StoreKind, relay_bin: PathBuf) -> Self {
        let cluster = store == StoreKind::Cluster;
        Self {
            fleet: FleetOptions {
                store,
                relays: if cluster { 2 } else { 1 },
                cluster_nodes: None,
                relay_bin,
                cluster_script: crate::fleet::default_cluster_script(),
                master_key_file: None,
            },
            cluster_dir: None,
            kinds: if cluster {
                vec![KillKind::Relay, KillKind::Primary]
            } else {
                vec![KillKind::Relay]
            },
            cycles: 10,
            kill_every: Duration::from_millis(1500),
            mailboxes: if cluster { 12 } else { 4 },
            size: 1024,
            depositors: 16,
            progress: true,
        }
    }

    /// Refuses what cannot be run, saying what to change.
    fn check(&self) -> anyhow::Result<()> {
        if self.cycles == 0 || self.mailboxes == 0 || self.depositors == 0 {
            bail!("--cycles, --mailboxes and --depth must be at least 1");
        }
        if self.kill_every < Duration::from_millis(10) {
            bail!("--kill-every-ms must be at least 10");
        }
        if self.kinds.is_empty() {
            bail!("--kill names nothing to kill: give relays, primaries or both");
        }
        match self.fleet.store {
            StoreKind::Memory => {
                bail!("chaos kills relay processes: --store disk or cluster, not memory")
            }
            StoreKind::Disk if self.kinds.contains(&KillKind::Primary) => {
                bail!("--kill primaries needs --store cluster (the disk store has no primaries)")
            }
            StoreKind::Cluster
                if self.kinds.contains(&KillKind::Primary)
                    && self.fleet.cluster_nodes.is_some()
                    && self.cluster_dir.is_none() =>
            {
                bail!(
                    "--kill primaries on a cluster given with --cluster-nodes needs --cluster-dir (its deploy/valkey/cluster.sh --dir, where the nodes' pidfiles are), or leave out --cluster-nodes to start one"
                )
            }
            _ => Ok(()),
        }
    }
}

/// Connects to `addrs`, preferring `addrs[first]`, for up to 10 s (relays just started).
async fn connect(addrs: &[String], first: usize, pin: [u8; 32]) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_any_first(addrs, first, Trust::Pin(pin)).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("no relay answered");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs the chaos test. An error means it could not be set up; a kill cycle whose killed part
/// did not come back ends the run early with a failing report instead.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    opts.check()?;
    let fo = opts.fleet.clone();
    let max_streams = (opts.depositors + opts.mailboxes + 16).min(u32::MAX as usize) as u32;
    let fleet = tokio::task::spawn_blocking(move || Fleet::start(&fo, max_streams, 64))
        .await
        .context("starting the relays")??;
    let nodes = cluster_control(&opts, &fleet)?;
    let addrs = fleet.addrs.clone();

    let setup = connect(&addrs, 0, fleet.pin).await?;
    let mut boxes = Vec::with_capacity(opts.mailboxes);
    for _ in 0..opts.mailboxes {
        let mb = setup
            .create(Suite::ChaCha20Poly1305)
            .await
            .context("creating a mailbox")?;
        boxes.push(Arc::new(mb));
    }
    let sizes = setup.info().await?.limits.sizes;
    setup.close().await;
    let deposits = Arc::new(connect(&addrs, 0, fleet.pin).await?);
    let subscriptions = Arc::new(connect(&addrs, 1, fleet.pin).await?);
    let cross_relay = deposits.addr() != subscriptions.addr();

    let plan = Arc::new(DepositPlan {
        invitations: boxes.iter().map(|m| m.invitation()).collect(),
        sizes,
        run_id: rand::rng().random(),
        content_len: e2e::max_content(opts.size),
    });
    let ledger: Shared = Arc::new(Mutex::new(Ledger::new(opts.mailboxes)));
    let draining = Arc::new(AtomicBool::new(false));
    let mut recipients = tokio::task::JoinSet::new();
    for (i, mb) in boxes.iter().enumerate() {
        recipients.spawn(load::recipient(
            subscriptions.clone(),
            mb.clone(),
            i as u32,
            plan.run_id,
            plan.content_len,
            ledger.clone(),
        ));
    }
    let mut depositors = tokio::task::JoinSet::new();
    for _ in 0..opts.depositors {
        depositors.spawn(load::depositor(
            deposits.clone(),
            plan.clone(),
            ledger.clone(),
            draining.clone(),
        ));
    }

    let mut schedule: Vec<KillKind> = opts
        .kinds
        .iter()
        .flat_map(|k| std::iter::repeat_n(*k, opts.cycles))
        .collect();
    schedule.shuffle(&mut rand::rng());
    let mut fleet = fleet;
    let mut records = Vec::with_capacity(schedule.len());
    let ms = opts.kill_every.as_millis().min(u64::MAX as u128) as u64;
    for (i, kind) in schedule.iter().copied().enumerate() {
        let wait = rand::rng().random_range(ms / 2..=ms + ms / 2);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (l, n) = (ledger.clone(), nodes.clone());
        let (f, mut record) =
            tokio::task::spawn_blocking(move || kill_cycle(fleet, n.as_ref(), kind, &l, i + 1))
                .await
                .context("a kill cycle")?;
        fleet = f;
        if record.error.is_none() {
            // The next kill waits until deposits are acknowledged again, so that every cycle
            // is a kill of a working system and its recovery is measured.
            let deadline = Instant::now() + RECOVERY_LIMIT;
            loop {
                record.first_ack_after_kill_s = lock(&ledger).first_ack_after(record.kill_s);
                if record.first_ack_after_kill_s.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    record.error = Some(format!(
                        "no deposit sent after the kill was acknowledged within {} s",
                        RECOVERY_LIMIT.as_secs()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if opts.progress {
            eprintln!("{}", progress_line(&record, schedule.len()));
        }
        let failed = record.error.is_some();
        records.push(record);
        if failed {
            break;
        }
    }

    // The end: a last stretch of undisturbed load, then only what is pending, until answered;
    // then the recipients get everything acknowledged.
    tokio::time::sleep(opts.kill_every / 2).await;
    draining.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while depositors.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        depositors.abort_all();
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    while lock(&ledger).undelivered().next().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late repeats of what was delivered are counted too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    recipients.abort_all();
    while recipients.join_next().await.is_some() {}
    while depositors.join_next().await.is_some() {}
    let missing: Vec<u32> = {
        let l = lock(&ledger);
        let mut m: Vec<u32> = l.undelivered().map(|k| k.0).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    if !missing.is_empty() {
        // Stored and not pushed, or gone? A new subscription on a new connection tells.
        if let Ok(fresh) = connect(&addrs, 0, fleet.pin).await {
            for i in missing {
                let found = load::sweep(
                    &fresh,
                    &boxes[i as usize],
                    i,
                    plan.run_id,
                    plan.content_len,
                    &ledger,
                    Duration::from_secs(2),
                )
                .await;
                lock(&ledger).found_by_new_subscription += found;
            }
            fresh.close().await;
        }
    }

    let mut report = summarize(&opts, &lock(&ledger), records);
    report.relays = addrs.len();
    report.cross_relay = cross_relay;
    report.cluster_nodes = fleet.cluster_nodes.clone();
    report.judge();
    // Stopping the relays and the cluster waits for processes.
    let _ = tokio::task::spawn_blocking(move || drop(fleet)).await;
    Ok(report)
}

/// The handle on the Valkey nodes, when primaries are to be killed.
fn cluster_control(opts: &ChaosOptions, fleet: &Fleet) -> anyhow::Result<Option<ClusterNodes>> {
    if !opts.kinds.contains(&KillKind::Primary) {
        return Ok(None);
    }
    if let Some(own) = fleet.own_cluster() {
        return Ok(Some(ClusterNodes::new(
            own.script(),
            own.dir(),
            own.base_port(),
            fleet.cluster_nodes.clone(),
        )));
    }
    let dir = opts
        .cluster_dir
        .as_ref()
        .context("--cluster-dir is needed to kill the primaries of a given cluster")?;
    ClusterNodes::given(&opts.fleet.cluster_script, dir, &fleet.cluster_nodes).map(Some)
}

/// One cycle: kill one `kind` at once, wait until it is back. Blocking.
fn kill_cycle(
    mut fleet: Fleet,
    nodes: Option<&ClusterNodes>,
    kind: KillKind,
    ledger: &Shared,
    cycle: usize,
) -> (Fleet, CycleRecord) {
    let mut r = CycleRecord {
        cycle,
        kind,
        target: String::new(),
        kill_s: 0.0,
        acked_at_kill: 0,
        promoted_s: None,
        promoted: None,
        restarted_s: None,
        first_ack_after_kill_s: None,
        acked_at_restart: 0,
        window: OutcomeCounts::default(),
        window_acked_lost: 0,
        error: None,
    };
    let result = match kind {
        KillKind::Relay => {
            let i = rand::rng().random_range(0..fleet.addrs.len());
            r.target = format!("#{i} {}", fleet.addrs[i]);
            (r.kill_s, r.acked_at_kill) = stamp(ledger);
            fleet.kill_relay(i).and_then(|()| fleet.restart_relay(i))
        }
        KillKind::Primary => match nodes {
            None => Err(anyhow::anyhow!("no cluster to kill a primary of")),
            Some(n) => kill_primary(n, ledger, &mut r),
        },
    };
    match result {
        Ok(()) => {
            let (t, acked) = stamp(ledger);
            r.restarted_s = Some(t);
            r.acked_at_restart = acked;
        }
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    (fleet, r)
}

/// Seconds since the load started, and envelopes acknowledged so far.
fn stamp(ledger: &Shared) -> (f64, u64) {
    let l = lock(ledger);
    (l.now_s(), l.acked.len() as u64)
}

/// Kills a primary that has a replica, waits for a replica's promotion, starts the node again
/// and waits for the cluster to be whole. Blocking.
fn kill_primary(n: &ClusterNodes, ledger: &Shared, r: &mut CycleRecord) -> anyhow::Result<()> {
    let mut primaries: Vec<(String, Vec<String>)> = n
        .primaries()
        .into_iter()
        .filter(|(_, replicas)| !replicas.is_empty())
        .collect();
    if primaries.is_empty() {
        bail!(
            "no primary with a replica answers among {}",
            n.nodes().join(", ")
        );
    }
    let (primary, replicas) = primaries.swap_remove(rand::rng().random_range(0..primaries.len()));
    r.target = primary.clone();
    (r.kill_s, r.acked_at_kill) = stamp(ledger);
    n.kill(&primary)?;
    let promoted = n.wait_promoted(&replicas, PROMOTION_LIMIT)?;
    r.promoted_s = Some(lock(ledger).now_s());
    r.promoted = Some(promoted);
    n.up(REJOIN_LIMIT)
        .with_context(|| format!("starting {primary} again"))
}

/// The report from the final books.
fn summarize(opts: &ChaosOptions, l: &Ledger, mut records: Vec<CycleRecord>) -> ChaosReport {
    let end = l.now_s();
    let mut in_windows = OutcomeCounts::default();
    for c in &mut records {
        c.first_ack_after_kill_s = l.first_ack_after(c.kill_s);
        let (w, lost) = l.window(c.kill_s, c.restarted_s.unwrap_or(end));
        for (sum, n) in [
            (&mut in_windows.ok, w.ok),
            (&mut in_windows.duplicate, w.duplicate),
            (&mut in_windows.unavailable, w.unavailable),
            (&mut in_windows.rejected, w.rejected),
            (&mut in_windows.unanswered, w.unanswered),
        ] {
            *sum += n;
        }
        c.window = w;
        c.window_acked_lost = lost;
    }
    let mut lost: Vec<(u32, u64, bool)> = l
        .undelivered()
        .map(|k| (k.0, k.1, l.resent.contains(k)))
        .collect();
    lost.sort_unstable();
    let completed = |k: KillKind| {
        records
            .iter()
            .filter(|c| c.kind == k && c.error.is_none())
            .count()
    };
    ChaosReport {
        store: opts.fleet.store.name().into(),
        mailboxes: opts.mailboxes,
        size: opts.size,
        kinds: opts.kinds.clone(),
        planned_per_kind: opts.cycles,
        cycles: records.iter().filter(|c| c.error.is_none()).count(),
        relay_kills: completed(KillKind::Relay),
        primary_kills: completed(KillKind::Primary),
        duration_s: end,
        deposited: l.sent(),
        acked: l.acked.len() as u64,
        delivered: l.delivered.len() as u64,
        acked_lost: lost.len() as u64,
        corrupted: l.corrupted,
        duplicated_after_seq_dedupe: l.stored_twice,
        redelivered_same_seq: l.redelivered_same_seq,
        retried: l.resent.len() as u64,
        retried_ok: l.resent_ok,
        retried_duplicate: l.resent_duplicate,
        retried_unanswered: l.pending_keys().filter(|k| l.resent.contains(*k)).count() as u64,
        unsettled: l.pending() as u64,
        rejected: l.refused.len() as u64,
        attempts: l.all_outcomes(),
        in_windows,
        resubscribed: l.resubscribed,
        found_by_new_subscription: l.found_by_new_subscription,
        ack_to_delivery_ms: report::DelayMs::from_us(&l.ack_to_delivery_us),
        per_cycle: records,
        timeline: l.timeline(),
        machine: crate::report::Machine::this(),
        lost,
        ..ChaosReport::default()
    }
}
