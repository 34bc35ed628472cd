//! The relay a run loads: started for it (in-process relay, baseline forwarder, relay
//! processes) or given, and stopped when the run ends.

use super::options::{RunOptions, StoreKind, Target, Via};
use anyhow::{Context, bail};
use sealpost_relay::settings::StoreChoice;
use sealpost_relay::{Relay, RelayConfig, RelayLimits, StoreOptions};
use std::time::Duration;

/// A relay started for the run; shut down when the run ends.
pub struct SpawnedRelay {
    /// The relay, with its store.
    pub relay: Relay,
    /// Its data directory, removed with it.
    pub dir: tempfile::TempDir,
}

/// Starts an in-process relay with limits generous enough for a load test, allowing
/// `max_streams` concurrent streams per connection.
pub async fn spawn_relay(
    window: u32,
    store: StoreKind,
    max_streams: u32,
) -> anyhow::Result<SpawnedRelay> {
    let choice = match store {
        StoreKind::Memory => StoreChoice::Memory,
        StoreKind::Disk => StoreChoice::Disk,
        StoreKind::Cluster => bail!(
            "the cluster store runs in relay processes: give --relays N (and --cluster-nodes or let the run start a cluster)"
        ),
    };
    let (dir, cfg) = load_config(window, max_streams)?;
    // The store with its defaults, as `serve` would open it without a master key; with
    // SEALPOST_AT_REST=true as with one (a random key for the run), so envelopes are sealed at
    // rest (docs/AT-REST.md).
    let mut options = StoreOptions::new(choice);
    let at_rest = std::env::var("SEALPOST_AT_REST").is_ok_and(|v| v == "true" || v == "1");
    if at_rest {
        let key = sealpost_core::random::array::<32>().context("drawing a master key")?;
        options.master_key = Some(zeroize::Zeroizing::new(key));
    }
    let relay = Relay::open_with(cfg, options)
        .await
        .context("starting the in-process relay")?;
    if at_rest {
        eprintln!("{}", relay.store_announcement());
    }
    Ok(SpawnedRelay { relay, dir })
}

/// Starts an in-process forwarding relay (two-hop forwarding on, to any destination, with no
/// per-source forwarding rate: the generator is one source standing for many) on another
/// free loopback port, with the load limits of [`spawn_relay`] and the memory store (it
/// stores nothing of the run's).
pub async fn spawn_forwarder(max_streams: u32) -> anyhow::Result<SpawnedRelay> {
    let (dir, mut cfg) = load_config(1024, max_streams)?;
    cfg.forward.enabled = true;
    // The destination is this machine's relay, on the loopback.
    cfg.forward.private_destinations = true;
    cfg.forward.source_rate = sealpost_relay::Rate::UNLIMITED;
    let relay = Relay::open_with(cfg, StoreOptions::new(StoreChoice::Memory))
        .await
        .context("starting the in-process forwarding relay")?;
    Ok(SpawnedRelay { relay, dir })
}

/// A data directory and the configuration of an in-process relay on a free loopback port,
/// with limits generous enough for a load test.
fn load_config(window: u32, max_streams: u32) -> anyhow::Result<(tempfile::TempDir, RelayConfig)> {
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let limits = RelayLimits {
        max_envelopes: 1_000_000,
        max_bytes: 8 << 30,
        max_window: window.max(1024),
        max_streams: max_streams.max(RelayLimits::default().max_streams),
        // One load generator stands for many clients: from one address, with few mailboxes
        // taking the load of many. The abuse limits would measure themselves, not the relay
        // (`sealpost-loadtest abuse` is where they are tested).
        max_connections_per_source: 0,
        source_connection_rate: sealpost_relay::Rate::UNLIMITED,
        mailbox_deposit_rate: sealpost_relay::Rate::UNLIMITED,
        connection_stream_rate: sealpost_relay::Rate::UNLIMITED,
        source_create_rate: sealpost_relay::Rate::UNLIMITED,
        source_stream_rate: sealpost_relay::Rate::UNLIMITED,
        source_fault_rate: sealpost_relay::Rate::UNLIMITED,
        // As large as this kernel allows, so the relay does not warn on every spawn.
        udp_buffer: std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(RelayLimits::default().udp_buffer, |max: usize| {
                max.min(RelayLimits::default().udp_buffer)
            }),
        ..RelayLimits::default()
    };
    let mut cfg = RelayConfig::new(
        "127.0.0.1:0".parse().expect("literal address"),
        dir.path().to_owned(),
    );
    cfg.limits = limits;
    cfg.engine = crate::engine_from_env()?;
    Ok((dir, cfg))
}

/// The forwarding relay deposits go through, when the run asks for one.
pub struct Forwarder {
    /// The in-process forwarding relay the run started, if it did.
    pub spawned: Option<SpawnedRelay>,
    /// Its address.
    pub addr: String,
    /// Its certificate pin.
    pub pin: [u8; 32],
    /// How the report names it: `spawned forwarder ADDR` or the address.
    pub label: String,
}

impl Forwarder {
    /// Starts or names the forwarding relay `via` asks for.
    pub async fn start(via: &Via, streams: u32) -> anyhow::Result<Self> {
        Ok(match via {
            Via::Spawn => {
                let s = spawn_forwarder(streams).await?;
                let addr = s.relay.handle().local_addr().to_string();
                Self {
                    pin: s.relay.handle().pin(),
                    label: format!("spawned forwarder {addr}"),
                    addr,
                    spawned: Some(s),
                }
            }
            Via::Remote { addr, pin } => Self {
                spawned: None,
                addr: addr.clone(),
                pin: *pin,
                label: addr.clone(),
            },
        })
    }
}

/// The running target of one run, whatever its kind.
pub struct Running {
    /// An in-process relay the run started.
    pub spawned: Option<SpawnedRelay>,
    /// The baseline forwarder the run started.
    pub baseline: Option<crate::baseline::Baseline>,
    /// Relay processes (and maybe a Valkey cluster) the run started.
    pub fleet: Option<crate::fleet::Fleet>,
    /// Where to connect: one address per relay.
    pub addrs: Vec<String>,
    /// The certificate pin of every relay.
    pub pin: [u8; 32],
    /// How the report names the relay: `spawned`, `baseline` or the addresses.
    pub label: String,
    /// The forwarding relay deposits go through (`--via`).
    pub forwarder: Option<Forwarder>,
}

impl Running {
    /// Starts what `opts.target` asks for, allowing `streams` concurrent streams per
    /// connection, and checks there is a connection for every relay.
    pub async fn start(opts: &RunOptions, streams: u32) -> anyhow::Result<Self> {
        // Through a forwarding relay every sender's requests reach the target over the
        // forwarder's one connection, up to --depth unanswered per sender connection: the
        // target's stream credit must cover them all, or it, not forwarding, sets the pace.
        // (The forwarder needs --depth per connection, and a stream for the rest.)
        let forwarded = u32::try_from(opts.connections.saturating_mul(opts.depth))
            .unwrap_or(u32::MAX)
            .saturating_add(2);
        let (streams, forwarder_streams) = match opts.via {
            Some(_) => (
                streams.max(forwarded),
                u32::try_from(opts.depth)
                    .unwrap_or(u32::MAX)
                    .saturating_add(2),
            ),
            None => (streams, 0),
        };
        let mut r = Self {
            spawned: None,
            baseline: None,
            fleet: None,
            addrs: Vec::new(),
            pin: [0; 32],
            label: String::new(),
            forwarder: None,
        };
        match &opts.target {
            Target::Spawn => {
                let s = spawn_relay(opts.window, opts.store, streams).await?;
                r.addrs = vec![s.relay.handle().local_addr().to_string()];
                r.pin = s.relay.handle().pin();
                r.label = "spawned".to_owned();
                r.spawned = Some(s);
            }
            Target::Baseline => {
                let b = crate::baseline::Baseline::start(streams).await?;
                r.addrs = vec![b.local_addr().to_string()];
                r.pin = b.pin();
                r.label = "baseline".to_owned();
                r.baseline = Some(b);
            }
            Target::Remote { addrs, pin } => {
                r.addrs = addrs.clone();
                r.pin = *pin;
                r.label = addrs.join(",");
            }
            Target::Processes(f) => {
                let f = f.clone();
                let window = opts.window;
                let fleet = tokio::task::spawn_blocking(move || {
                    crate::fleet::Fleet::start(&f, streams, window)
                })
                .await
                .context("relay start-up task")??;
                r.addrs = fleet.addrs.clone();
                r.pin = fleet.pin;
                r.label = fleet.addrs.join(",");
                r.fleet = Some(fleet);
            }
        }
        if r.addrs.is_empty() {
            bail!("no relay address given");
        }
        if let Some(via) = &opts.via {
            r.forwarder = Some(Forwarder::start(via, forwarder_streams).await?);
        }
        if opts.connections < r.addrs.len() {
            bail!(
                "--connections {} is fewer than the {} relays: each relay needs a connection",
                opts.connections,
                r.addrs.len()
            );
        }
        Ok(r)
    }

    /// Stops what the run started: the forwarding relay, the in-process relay (with its final flush), the
    /// baseline, the relay processes and then the cluster if the run started it.
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(s) = self.forwarder.and_then(|f| f.spawned) {
            s.relay
                .shutdown(Duration::from_secs(10))
                .await
                .context("stopping the in-process forwarding relay")?;
        }
        if let Some(s) = self.spawned {
            // Clients are gone: the connections close at once, and the disk store's final
            // flush has its share of the budget.
            s.relay
                .shutdown(Duration::from_secs(10))
                .await
                .context("stopping the in-process relay")?;
        }
        if let Some(b) = self.baseline {
            b.shutdown().await;
        }
        drop(self.fleet);
        Ok(())
    }
}
