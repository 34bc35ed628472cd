//! The sending side of a run: one deposit stream per connection, pipelined to a depth
//! (closed loop) or on a fixed schedule (open loop); or, through a forwarding relay, one
//! FORWARD per envelope with as many unanswered.

use super::options::E2eMode;
use super::tally::{Ctx, mark};
use crate::message::{self, Stamp};
use anyhow::Context;
use bytes::Bytes;
use sealpost_client::{Client, ClientError, ForwardTarget};
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::Invitation;
use sealpost_core::status::DepositStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Deposits to the mailboxes `mine` over `client` until `stop`: at most `depth` unanswered,
/// and with a `rate` (envelopes per second on this connection) on its schedule.
pub(crate) async fn sender(
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
                tally(&rctx, mb, seq, s);
            }
        }
        anyhow::Ok(())
    });
    let mut schedule = Schedule::new(mine, rate);
    while let Some((mb, seq, env)) = schedule.next(&ctx, &invitations, &stop).await? {
        if qtx.send((mb, seq)).await.is_err() {
            break;
        }
        tx.send(&env).await.context("sending a deposit")?;
        ctx.counters.deposited.fetch_add(1, Ordering::Relaxed);
    }
    tx.finish();
    drop(qtx);
    reader.await.context("result reader panicked")?
}

/// Which envelope a sender sends next, and when: its mailboxes in turn, each with its own
/// sequence numbers; in the open loop on a fixed schedule.
struct Schedule {
    mine: Vec<u32>,
    next_seq: Vec<u64>,
    /// The next mailbox's index in `mine`.
    turn: usize,
    /// Envelopes sent so far: envelope n is due at n / rate after the start.
    sent: u64,
    interval_us: Option<f64>,
}

impl Schedule {
    fn new(mine: Vec<u32>, rate: Option<f64>) -> Self {
        Self {
            next_seq: vec![0; mine.len()],
            mine,
            turn: 0,
            sent: 0,
            interval_us: rate.map(|r| 1e6 / r),
        }
    }

    /// Waits until the next envelope is due and builds it: its mailbox, its sequence number
    /// and its bytes; `None` once `stop` is set or the open loop's schedule is over.
    async fn next(
        &mut self,
        ctx: &Ctx,
        invitations: &[Invitation],
        stop: &AtomicBool,
    ) -> anyhow::Result<Option<(u32, u64, Bytes)>> {
        if stop.load(Ordering::Relaxed) || self.mine.is_empty() {
            return Ok(None);
        }
        let sent_us = match self.interval_us {
            None => ctx.now_us(),
            Some(iv) => {
                let due = (self.sent as f64 * iv) as u64;
                if due >= ctx.load_end_us {
                    // The schedule is over: what is due later belongs to no run.
                    return Ok(None);
                }
                let now = ctx.now_us();
                if due > now {
                    // Never early. tokio's timer ticks in milliseconds, so a wake-up may be
                    // late; every envelope overdue by then goes at once, and its latency
                    // still counts from when it was due.
                    tokio::time::sleep(Duration::from_micros(due - now)).await;
                }
                due
            }
        };
        self.sent += 1;
        let k = self.turn;
        self.turn = (self.turn + 1) % self.mine.len();
        let mb = self.mine[k];
        let seq = self.next_seq[k];
        self.next_seq[k] += 1;
        let stamp = Stamp {
            mailbox: mb,
            seq,
            sent_us,
        };
        let env = seal(ctx, &invitations[mb as usize], stamp)?;
        Ok(Some((mb, seq, env)))
    }
}

/// The envelope carrying `stamp` to the mailbox of `inv`, sealed end to end as the run asks.
fn seal(ctx: &Ctx, inv: &Invitation, stamp: Stamp) -> anyhow::Result<Bytes> {
    let content = message::build(ctx.run_id, stamp, ctx.content_len);
    Ok(match ctx.mode {
        E2eMode::Hpke => e2e::seal_for_invitation(&Engine::ring(), inv, &ctx.sizes, &content)
            .context("sealing a message")?,
        E2eMode::Fast => {
            let mut rng = rand::rng();
            let body = ctx.fast_keys[stamp.mailbox as usize].seal(
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
    })
}

/// Counts one deposit's status: acknowledged (marked for the mailbox) or rejected.
fn tally(ctx: &Ctx, mb: u32, seq: u64, status: DepositStatus) {
    if status.is_success() {
        mark(
            &mut ctx.tracks[mb as usize]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .acked,
            seq,
        );
        ctx.counters.acked.fetch_add(1, Ordering::Relaxed);
    } else {
        ctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Like [`sender`], but through a forwarding relay: `client` is connected to it, and each
/// envelope goes as one FORWARD to `targets[mailbox]` (its own stream, as a forwarded request
/// is one request and one answer), at most `depth` unanswered. A request the forwarding relay
/// or the destination refuses as a whole (an ERROR: unreachable, rate-limited) counts as
/// rejected; a lost connection ends the run with an error, as it does for direct deposits.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sender_via(
    client: Arc<Client>,
    mine: Vec<u32>,
    invitations: Arc<Vec<Invitation>>,
    targets: Arc<Vec<ForwardTarget>>,
    depth: usize,
    rate: Option<f64>,
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(depth));
    let mut inflight = JoinSet::new();
    let mut schedule = Schedule::new(mine, rate);
    while let Some((mb, seq, env)) = schedule.next(&ctx, &invitations, &stop).await? {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("the forwarding pipeline closed")?;
        // Reap what has finished, so that errors surface while the load runs.
        while let Some(r) = inflight.try_join_next() {
            r.context("forwarded deposit task panicked")??;
        }
        ctx.counters.deposited.fetch_add(1, Ordering::Relaxed);
        let (client, targets, tctx) = (client.clone(), targets.clone(), ctx.clone());
        inflight.spawn(async move {
            let got = client
                .forward_deposit(&targets[mb as usize], std::slice::from_ref(&env))
                .await;
            drop(permit);
            match got {
                Ok(r) => tally(&tctx, mb, seq, r.statuses[0]),
                Err(ClientError::Relay(e)) => {
                    tracing::debug!(error = %e, "forwarded deposit refused");
                    tctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e).context("a forwarded deposit"),
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = inflight.join_next().await {
        r.context("forwarded deposit task panicked")??;
    }
    Ok(())
}
