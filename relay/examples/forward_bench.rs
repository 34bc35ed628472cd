//! Forwarded against direct deposits in one run (issue 15): a destination relay on 127.0.0.3,
//! a forwarding relay on 127.0.0.2 and one sending client on 127.0.0.4, all in this process
//! over the memory store (so the figures are the protocol's and the relays' cost, not a
//! disk's). Each deposit is one envelope on its own request, sealed beforehand; `tasks`
//! requests run at once; the direct phase and the forwarded phase take turns for `rounds`
//! rounds of `count` deposits each, and every round's throughput and latency are printed. A
//! third phase forwards up to 16 envelopes per FORWARD (as many as fit), and a first line times the HPKE work of
//! one forwarded request alone.
//!
//! ```text
//! cargo run --release -p sealpost-relay --example forward_bench -- [count] [tasks] [size] [rounds]
//! ```
#![forbid(unsafe_code)]

use bytes::Bytes;
use sealpost_client::tls::Trust;
use sealpost_client::{Client, ForwardTarget};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{Rate, RelayConfig, RelayHandle, RelayLimits};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Most envelopes per FORWARD in the batched phase (fewer when they would not fit).
const MAX_BATCH: usize = 16;

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn relay(ip: &str, dir: &std::path::Path, forward: bool) -> Result<RelayHandle, Failure> {
    let mut cfg = RelayConfig::new(format!("{ip}:0").parse()?, dir.to_owned());
    cfg.limits = RelayLimits {
        max_envelopes: 10_000_000,
        max_bytes: 64 << 30,
        max_connections_per_source: 0,
        source_connection_rate: Rate::UNLIMITED,
        source_stream_rate: Rate::UNLIMITED,
        source_fault_rate: Rate::UNLIMITED,
        mailbox_deposit_rate: Rate::UNLIMITED,
        connection_stream_rate: Rate::UNLIMITED,
        ..RelayLimits::default()
    };
    cfg.forward.enabled = forward;
    cfg.forward.private_destinations = true;
    cfg.forward.source_rate = Rate::UNLIMITED;
    let store = Arc::new(MemoryStore::new(cfg.limits.quotas()));
    Ok(sealpost_relay::start(cfg, store).await?)
}

/// Runs `count` deposits, `tasks` at a time; returns deposits per second and the sorted
/// latencies.
async fn phase<F, Fut>(count: usize, tasks: usize, one: F) -> Result<(f64, Vec<Duration>), Failure>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let one = Arc::new(one);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (one, next) = (one.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                one(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for h in handles {
        all.extend(h.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort();
    Ok((count as f64 / secs, all))
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let count = arg(1, 5000);
    let tasks = arg(2, 32);
    let size = arg(3, 1024);
    let rounds = arg(4, 3);
    let dd = tempfile::tempdir()?;
    let fd = tempfile::tempdir()?;
    let dest = relay("127.0.0.3", dd.path(), false).await?;
    let fwd = relay("127.0.0.2", fd.path(), true).await?;
    let local = Some("127.0.0.4:0".parse()?);
    let recipient = Client::connect(
        &dest.local_addr().to_string(),
        Trust::KeyPin(dest.key_pin()?),
    )
    .await?;
    let mut mb = recipient.create(Suite::ChaCha20Poly1305).await?;
    mb.forward_key = Some(dest.forward_key());
    let inv = mb.invitation();
    let direct = Arc::new(
        Client::connect_from(
            &dest.local_addr().to_string(),
            Trust::KeyPin(dest.key_pin()?),
            local,
        )
        .await?,
    );
    let via = Arc::new(
        Client::connect_from(
            &fwd.local_addr().to_string(),
            Trust::KeyPin(fwd.key_pin()?),
            local,
        )
        .await?,
    );
    let target = Arc::new(ForwardTarget::from_invitation(&inv)?);
    let content = vec![0x42u8; size];
    let seal = |n: usize| -> Result<Arc<Vec<Bytes>>, Failure> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(e2e::seal_for_invitation(
                &Engine::ring(),
                &inv,
                &mb.sizes,
                &content,
            )?);
        }
        Ok(Arc::new(v))
    };
    // The cryptography of one forwarded request alone, on this thread: the sender's seal (the
    // hpke crate), the destination's open and export (the hpke crate), the answer (ring).
    let key = sealpost_relay::forward::ForwardKey::generate()?;
    let request = vec![7u8; size + 61];
    let n = 2000;
    let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        let s = sealpost_core::forward::seal_request(&key.public(), &request, 1 << 20)?;
        sealing += t.elapsed();
        let t = Instant::now();
        let mut ctx = key.context(&s.sealed.enc)?;
        let mut ct = s.sealed.ciphertext.to_vec();
        ctx.open(b"", &mut ct)?;
        let answer = sealpost_core::forward::ResponseKey::from_bytes(
            ctx.export32(sealpost_core::forward::RESPONSE_EXPORT),
        )
        .seal(b"answer")?;
        opening += t.elapsed();
        s.response_key.open(&answer)?;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "HPKE per request, one thread: sender's seal (hpke crate) {:.1} us, destination's open and export (hpke crate) and answer (ring) {:.1} us",
        us(sealing),
        us(opening)
    );
    println!(
        "forward_bench: {count} deposits of {size}-byte messages per phase, {tasks} at a time, {rounds} rounds"
    );
    println!("phase      deposits/s   p50 ms   p99 ms");
    for round in 1..=rounds {
        let envs = seal(count)?;
        let (c, e) = (direct.clone(), envs.clone());
        let (rate, lat) = phase(count, tasks, move |i| {
            let (c, e) = (c.clone(), e.clone());
            async move {
                match c.deposit(e[i].clone()).await {
                    Ok(s) if s.is_success() => Ok(()),
                    Ok(s) => Err(format!("direct deposit: {s}")),
                    Err(e) => Err(format!("direct deposit: {e}")),
                }
            }
        })
        .await?;
        println!(
            "direct {round}   {rate:10.0}  {:7.2}  {:7.2}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        let envs = seal(count)?;
        let (c, e, t) = (via.clone(), envs.clone(), target.clone());
        let (rate, lat) = phase(count, tasks, move |i| {
            let (c, e, t) = (c.clone(), e.clone(), t.clone());
            async move {
                match c.forward_deposit(&t, std::slice::from_ref(&e[i])).await {
                    Ok(r) if r.statuses.iter().all(|s| s.is_success()) => Ok(()),
                    Ok(r) => Err(format!("forwarded deposit: {:?}", r.statuses)),
                    Err(e) => Err(format!("forwarded deposit: {e}")),
                }
            }
        })
        .await?;
        println!(
            "forwarded {round}{rate:10.0}  {:7.2}  {:7.2}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        // Several envelopes per FORWARD: one HPKE context (one X25519 on each side) for all.
        let envs = seal(count)?;
        let one = envs.first().map_or(1, |e| e.len() + 5);
        let batch =
            (sealpost_core::forward::max_request(target.max_frame) / one).clamp(1, MAX_BATCH);
        let (c, e, t) = (via.clone(), envs.clone(), target.clone());
        let (rate, lat) = phase(count / batch, tasks, move |i| {
            let (c, e, t) = (c.clone(), e.clone(), t.clone());
            async move {
                match c.forward_deposit(&t, &e[i * batch..(i + 1) * batch]).await {
                    Ok(r) if r.statuses.iter().all(|s| s.is_success()) => Ok(()),
                    Ok(r) => Err(format!("forwarded batch: {:?}", r.statuses)),
                    Err(e) => Err(format!("forwarded batch: {e}")),
                }
            }
        })
        .await?;
        println!(
            "fwd x{batch} {round}   {:10.0}  {:7.2}  {:7.2}   (latency per request of {batch})",
            rate * batch as f64,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    Ok(())
}
