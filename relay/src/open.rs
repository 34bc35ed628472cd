//! Building a relay from its settings, the one way `serve`, the load generator and the tests
//! all use: the store the settings choose (opened and recovered, with the master key), then
//! the QUIC endpoint over it; and stopping it again within one time budget. What belongs to
//! the process (arguments, logging, signals, the metrics recorder, the admin listener) stays
//! with the caller.

use crate::config::RelayConfig;
use crate::master_key::{self, MasterKeyError};
use crate::server::{RelayError, RelayHandle};
use crate::settings::{StoreChoice, Validated};
use crate::shutdown::StopError;
use crate::store::at_rest::keyring::{Keyring, KeyringError, KeyringStore, VolatileKeys};
use crate::store::at_rest::slots::SlotFile;
use crate::store::at_rest::valkey::ValkeyKeys;
use crate::store::at_rest::{self, AtRest, AtRestOptions};
use crate::store::cluster::{ClusterOptions, ClusterStore};
use crate::store::disk::{DiskOptions, DiskStore};
use crate::store::memory::MemoryStore;
use crate::store::{Store, StoreError, StoreStats};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Why a relay could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The master key could not be read.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// The store could not be opened (the message says which file, or which relay holds it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task opening the store ended abnormally.
    #[error("the task opening the store did not finish: {0}; see the log above for its cause")]
    Task(String),
    /// The QUIC endpoint could not start (address, certificate, limits).
    #[error(transparent)]
    Start(#[from] RelayError),
}

/// How to open the store, beyond the relay's own configuration.
#[derive(Clone)]
pub struct StoreOptions {
    /// Which store.
    pub choice: StoreChoice,
    /// Encrypts mailbox secrets at rest (stores that keep them) when given.
    pub master_key: Option<Zeroizing<[u8; 32]>>,
    /// The disk store's free-space reserve, bytes.
    pub min_free_disk_bytes: u64,
    /// The cluster store's seed nodes, `HOST:PORT`.
    pub cluster_nodes: Vec<String>,
    /// Seals envelopes at rest under epoch keys and shreds them (only with a master key).
    pub at_rest: bool,
    /// The at-rest epoch window.
    pub at_rest_epoch: Duration,
    /// The at-rest settle grace on a store several relays share (the cluster store):
    /// envelopes sealed under an epoch are stored until this long after its window ended.
    pub at_rest_settle: Duration,
}

impl StoreOptions {
    /// The options for `choice` with no master key and the disk store's default reserve.
    pub fn new(choice: StoreChoice) -> Self {
        Self {
            choice,
            master_key: None,
            min_free_disk_bytes: DiskOptions::default().min_free_bytes,
            cluster_nodes: Vec::new(),
            at_rest: true,
            at_rest_epoch: at_rest::DEFAULT_WINDOW,
            at_rest_settle: at_rest::DEFAULT_SETTLE,
        }
    }
}

/// The keyring file of the disk store, beside its `store/` directory (not in it: a master-key
/// rewrite replaces that directory).
pub const KEYRING_FILE: &str = "at-rest.keys";

/// Wraps `inner` in the at-rest layer when `options` ask for it and a master key is given, or
/// when the keyring still holds keys of envelopes sealed earlier (then only to open those).
/// `shared`: other relays append to `inner` and share its keyring (the cluster store), so the
/// at-rest layer has the store enforce each epoch's settle deadline (`AtRestOptions::shared`).
/// Returns the store to serve from and a phrase for the announcement.
async fn seal_at_rest<S: Store>(
    config: &RelayConfig,
    options: &StoreOptions,
    inner: S,
    keys: Option<Box<dyn KeyringStore>>,
    shared: bool,
) -> Result<(Arc<dyn Store>, String), OpenError> {
    let (Some(master), Some(keys)) = (options.master_key.as_ref(), keys) else {
        return Ok((Arc::new(inner), String::new()));
    };
    let place = keys.describe();
    let keyring = Keyring::open(master, keys)
        .await
        .map_err(|e| StoreError::AtRest(e.into()))?;
    if !options.at_rest && keyring.is_empty() {
        return Ok((Arc::new(inner), String::new()));
    }
    let opts = AtRestOptions {
        window: options.at_rest_epoch,
        seal_new: options.at_rest,
        retention: config.limits.retention,
        engine: config.engine,
        shared: shared.then_some(options.at_rest_settle),
    };
    let phrase = if options.at_rest {
        format!(
            "; envelopes sealed at rest under {} s epoch keys ({} live, in {place})",
            opts.window.as_secs(),
            keyring.len()
        )
    } else {
        format!(
            "; at-rest sealing off, {} epoch keys of earlier envelopes kept until they drain (in {place})",
            keyring.len()
        )
    };
    let store = Arc::new(AtRest::new(inner, keyring, opts));
    at_rest::spawn_sweeper(&store);
    Ok((store, phrase))
}

fn keyring_file(path: &std::path::Path) -> Result<Box<dyn KeyringStore>, OpenError> {
    Ok(Box::new(
        SlotFile::open(path).map_err(|e: KeyringError| StoreError::AtRest(e.into()))?,
    ))
}

/// A store opened for a relay, with what the caller may say about it.
pub struct OpenedStore {
    /// The store the relay serves from.
    pub store: Arc<dyn Store>,
    /// The disk store itself, when it is one: it is flushed at shutdown, and the load
    /// generator reclaims its space.
    pub disk: Option<DiskStore>,
    /// One line for the operator: which store, where, what it recovered.
    pub announcement: String,
    /// Where mailbox secrets are kept unencrypted for want of a master key, if anywhere.
    pub unencrypted_secrets: Option<PathBuf>,
}

/// Opens the store `options` choose for `config` (under its data directory). Opening a disk
/// store recovers it, which may take a while; it runs off the async threads.
pub async fn open_store(
    config: &RelayConfig,
    mut options: StoreOptions,
) -> Result<OpenedStore, OpenError> {
    let quotas = config.limits.quotas();
    match options.choice {
        StoreChoice::Memory => {
            let keys: Box<dyn KeyringStore> = Box::new(VolatileKeys::default());
            let (store, sealed) = seal_at_rest(
                config,
                &options,
                MemoryStore::new(quotas),
                Some(keys),
                false,
            )
            .await?;
            Ok(OpenedStore {
                store,
                disk: None,
                announcement: format!(
                    "store: memory (volatile: envelopes do not survive a restart){sealed}"
                ),
                unencrypted_secrets: None,
            })
        }
        StoreChoice::Disk => {
            let dir = config.data_dir.join("store");
            let t0 = Instant::now();
            let encrypted = options.master_key.is_some();
            let master_key = options.master_key.clone();
            let disk = tokio::task::spawn_blocking(move || {
                DiskStore::open(
                    &dir,
                    quotas,
                    DiskOptions {
                        master_key,
                        min_free_bytes: options.min_free_disk_bytes,
                        ..DiskOptions::default()
                    },
                )
            })
            .await
            .map_err(|e| OpenError::Task(e.to_string()))??;
            let stats = disk.stats_now();
            let keys = config.data_dir.join(KEYRING_FILE);
            let keys = if options.master_key.is_some() && (options.at_rest || keys.exists()) {
                Some(keyring_file(&keys)?)
            } else {
                None
            };
            let (store, sealed) = seal_at_rest(config, &options, disk.clone(), keys, false).await?;
            let announcement = format!(
                "store: disk at {} ({} mailboxes, {} envelopes recovered in {:.2} s){sealed}",
                disk.dir().display(),
                stats.mailboxes,
                stats.envelopes,
                t0.elapsed().as_secs_f64()
            );
            Ok(OpenedStore {
                store,
                unencrypted_secrets: (!encrypted).then(|| disk.dir().to_owned()),
                disk: Some(disk),
                announcement,
            })
        }
        StoreChoice::Cluster => {
            let t0 = Instant::now();
            let nodes = options.cluster_nodes.join(",");
            let mut cluster = ClusterOptions::new(
                options.cluster_nodes.clone(),
                options.master_key.clone(),
                quotas,
            );
            // Deposits also trim what the retention has expired, so that old envelopes do not
            // hold a mailbox's quota between expiry sweeps.
            cluster.retention = Some(config.limits.retention);
            // One relay of the cluster sweeps each primary per interval, not every relay.
            cluster.expire_every = Some(config.limits.expire_interval);
            let store = ClusterStore::open(cluster).await?;
            // Every relay must count on the same epoch deadlines: the first to start sets the
            // settle grace for all.
            let settle = store.agreed_settle(options.at_rest_settle).await?;
            if settle != options.at_rest_settle {
                tracing::warn!(
                    cluster = settle.as_secs_f64(),
                    setting = options.at_rest_settle.as_secs_f64(),
                    "at_rest_settle_secs differs from the settle grace the cluster's relays use (set by the first relay to start): using the cluster's. To change it, stop every relay, SET {} to the new grace in milliseconds, and start them with the new setting",
                    crate::store::cluster::keys::SETTLE_KEY
                );
            }
            options.at_rest_settle = settle;
            let stats = store.stats().await;
            let keys: Box<dyn KeyringStore> = Box::new(
                ValkeyKeys::open(&options.cluster_nodes)
                    .await
                    .map_err(|e| StoreError::AtRest(e.into()))?,
            );
            // Every relay of the deployment appends to the cluster and shares its keyring.
            let (store, sealed) = seal_at_rest(config, &options, store, Some(keys), true).await?;
            let announcement = format!(
                "store: Valkey cluster via {nodes} ({} mailboxes, {} envelopes; opened in {:.2} s){sealed}",
                stats.mailboxes,
                stats.envelopes,
                t0.elapsed().as_secs_f64()
            );
            Ok(OpenedStore {
                store,
                disk: None,
                announcement,
                // The cluster store refuses to open without a master key.
                unencrypted_secrets: None,
            })
        }
    }
}

/// A running relay with its store.
pub struct Relay {
    handle: RelayHandle,
    store: Arc<dyn Store>,
    disk: Option<DiskStore>,
    announcement: String,
    unencrypted_secrets: Option<PathBuf>,
}

impl Relay {
    /// Builds the relay `settings` describe: reads the master key (the settings' file, else
    /// `SEALPOST_MASTER_KEY`), opens and recovers the chosen store and starts listening.
    pub async fn open(settings: &Validated) -> Result<Self, OpenError> {
        let options = StoreOptions {
            choice: settings.store,
            master_key: master_key::load(settings.master_key_file.as_deref())?,
            min_free_disk_bytes: settings.min_free_disk_bytes,
            cluster_nodes: settings.cluster_nodes.clone(),
            at_rest: settings.at_rest,
            at_rest_epoch: settings.at_rest_epoch,
            at_rest_settle: settings.at_rest_settle,
        };
        Self::open_with(settings.relay.clone(), options).await
    }

    /// Builds a relay from a configuration and store options directly (what the load
    /// generator and tests that set limits in code use).
    pub async fn open_with(
        mut config: RelayConfig,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        if config.forward.master_key.is_none() {
            config.forward.master_key = options
                .master_key
                .clone()
                .map(|k| crate::config::MasterKey(Arc::new(k)));
        }
        let opened = open_store(&config, options).await?;
        let handle = crate::server::start(config, opened.store.clone()).await?;
        Ok(Self {
            handle,
            store: opened.store,
            disk: opened.disk,
            announcement: opened.announcement,
            unencrypted_secrets: opened.unencrypted_secrets,
        })
    }

    /// The running server: address, pins, certificate reload, store failures.
    pub fn handle(&self) -> &RelayHandle {
        &self.handle
    }

    /// The store the relay serves from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The disk store, when the relay runs on one.
    pub fn disk_store(&self) -> Option<&DiskStore> {
        self.disk.as_ref()
    }

    /// The store's current totals.
    pub async fn stats(&self) -> StoreStats {
        self.store.stats().await
    }

    /// One line for the operator about the store: which, where, what it recovered.
    pub fn store_announcement(&self) -> &str {
        &self.announcement
    }

    /// Where mailbox secrets are stored unencrypted (no master key was given), if anywhere.
    pub fn unencrypted_secrets(&self) -> Option<&std::path::Path> {
        self.unencrypted_secrets.as_deref()
    }

    /// Stops the relay: the connections' grace period and the store's final flush share
    /// `budget`; a flush that fails is an error.
    pub async fn shutdown(self, budget: Duration) -> Result<(), StopError> {
        crate::shutdown::stop(self.handle, self.disk, budget).await
    }
}
