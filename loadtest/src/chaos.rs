//! `chaos`: run the relay as a child process on the disk store, keep depositing and fetching,
//! SIGKILL it at random moments, restart it on the same data directory, and at the end check
//! that nothing the relay acknowledged was lost, corrupted or stored twice.

use crate::message::{self, Stamp};
use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use sealpost_client::{Client, Mailbox};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::invitation::Invitation;
use sealpost_core::padding::SizeClasses;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `sealpost-relay` binary.
    pub relay_bin: PathBuf,
    /// Kill-and-restart cycles.
    pub cycles: usize,
    /// Mean time between kills.
    pub kill_every: Duration,
    /// Mailboxes under load.
    pub mailboxes: usize,
    /// Body size.
    pub size: u32,
}

/// What a chaos run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    /// Kill-and-restart cycles run.
    pub cycles: usize,
    /// Distinct envelopes sent.
    pub deposited: u64,
    /// Distinct envelopes the relay answered OK or DUPLICATE.
    pub acked: u64,
    /// Distinct envelopes delivered and verified.
    pub delivered: u64,
    /// Acknowledged by the relay, never delivered: must be 0.
    pub acked_lost: u64,
    /// Deliveries that failed to open or check: must be 0.
    pub corrupted: u64,
    /// An envelope delivered under a second sequence number (stored twice): must be 0.
    pub duplicated_after_seq_dedupe: u64,
    /// Deliveries repeated under the same sequence number (allowed: at-least-once).
    pub redelivered_same_seq: u64,
    /// Envelopes sent again because the relay died before answering.
    pub retried: u64,
    /// How the retries ended: OK.
    pub retried_ok: u64,
    /// How the retries ended: DUPLICATE (the first attempt had been stored).
    pub retried_duplicate: u64,
    /// How the retries ended: still unanswered at the end.
    pub retried_unanswered: u64,
    /// Deposits refused with a status other than OK or DUPLICATE.
    pub rejected: u64,
    /// The lost envelopes, as (mailbox, message id, was retried), for diagnosis.
    pub lost: Vec<(u32, u64, bool)>,
}

#[derive(Default)]
struct State {
    /// Envelope bytes by (mailbox, id), for retries.
    sent: HashMap<(u32, u64), Bytes>,
    /// Sent and unanswered.
    unanswered: HashSet<(u32, u64)>,
    /// Sent more than once.
    retried: HashSet<(u32, u64)>,
    acked: HashSet<(u32, u64)>,
    next_id: Vec<u64>,
    delivered: HashSet<(u32, u64)>,
    /// Per mailbox: relay seq → message id, to tell redelivery from double storage.
    by_seq: Vec<BTreeMap<u64, u64>>,
    report: ChaosReport,
}

async fn connect(addr: &str, pin: [u8; 32]) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_pinned(addr, pin).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("relay did not come back");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the chaos test.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let run_id: u64 = rand::rng().random();
    let mut relay = crate::child::start(&opts.relay_bin, &addr, dir.path())?;
    let client = connect(&addr, relay.pin).await?;
    let mut boxes = Vec::new();
    for _ in 0..opts.mailboxes {
        boxes.push(Arc::new(
            client
                .create(Suite::ChaCha20Poly1305)
                .await
                .context("creating a mailbox")?,
        ));
    }
    let sizes = client.info().await?.limits.sizes;
    client.close().await;
    let invitations: Arc<Vec<Invitation>> =
        Arc::new(boxes.iter().map(|m| m.invitation()).collect());
    let state = Arc::new(Mutex::new(State {
        next_id: vec![0; opts.mailboxes],
        by_seq: vec![BTreeMap::new(); opts.mailboxes],
        ..State::default()
    }));
    let content_len = e2e::max_content(opts.size);
    for cycle in 0..=opts.cycles {
        if cycle > 0 {
            relay = crate::child::start(&opts.relay_bin, &addr, dir.path())?;
        }
        let last = cycle == opts.cycles;
        let client = Arc::new(connect(&addr, relay.pin).await?);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mb) in boxes.iter().enumerate() {
            tasks.spawn(receive(
                client.clone(),
                mb.clone(),
                i as u32,
                run_id,
                content_len,
                state.clone(),
            ));
        }
        let load = tokio::spawn(deposit(
            client.clone(),
            invitations.clone(),
            sizes.clone(),
            run_id,
            content_len,
            state.clone(),
            last,
        ));
        if last {
            // No kill: answer every retry, then let the recipients drain.
            let _ = tokio::time::timeout(Duration::from_secs(20), load).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let done = {
                    let s = lock(&state);
                    s.acked.iter().all(|k| s.delivered.contains(k))
                };
                if done || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            tasks.abort_all();
            let _ = relay.child.kill();
            let _ = relay.child.wait();
        } else {
            let ms = opts.kill_every.as_millis() as u64;
            let wait = rand::rng().random_range(ms / 2..=ms + ms / 2);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            // SIGKILL: no chance to flush anything.
            relay.child.kill().context("killing the relay")?;
            let _ = relay.child.wait();
            load.abort();
            tasks.abort_all();
            lock(&state).report.cycles += 1;
        }
        while tasks.join_next().await.is_some() {}
    }
    let mut s = lock(&state);
    let acked_lost = s.acked.iter().filter(|k| !s.delivered.contains(*k)).count() as u64;
    let retried = s.retried.clone();
    let mut lost: Vec<(u32, u64, bool)> = s
        .acked
        .iter()
        .filter(|k| !s.delivered.contains(*k))
        .map(|k| (k.0, k.1, retried.contains(k)))
        .collect();
    lost.sort_unstable();
    let r = &mut s.report;
    r.acked_lost = acked_lost;
    r.retried = retried.len() as u64;
    let mut report = r.clone();
    report.deposited = s.sent.len() as u64;
    report.acked = s.acked.len() as u64;
    report.delivered = s.delivered.len() as u64;
    report.retried_unanswered = s.unanswered.iter().filter(|k| retried.contains(*k)).count() as u64;
    report.lost = lost;
    Ok(report)
}

fn lock(s: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn deposit(
    client: Arc<Client>,
    invitations: Arc<Vec<Invitation>>,
    sizes: SizeClasses,
    run_id: u64,
    content_len: usize,
    state: Arc<Mutex<State>>,
    retries_only: bool,
) -> anyhow::Result<()> {
    let (mut tx, mut rx) = client.open_deposit().await?;
    let (qtx, mut qrx) = tokio::sync::mpsc::channel::<(u32, u64)>(32);
    let st = state.clone();
    let reader = tokio::spawn(async move {
        while let Some(statuses) = rx.next().await? {
            for status in statuses {
                let Some(k) = qrx.recv().await else { break };
                let mut s = lock(&st);
                s.unanswered.remove(&k);
                let retry = s.retried.contains(&k);
                match status {
                    sealpost_core::status::DepositStatus::Ok => {
                        s.acked.insert(k);
                        if retry {
                            s.report.retried_ok += 1;
                        }
                    }
                    sealpost_core::status::DepositStatus::Duplicate => {
                        s.acked.insert(k);
                        if retry {
                            s.report.retried_duplicate += 1;
                        }
                    }
                    _ => s.report.rejected += 1,
                }
            }
        }
        anyhow::Ok(())
    });
    // First the envelopes a kill left unanswered, byte for byte the same (the idempotency key).
    let retry: Vec<((u32, u64), Bytes)> = {
        let mut s = lock(&state);
        let keys: Vec<(u32, u64)> = s.unanswered.iter().copied().collect();
        let out = keys.iter().map(|k| (*k, s.sent[k].clone())).collect();
        s.retried.extend(keys);
        out
    };
    for (k, env) in retry {
        qtx.send(k).await?;
        tx.send(&env).await?;
    }
    if !retries_only {
        let n = invitations.len();
        for round in 0u64.. {
            let mb = (round % n as u64) as u32;
            let id = {
                let mut s = lock(&state);
                let id = s.next_id[mb as usize];
                s.next_id[mb as usize] += 1;
                id
            };
            let content = message::build(
                run_id,
                Stamp {
                    mailbox: mb,
                    seq: id,
                    sent_us: 0,
                },
                content_len,
            );
            let env = e2e::seal_for_invitation(
                &sealpost_core::engine::Engine::ring(),
                &invitations[mb as usize],
                &sizes,
                &content,
            )?;
            {
                let mut s = lock(&state);
                s.sent.insert((mb, id), env.clone());
                s.unanswered.insert((mb, id));
            }
            qtx.send((mb, id)).await?;
            tx.send(&env).await?;
        }
    }
    tx.finish();
    drop(qtx);
    reader.await??;
    Ok(())
}

async fn receive(
    client: Arc<Client>,
    mailbox: Arc<Mailbox>,
    index: u32,
    run_id: u64,
    content_len: usize,
    state: Arc<Mutex<State>>,
) -> anyhow::Result<()> {
    let mut sub = client.subscribe(&mailbox.access(), 64).await?;
    while let Some(d) = sub.next().await? {
        let stamp = mailbox
            .open(&d)
            .ok()
            .and_then(|c| message::check(run_id, &c, content_len))
            .filter(|s| s.mailbox == index);
        {
            let mut s = lock(&state);
            match stamp {
                None => s.report.corrupted += 1,
                Some(st) => {
                    let known = s.by_seq[index as usize].get(&d.seq).copied();
                    match known {
                        Some(id) if id == st.seq => s.report.redelivered_same_seq += 1,
                        Some(_) => s.report.corrupted += 1,
                        None => {
                            if s.delivered.contains(&(index, st.seq)) {
                                s.report.duplicated_after_seq_dedupe += 1;
                            }
                            s.by_seq[index as usize].insert(d.seq, st.seq);
                            s.delivered.insert((index, st.seq));
                        }
                    }
                }
            }
        }
        sub.ack(d.seq).await?;
    }
    Ok(())
}
