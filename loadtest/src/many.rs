//! `mailboxes`: many mailboxes, cheaply? Creates N mailboxes (a few of them holding an
//! envelope) in a disk store, then starts the real relay on that data directory as a child
//! process and measures its start-up time to ready, its resident memory against an empty relay,
//! and the data directory's size.

use anyhow::Context;
use bytes::Bytes;
use sealpost_core::Suite;
use sealpost_core::keys::RecipientSecret;
use sealpost_relay::RelayLimits;
use sealpost_relay::store::disk::{DiskOptions, DiskStore};
use sealpost_relay::store::{Append, MailboxRecord, Store};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ManyReport {
    /// Mailboxes created.
    pub mailboxes: u64,
    /// Of which holding one envelope.
    pub active: u64,
    /// Seconds to create them (bulk, through the store API).
    pub create_s: f64,
    /// Disk space of the data directory.
    pub data_dir_bytes: u64,
    /// Seconds from starting `sealpost-relay serve` to its printing the pin (ready).
    pub restart_to_ready_s: f64,
    /// The relay's resident memory once ready, with the mailboxes.
    pub rss_bytes: u64,
    /// The same relay binary's resident memory on an empty data directory.
    pub rss_empty_bytes: u64,
    /// (rss_bytes - rss_empty_bytes) / mailboxes.
    pub rss_bytes_per_mailbox: f64,
}

fn rss_of(pid: u32) -> anyhow::Result<u64> {
    crate::abuse::proc_status_bytes(pid, "VmRSS").context("no VmRSS in /proc/<pid>/status")
}

/// Starts the relay on `dir`, waits for ready, returns (seconds to ready, RSS once ready).
fn start_and_measure(bin: &Path, dir: &Path) -> anyhow::Result<(f64, u64)> {
    let t0 = Instant::now();
    let mut relay = crate::child::start(bin, "127.0.0.1:0", dir)?;
    let ready = t0.elapsed().as_secs_f64();
    // Let allocations from start-up settle before reading the resident size.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rss = rss_of(relay.child.id());
    let _ = relay.child.kill();
    let _ = relay.child.wait();
    Ok((ready, rss?))
}

/// Runs the scenario in `dir` (which should be empty).
pub async fn run(
    relay_bin: PathBuf,
    dir: PathBuf,
    count: u64,
    active: u64,
) -> anyhow::Result<ManyReport> {
    let empty = tempfile::tempdir()?;
    let (_, rss_empty) = start_and_measure(&relay_bin, empty.path())?;

    let limits = RelayLimits::default();
    let store = DiskStore::open(&dir.join("store"), limits.quotas(), DiskOptions::default())?;
    let t0 = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let chunk = 20_000u64;
    let mut made = 0u64;
    while made < count {
        let n = chunk.min(count - made);
        let mut recs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let rid = sealpost_core::random::array()?;
            recs.push(MailboxRecord::new(
                rid,
                store.deposit_id_for(&rid),
                Suite::ChaCha20Poly1305,
                sealpost_core::random::array()?,
                RecipientSecret::generate()?,
            ));
        }
        store.create_many(recs)?;
        made += n;
        if tty {
            eprint!("\r{made} / {count} mailboxes");
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    // Give `active` mailboxes one envelope each (the store only checks that the mailbox exists:
    // tags are the relay's job).
    let ids: Vec<_> = sealpost_relay::store::disk::deposit_ids(&store)
        .into_iter()
        .take(active as usize)
        .collect();
    for group in ids.chunks(256) {
        let batch: Vec<Append> = group
            .iter()
            .map(|d| Append {
                deposit_id: *d,
                nonce: sealpost_core::random::array().unwrap_or([7; 12]),
                envelope: Bytes::from(vec![0x5a; 1024 + 52]),
                not_after: None,
            })
            .collect();
        store.append_batch(&batch).await?;
    }
    let create_s = t0.elapsed().as_secs_f64();
    drop(store);
    let data_dir_bytes = crate::load::disk_usage::dir_size(&dir);
    // The store's background threads release its lock file shortly after the last handle
    // goes; a relay started before that refuses the locked store, so try a few times.
    let mut attempt = 0;
    let (ready, rss) = loop {
        attempt += 1;
        match start_and_measure(&relay_bin, &dir) {
            Ok(v) => break v,
            Err(e) if attempt >= 10 => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    };
    Ok(ManyReport {
        mailboxes: count,
        active: ids.len() as u64,
        create_s,
        data_dir_bytes,
        restart_to_ready_s: ready,
        rss_bytes: rss,
        rss_empty_bytes: rss_empty,
        rss_bytes_per_mailbox: rss.saturating_sub(rss_empty) as f64 / count.max(1) as f64,
    })
}
