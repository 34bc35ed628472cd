//! The sending side of a run: one deposit stream per connection, pipelined to a depth
//! (closed loop) or on a fixed schedule (open loop).

use super::options::E2eMode;
use super::tally::{Ctx, mark};
use crate::message::{self, Stamp};
use anyhow::Context;
use sealpost_client::Client;
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::Invitation;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

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
                    if due >= ctx.load_end_us {
                        // The schedule is over: what is due later belongs to no run.
                        break 'load;
                    }
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
