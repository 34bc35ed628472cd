//! The receiving side of a run: mailboxes created, one subscription per mailbox that opens,
//! checks and counts every delivery, and the drain at the end.

use super::options::E2eMode;
use super::tally::{Ctx, mark};
use crate::message;
use anyhow::Context;
use sealpost_client::{Client, Mailbox};
use sealpost_core::Suite;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The connection mailbox `i` is subscribed on. Its deposits go over connection `i mod C`, to
/// relay `(i mod C) mod R`; with several relays the subscription goes to the next relay, over
/// one of that relay's connections (connection `k` is to relay `k mod R`), so every delivery
/// crosses from one relay to another.
pub(crate) fn subscriber_connection(i: usize, connections: usize, relays: usize) -> usize {
    if relays <= 1 {
        return i % connections;
    }
    let to = (i % connections % relays + 1) % relays;
    // Connections to relay `to`: to, to + R, … below C (at least one, as C >= R).
    let of_relay = (connections - to).div_ceil(relays);
    to + relays * ((i / connections) % of_relay)
}

/// Creates `n` mailboxes, spread over the connections, 64 at a time.
pub(crate) async fn create_mailboxes(
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
                    "\r\x1b[2Kcreating mailboxes: {done}/{n} ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                );
                if done == n {
                    super::progress::clear_line();
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|m| m.expect("every mailbox created"))
        .collect())
}

/// Receives on `mailbox` until `stop`: opens and checks each delivery, records its latency,
/// and acknowledges it.
pub(crate) async fn subscriber(
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
pub(crate) async fn next_delivery(
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
pub(crate) async fn drain(ctx: &Ctx, timeout: Duration) {
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
