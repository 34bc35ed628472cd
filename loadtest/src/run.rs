//! `run`: drive a relay with many mailboxes over many connections, verify every delivery
//! end to end, drain, and report. The parts live in [`crate::load`]; this puts them in order.

pub use crate::load::disk_usage::{dir_size, write_bytes};
pub use crate::load::options::{E2eMode, RunOptions, StoreKind, Target, Via};
pub use crate::load::target::{SpawnedRelay, spawn_relay};

use crate::histogram::SavedHistogram;
use crate::load::disk_usage::data_dir_after_drain;
use crate::load::progress::{clear_line, tick};
use crate::load::sender::{sender, sender_via};
use crate::load::subscriber::{create_mailboxes, drain, subscriber, subscriber_connection};
use crate::load::tally::{Counters, Ctx, Latencies, Track, new_histogram};
use crate::load::target::Running;
use crate::message;
use crate::report::{Latency, Report, RunConfig};
use anyhow::{Context, bail};
use sealpost_client::{Client, ForwardTarget, Mailbox};
use sealpost_core::e2e;
use sealpost_core::invitation::Invitation;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Runs the load and returns the report.
pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    check(&opts)?;
    // Every mailbox's subscription is a stream on its connection, besides the deposit stream
    // and one request at a time (set-up CREATEs beyond it wait for credit, as QUIC intends).
    let streams = (opts.mailboxes.div_ceil(opts.connections) + 2).min(u32::MAX as usize) as u32;
    let target = Running::start(&opts, streams).await?;
    let (clients, ctx, mailboxes) = set_up(&opts, &target).await?;
    let deposits = Deposits::set_up(&opts, &target, &clients, &mailboxes).await?;
    let measured = load(&opts, &target, &clients, &deposits, &ctx, &mailboxes).await?;
    let report = report(&opts, &target, &ctx, measured).await?;
    let via_clients = match deposits {
        Deposits::Direct => Vec::new(),
        Deposits::Via { clients, .. } => clients,
    };
    for c in clients.into_iter().chain(via_clients) {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    target.stop().await?;
    Ok(report)
}

/// Refuses options no run can honour.
fn check(opts: &RunOptions) -> anyhow::Result<()> {
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
    if opts.via.is_some() && opts.target_is_baseline() {
        bail!("the baseline forwarder has no forwarding key, so nothing can be forwarded to it");
    }
    Ok(())
}

/// Connects, checks the size against the relay's limits, creates the mailboxes and the
/// state the run's tasks share.
async fn set_up(
    opts: &RunOptions,
    target: &Running,
) -> anyhow::Result<(Vec<Arc<Client>>, Arc<Ctx>, Vec<Arc<Mailbox>>)> {
    let mut clients = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let addr = &target.addrs[i % target.addrs.len()];
        let c = Client::connect_pinned(addr, target.pin)
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
    let mailboxes = create_mailboxes(&clients, opts.mailboxes, progress(opts)).await?;
    let fast_keys = match opts.e2e {
        E2eMode::Fast => (0..opts.mailboxes)
            .map(|_| crate::fast::FastKey::generate())
            .collect::<anyhow::Result<_>>()?,
        E2eMode::Hpke => Vec::new(),
    };
    let ctx = Arc::new(Ctx {
        run_id: u64::from_be_bytes(sealpost_core::random::array().context("random source")?),
        unsealed: target.baseline.is_some(),
        warmup_us: opts.warmup.as_micros() as u64,
        load_end_us: (opts.warmup + opts.duration).as_micros() as u64,
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
    Ok((clients, ctx, mailboxes))
}

/// How the run's senders reach the relay.
enum Deposits {
    /// Over the subscribers' connections, one deposit stream each.
    Direct,
    /// Over connections of their own to a forwarding relay, one FORWARD per envelope, each
    /// sealed for the target's forwarding key (two-hop forwarding).
    Via {
        /// `--connections` connections to the forwarding relay.
        clients: Vec<Arc<Client>>,
        /// Per mailbox: its relay and that relay's forwarding key.
        targets: Arc<Vec<ForwardTarget>>,
    },
}

impl Deposits {
    /// Connects to the forwarding relay, if the run has one, and learns the target's
    /// forwarding key and frame limit.
    async fn set_up(
        opts: &RunOptions,
        target: &Running,
        clients: &[Arc<Client>],
        mailboxes: &[Arc<Mailbox>],
    ) -> anyhow::Result<Self> {
        let Some(fw) = &target.forwarder else {
            return Ok(Self::Direct);
        };
        // Each relay's own key (relays of a run need not share one), asked over the first
        // connection to it: connection i goes to relay i mod N.
        let mut keys = std::collections::HashMap::new();
        for c in clients.iter().take(target.addrs.len()) {
            let key = c
                .forward_key()
                .await
                .with_context(|| format!("asking {} for its forwarding key", c.addr()))?
                .with_context(|| {
                    format!(
                        "{} announces no forwarding key (it predates forwarding): --via needs a relay that does",
                        c.addr()
                    )
                })?;
            keys.insert(c.addr().to_owned(), key);
        }
        let max_frame = clients[0]
            .info()
            .await
            .context("asking the relay for its limits")?
            .limits
            .max_frame;
        let targets = mailboxes
            .iter()
            .map(|m| {
                let mut inv = m.invitation();
                inv.forward_key = inv.relays.first().and_then(|a| keys.get(a)).copied();
                let mut t = ForwardTarget::from_invitation(&inv)?;
                t.max_frame = max_frame;
                Ok(t)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut via = Vec::with_capacity(opts.connections);
        for i in 0..opts.connections {
            let c = Client::connect_pinned(&fw.addr, fw.pin)
                .await
                .with_context(|| format!("connection {i} to the forwarding relay {}", fw.addr))?;
            via.push(Arc::new(c));
        }
        Ok(Self::Via {
            clients: via,
            targets: Arc::new(targets),
        })
    }
}

/// Whether to show progress lines: asked for, and standard error is a terminal.
fn progress(opts: &RunOptions) -> bool {
    opts.progress && std::io::stderr().is_terminal()
}

/// What the load phase measured besides the shared counters.
struct Measured {
    /// Seconds from the start of the load to the end of the drain.
    elapsed: f64,
    /// Bytes this process wrote to storage during the load.
    written: Option<u64>,
    /// CPU of relay processes and Valkey nodes.
    usage: Option<crate::usage::Usage>,
    /// One entry per second.
    timeline: Vec<crate::report::Second>,
}

/// Subscribes, sends for the warm-up and the duration, stops the senders, drains, stops the
/// subscribers.
async fn load(
    opts: &RunOptions,
    target: &Running,
    clients: &[Arc<Client>],
    deposits: &Deposits,
    ctx: &Arc<Ctx>,
    mailboxes: &[Arc<Mailbox>],
) -> anyhow::Result<Measured> {
    // Subscribers first, so deliveries flow from the first deposit (unless recipients are
    // offline for a backlog run, in which case they come after the load).
    let (stop_subs_tx, stop_subs) = watch::channel(false);
    let mut subs = JoinSet::new();
    let spawn_subs = |subs: &mut JoinSet<anyhow::Result<()>>| {
        for (i, mb) in mailboxes.iter().enumerate() {
            let client =
                clients[subscriber_connection(i, clients.len(), target.addrs.len())].clone();
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
    let probe = crate::usage::Probe::new(target.fleet.as_ref());
    let usage_before = probe.sample();

    let stop_send = Arc::new(AtomicBool::new(false));
    let mut senders = JoinSet::new();
    let invitations: Arc<Vec<Invitation>> =
        Arc::new(mailboxes.iter().map(|m| m.invitation()).collect());
    // In the open loop each connection sends its share of the rate.
    let per_conn_rate = opts.rate.map(|r| r / clients.len() as f64);
    for ci in 0..clients.len() {
        let mine: Vec<u32> = (ci..opts.mailboxes)
            .step_by(clients.len())
            .map(|i| i as u32)
            .collect();
        match deposits {
            Deposits::Direct => senders.spawn(sender(
                clients[ci].clone(),
                mine,
                invitations.clone(),
                opts.depth,
                per_conn_rate,
                ctx.clone(),
                stop_send.clone(),
            )),
            Deposits::Via { clients, targets } => senders.spawn(sender_via(
                clients[ci].clone(),
                mine,
                invitations.clone(),
                targets.clone(),
                opts.depth,
                per_conn_rate,
                ctx.clone(),
                stop_send.clone(),
            )),
        };
    }
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let progress = progress(opts);
    let ticker = tokio::spawn(tick(
        ctx.clone(),
        timeline.clone(),
        progress,
        opts.label.clone(),
    ));

    // The load ends warm-up + duration after the schedule's start (not after the set-up
    // above, which a busy machine can make take a while and so stretch the open loop).
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        ctx.start + opts.warmup + opts.duration,
    ))
    .await;
    stop_send.store(true, Ordering::Relaxed);
    while let Some(r) = senders.join_next().await {
        r.context("sender task panicked")??;
    }
    let written = write_bytes().zip(written_before).map(|(a, b)| a - b);
    if opts.backlog {
        spawn_subs(&mut subs);
    }
    drain(ctx, opts.drain_timeout).await;
    let elapsed = ctx.start.elapsed().as_secs_f64();
    let usage_after = probe.sample();
    let _ = stop_subs_tx.send(true);
    while let Some(r) = subs.join_next().await {
        r.context("subscriber task panicked")??;
    }
    ticker.abort();
    if progress {
        clear_line();
    }
    let c = &ctx.counters;
    let usage = probe.usage(
        usage_before,
        usage_after,
        c.delivered.load(Ordering::Relaxed),
        c.acked.load(Ordering::Relaxed),
    );
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Measured {
        elapsed,
        written,
        usage,
        timeline,
    })
}

/// Puts the report together from the counters, the histogram and the disk figures.
async fn report(
    opts: &RunOptions,
    target: &Running,
    ctx: &Ctx,
    m: Measured,
) -> anyhow::Result<Report> {
    let hist = ctx
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .total
        .clone();
    let c = &ctx.counters;
    let delivered = c.delivered.load(Ordering::Relaxed);
    let measured = c.delivered_measured.load(Ordering::Relaxed);
    let measured_s = (m.elapsed - opts.warmup.as_secs_f64()).max(1e-9);
    let deposited = c.deposited.load(Ordering::Relaxed);
    let deposited_bytes = deposited * (opts.size as u64 + sealpost_core::envelope::OVERHEAD as u64);
    // Disk figures mean something only for a spawned relay on the disk store: this
    // process's writes are then the store's.
    let spawned_local = target.spawned.is_some() && opts.store == StoreKind::Disk;
    let store_label = match &opts.target {
        Target::Spawn => Some(opts.store),
        Target::Processes(f) => Some(f.store),
        _ => None,
    };
    let (data_dir_bytes, data_dir_bytes_reclaimed) =
        data_dir_after_drain(target.spawned.as_ref()).await?;
    let fleet = target.fleet.as_ref();
    Ok(Report {
        config: RunConfig {
            relay: target.label.clone(),
            mailboxes: opts.mailboxes,
            connections: opts.connections,
            size: opts.size,
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            mode: if opts.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            rate: opts.rate,
            depth: opts.depth,
            window: opts.window,
            drain_timeout_s: opts.drain_timeout.as_secs_f64(),
            store: store_label,
            backlog: opts.backlog,
            e2e: opts.e2e,
            via: target.forwarder.as_ref().map(|f| f.label.clone()),
        },
        machine: crate::report::Machine::this(),
        relays: target.addrs.clone(),
        cross_relay: target.addrs.len() > 1,
        cluster_nodes: fleet
            .map(|f| f.cluster_nodes.clone())
            .filter(|n| !n.is_empty()),
        cluster_started: fleet.is_some_and(|f| f.cluster_started),
        usage: m.usage,
        timeline: m.timeline,
        disk_write_bytes_during_load: m.written.filter(|_| spawned_local),
        write_bytes_per_deposited_byte: m
            .written
            .filter(|_| spawned_local && deposited_bytes > 0)
            .map(|w| w as f64 / deposited_bytes as f64),
        data_dir_bytes_after_drain: data_dir_bytes,
        data_dir_bytes_after_reclaim: data_dir_bytes_reclaimed,
        deposited,
        acked: c.acked.load(Ordering::Relaxed),
        delivered,
        lost: ctx.lost(),
        duplicated: c.duplicated.load(Ordering::Relaxed),
        corrupted: c.corrupted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        duration_s: m.elapsed,
        measured_s,
        deliveries_per_s: measured as f64 / measured_s,
        bytes_per_s: measured as f64 * opts.size as f64 / measured_s,
        latency_us: Latency {
            p50: hist.value_at_quantile(0.50),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        latency_histogram: SavedHistogram::of(&hist)?,
        command: None,
    })
}
