//! Heap allocations per envelope on the relay's side of the hot path, counted by a global
//! allocator that tallies only threads of the relay's runtime (the client runs on a runtime
//! of its own). Deposit, verify, store, wake, re-seal, deliver and ACK are all in the count,
//! quinn's packet handling included.
//!
//! `cargo bench -p sealpost-relay --bench alloc` (add `-- disk` for the disk store).

use bytes::Bytes;
use sealpost_client::Client;
use sealpost_core::Suite;
use sealpost_relay::settings::StoreChoice;
use sealpost_relay::{Relay, RelayConfig, RelayLimits, StoreOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RELAY_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    if RELAY_THREAD.try_with(|r| r.get()).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged; counting touches only atomics and a const-initialised thread-local, neither of
// which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MAILBOXES: usize = 16;
const WARMUP: usize = 4_000;
const MEASURED: usize = 40_000;
const SIZE: u32 = 1024;

fn main() {
    let disk = std::env::args().any(|a| a == "disk");
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| RELAY_THREAD.with(|r| r.set(true)))
        .enable_all()
        .build()
        .expect("relay runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let limits = RelayLimits {
        max_envelopes: 1_000_000,
        ..RelayLimits::default()
    };
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    cfg.limits = limits;
    let choice = if disk {
        StoreChoice::Disk
    } else {
        StoreChoice::Memory
    };
    let relay = relay_rt
        .block_on(Relay::open_with(cfg, StoreOptions::new(choice)))
        .expect("relay starts");
    let handle = relay.handle();
    let addr = handle.local_addr().to_string();
    let pin = handle.pin();

    client_rt.block_on(async move {
        let c = Arc::new(Client::connect_pinned(&addr, pin).await.expect("connect"));
        let mut boxes = Vec::new();
        for _ in 0..MAILBOXES {
            boxes.push(c.create(Suite::ChaCha20Poly1305).await.expect("create"));
        }
        let mut subs = Vec::new();
        for mb in &boxes {
            let mut sub = c.subscribe(&mb.access(), 256).await.expect("subscribe");
            subs.push(tokio::spawn(async move {
                let mut got = 0usize;
                while let Ok(Some(d)) = sub.next().await {
                    got += 1;
                    if sub.ack(d.seq).await.is_err() {
                        break;
                    }
                }
                got
            }));
        }
        let envelopes: Vec<Bytes> = (0..WARMUP + MEASURED)
            .map(|i| {
                let mb = &boxes[i % MAILBOXES];
                let body = vec![(i % 251) as u8; SIZE as usize];
                let nonce: [u8; 12] = sealpost_core::random::array().expect("random");
                sealpost_core::envelope::build(&sealpost_core::engine::Engine::ring(), &mb.deposit_key, &mb.deposit_id, &nonce, &body)
            })
            .collect();
        let (mut tx, mut rx) = c.open_deposit().await.expect("deposit stream");
        let results = tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok(Some(s)) = rx.next().await {
                n += s.len();
            }
            n
        });
        let mut before = (0, 0);
        for (i, e) in envelopes.iter().enumerate() {
            if i == WARMUP {
                // Let the warm-up drain so the measured span starts steady.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                before = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
            }
            tx.send(e).await.expect("deposit");
        }
        tx.finish();
        let answered = results.await.expect("results task");
        assert_eq!(answered, WARMUP + MEASURED, "every deposit answered");
        // Wait for the deliveries (and their ACKs) to finish.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let after = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        let n = MEASURED as f64;
        println!(
            "{} store, {} B envelopes, {} envelopes over {} mailboxes: {:.2} allocations and {:.0} bytes allocated per envelope on the relay's threads",
            if disk { "disk" } else { "memory" },
            SIZE,
            MEASURED,
            MAILBOXES,
            (after.0 - before.0) as f64 / n,
            (after.1 - before.1) as f64 / n,
        );
        drop(subs);
    });
    relay_rt
        .block_on(relay.shutdown(std::time::Duration::from_secs(5)))
        .expect("relay stops");
    // The directory must outlive the runtime's tasks.
    drop(relay_rt);
    drop(dir);
}
