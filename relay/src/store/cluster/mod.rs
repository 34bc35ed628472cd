//! The cluster store: mailboxes in a Valkey 8 cluster, so that relays keep no state of their
//! own and any relay serves any mailbox (issue 12; docs/CLUSTER.md).
//!
//! Every mailbox lives in one slot (`keys`); the server-side functions in `functions.lua`
//! (loaded with FUNCTION LOAD REPLACE at every start) change it atomically. An append is
//! acknowledged only once WAITAOF confirms it fsynced on its primary and a replica
//! (`commit`); a wake-up reaches subscribers on every relay through sharded pub/sub (`wake`).
//! Start-up refuses a cluster that cannot keep that promise (`checks`); afterwards the store
//! reports, without a round trip, whether it can keep it now (`health`).

mod cache;
pub mod checks;
mod commit;
mod heads;
mod health;
pub mod keys;
pub mod rekey;
mod wake;

pub use checks::ClusterError;

use super::index::{IdPrf, digest};
use super::record::{self, RecordError, secrets_key};
use super::{
    Append, AppendOutcome, Claim, HeldHeads, MailboxRecord, Quotas, Store, StoreError, StoreHealth,
    StoreStats, StoredEnvelope, SubscriberClaim,
};
use async_trait::async_trait;
use bytes::Bytes;
use commit::Committer;
use keys::MailboxKeys;
use redis::cluster_async::ClusterConnection;
use redis::{Pipeline, Value};
use sealpost_core::{AeadKey, DepositId, RecipientId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// Whether a primary's expiry sweep is due for a relay sweeping every ARGV[1] ms: its last
/// sweep (KEYS[1], ms by this node's clock) is at least that old; if so the new one is
/// recorded (kept a day, then forgotten). Answers 1 if due.
const EXPIRY_DUE: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0 \
    if now - last < tonumber(ARGV[1]) then return 0 end \
    redis.call('SET', KEYS[1], now, 'PX', 86400000) return 1";

/// The function library, loaded on every primary at start-up.
const FUNCTIONS: &str = include_str!("functions.lua");

/// How the cluster store is opened.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Some of the cluster's nodes, `HOST:PORT` (the rest are learnt from them).
    pub nodes: Vec<String>,
    /// Seals mailbox secrets (required).
    pub master_key: Option<Zeroizing<[u8; 32]>>,
    /// Quotas enforced on appends and mailboxes.
    pub quotas: Quotas,
    /// How long an append batch waits for WAITAOF before its envelopes are answered
    /// UNAVAILABLE.
    pub durable_timeout: Duration,
    /// Envelopes older than this are removed by a deposit into their mailbox that the quota
    /// would refuse otherwise (besides [`Store::expire`]), so that they do not hold the quota
    /// between sweeps; `None`: only by `expire`.
    pub retention: Option<Duration>,
    /// How often this relay sweeps for expiry ([`Store::expire`]): it leaves alone a primary
    /// that any relay of the cluster swept less than this long ago (by the primary's clock,
    /// kept on the primary), so that N relays sweep each primary about once an interval, not N
    /// times. A relay with a shorter interval still sweeps as often as it asks; one that
    /// stops blocks nobody. `None`: every call sweeps every primary.
    pub expire_every: Option<Duration>,
}

impl ClusterOptions {
    /// Options with the default WAITAOF timeout (1 s).
    pub fn new(
        nodes: Vec<String>,
        master_key: Option<Zeroizing<[u8; 32]>>,
        quotas: Quotas,
    ) -> Self {
        Self {
            nodes,
            master_key,
            quotas,
            durable_timeout: Duration::from_secs(1),
            retention: None,
            expire_every: None,
        }
    }
}

/// The Valkey cluster store.
pub struct ClusterStore {
    quotas: Quotas,
    /// Retention in milliseconds for the deposit function; 0 = none.
    retention_ms: u64,
    conn: ClusterConnection,
    committer: Arc<Committer>,
    health: Arc<health::Health>,
    records: cache::RecordCache,
    secrets: AeadKey,
    prf: IdPrf,
    wakes: Arc<wake::Wakes>,
    /// [`ClusterOptions::expire_every`].
    expire_every: Option<Duration>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("valkey cluster: {e}"))
}

fn urls(nodes: &[String]) -> Vec<String> {
    nodes.iter().map(|n| format!("redis://{n}/")).collect()
}

/// The at-rest settle grace stored in [`keys::SETTLE_KEY`] (milliseconds), checked against the
/// setting's range: the key is also set by hand, and "120" meant as seconds would silently
/// remove the clock-skew margin the deadlines rely on.
fn settle_grace(stored: Option<&str>) -> Result<Duration, StoreError> {
    match stored.map(str::parse::<u64>) {
        Some(Ok(ms)) if (1_000..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        other => Err(backend(format!(
            "{} holds {other:?}, not an at-rest settle grace of 1 to 3600 s in milliseconds: set it to the grace every relay uses, with every relay stopped (SET {} 120000)",
            keys::SETTLE_KEY,
            keys::SETTLE_KEY
        ))),
    }
}

/// A cluster-aware connection through the seeds `nodes`.
async fn cluster_connection(
    nodes: &[String],
    response_timeout: Duration,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    redis::cluster::ClusterClientBuilder::new(urls(nodes))
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(response_timeout)
        .build()?
        .get_async_connection()
        .await
}

impl ClusterStore {
    /// Connects, checks that the cluster keeps the durability promise (every slot served,
    /// WAITAOF available, an fsynced append-only file on every node), loads the functions and
    /// reads (or makes) the shared deposit-id PRF key.
    pub async fn open(opts: ClusterOptions) -> Result<Self, StoreError> {
        if opts.nodes.is_empty() {
            return Err(ClusterError::NoNodes.into());
        }
        let Some(master) = opts.master_key.as_ref() else {
            return Err(ClusterError::MasterKeyRequired.into());
        };
        let secrets = secrets_key(master);
        let committer = Arc::new(Committer::new(opts.nodes.clone(), opts.durable_timeout));
        let unreachable = |why: String| ClusterError::Unreachable {
            nodes: opts.nodes.join(","),
            why,
        };
        let (primaries, replicas) = committer.refresh_all().await.map_err(unreachable)?;
        // A cluster serving no slots has no primaries to ask: ask the seeds, which then say
        // what is wrong (cluster_state).
        let seeds_if_none = if primaries.is_empty() {
            opts.nodes.clone()
        } else {
            Vec::new()
        };
        for node in primaries.iter().chain(&replicas).chain(&seeds_if_none) {
            check_node(node).await?;
        }
        for node in &primaries {
            load_functions(node).await?;
        }

        let conn = cluster_connection(&opts.nodes, Duration::from_secs(5))
            .await
            .map_err(|e| unreachable(e.to_string()))?;

        let wakes = Arc::new(wake::Wakes::default());
        let connect = wake::subscription_connector(urls(&opts.nodes), Arc::downgrade(&wakes));
        let sub = connect(wakes.generation())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(wake::run(Arc::downgrade(&wakes), sub, connect));
        let health = Arc::new(health::Health::default());
        tokio::spawn(health::run(
            Arc::downgrade(&health),
            Arc::downgrade(&committer),
            opts.durable_timeout,
        ));

        let mut store = Self {
            quotas: opts.quotas,
            retention_ms: opts.retention.map_or(0, |r| {
                u64::try_from(r.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            conn,
            committer,
            health,
            records: cache::RecordCache::default(),
            secrets,
            prf: IdPrf::new([0; 16]),
            wakes,
            expire_every: opts.expire_every,
        };
        store.prf = store.load_prf().await?;
        Ok(store)
    }

    /// The deposit-id PRF key all relays share: made by the first relay to start, sealed
    /// under the master key (SET NX, so two relays starting at once agree).
    async fn load_prf(&self) -> Result<IdPrf, StoreError> {
        let fresh: [u8; 16] = sealpost_core::random::array().map_err(backend)?;
        let sealed = record::seal(&self.secrets, keys::PRF_AAD, &fresh).map_err(backend)?;
        let _: Value = redis::cmd("SET")
            .arg(keys::PRF_KEY)
            .arg(sealed)
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(keys::PRF_KEY)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        let mut key = Zeroizing::new([0u8; 16]);
        record::open(&self.secrets, keys::PRF_AAD, &stored, &mut key[..]).map_err(|e| match e {
            RecordError::WrongMasterKey => StoreError::Backend(format!(
                "the master key does not open the cluster's {} (the key of the deposit ids): every relay of one cluster needs the same master key",
                keys::PRF_KEY
            )),
            other => backend(other),
        })?;
        Ok(IdPrf::new(*key))
    }

    /// The at-rest settle grace all relays of the cluster use (docs/AT-REST.md, "Several
    /// relays"): each epoch's deadline is its window's end plus the grace, set by the relay
    /// that seals and enforced by the nodes, and every relay's sweep must count on the same
    /// deadline, or one with a shorter grace could destroy a key while another relay's late
    /// envelope of the epoch is held. The first relay to start stores `mine` (SET NX,
    /// confirmed durable like a deposit); every relay answers the stored one.
    pub async fn agreed_settle(&self, mine: Duration) -> Result<Duration, StoreError> {
        let ms = u64::try_from(mine.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(keys::SETTLE_KEY).arg(ms).arg("NX");
        self.durable(keys::slot(keys::SETTLE_KEY.as_bytes()), &pipe, 1)
            .await?;
        let stored: Option<String> = self.query(redis::cmd("GET").arg(keys::SETTLE_KEY)).await?;
        settle_grace(stored.as_deref())
    }

    /// Runs `pipe` (`n` function calls, all in `slot`) on the slot's primary and waits until
    /// it is durable there and on a replica. When the primary could not be used (the slot
    /// moved, the node is gone or failing over) it learns the slot map again and retries once
    /// (safe: deposits are deduplicated); a WAITAOF that did not confirm in time is not
    /// retried (the time is spent).
    async fn durable(
        &self,
        slot: u16,
        pipe: &Pipeline,
        n: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let mut last = String::new();
        // Whose failure it is, for the store's health: "" while no primary is known.
        let mut failing = String::new();
        for _ in 0..2 {
            let Some(primary) = self.committer.primary_of(slot) else {
                if let Err(e) = self.committer.refresh().await {
                    last = format!("no node answers CLUSTER SLOTS: {e}");
                    break;
                }
                last = format!("no primary serves slot {slot}");
                continue;
            };
            match self.committer.commit(&primary, &mut pipe.clone(), n).await {
                Ok(v) => {
                    self.health.commit_ok(&primary);
                    return Ok(v);
                }
                Err(e @ commit::CommitError::NotDurable { .. }) => {
                    last = e.to_string();
                    failing = primary;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    failing = primary;
                    // A seed may be the node that is gone: a failed refresh keeps the old map.
                    let _ = self.committer.refresh().await;
                }
            }
        }
        self.health.commit_failed(&failing, &last);
        Err(backend(format!("not confirmed durable: {last}")))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(backend)
    }

    fn fcall(name: &str, k: &MailboxKeys) -> redis::Cmd {
        let mut c = redis::cmd("FCALL");
        c.arg(name).arg(k.keys.len()).arg(&k.keys[..]);
        c
    }

    /// The recipient id behind a deposit id, if its lookup key exists.
    async fn recipient_of_deposit(
        &self,
        id: &DepositId,
    ) -> Result<Option<RecipientId>, StoreError> {
        let v: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(keys::deposit_key(id)))
            .await?;
        Ok(v.and_then(|v| v.try_into().ok()))
    }

    async fn record(&self, rid: &RecipientId) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        let k = MailboxKeys::new(rid);
        let v: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(&k.keys[0]).arg("rec"))
            .await?;
        let Some(v) = v else { return Ok(None) };
        record::decode(rid, &v, Some(&self.secrets))
            .map(|r| Some(Arc::new(r)))
            .map_err(|e| match e {
                RecordError::WrongMasterKey => StoreError::Backend(
                    "the master key does not open a mailbox record in the cluster: every relay of one cluster needs the same master key".into(),
                ),
                other => backend(other),
            })
    }

    /// The primaries' addresses, from the current slot map.
    async fn primaries(&self) -> Result<Vec<String>, StoreError> {
        self.committer.refresh().await.map_err(backend)
    }

    /// Whether this store should sweep `primary` now: nobody swept it within this store's
    /// interval (and the sweep is then recorded, atomically). Any doubt (the slot map changed,
    /// an error) counts as yes: sweeping a primary twice costs time, never envelopes.
    async fn expiry_due(&self, c: &mut redis::aio::MultiplexedConnection, primary: &str) -> bool {
        let Some(every) = self.expire_every else {
            return true;
        };
        let Some(slot) = self
            .committer
            .slot_map()
            .into_iter()
            .find(|(_, _, p)| p == primary)
            .map(|(first, _, _)| first)
        else {
            return true;
        };
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        let due: Result<i64, _> = redis::cmd("EVAL")
            .arg(EXPIRY_DUE)
            .arg(1)
            .arg(keys::expiry_mark_key(slot))
            .arg(ms)
            .query_async(c)
            .await;
        !matches!(due, Ok(0))
    }

    /// Removes the envelopes stored before `cutoff` (ms) on one primary: a page of its
    /// mailboxes' streams at a time (SCAN), then one pipeline of `sp_expire` calls for the
    /// page on the same connection, so a sweep holds one page in memory and makes two round
    /// trips per page instead of one per mailbox.
    async fn expire_on(&self, primary: &str, cutoff: u64) -> Result<u64, StoreError> {
        let on = |e: redis::RedisError| backend(format!("expiry on {primary}: {e}"));
        let mut c = Committer::connect(primary, Duration::from_secs(5))
            .await
            .map_err(on)?;
        if !self.expiry_due(&mut c, primary).await {
            // Another relay swept this primary within this relay's interval.
            return Ok(0);
        }
        let mut removed = 0u64;
        let mut pages = keys::ScanPages::new(keys::STREAM_PATTERN, "stream");
        while let Some(streams) = pages.next(&mut c).await.map_err(on)? {
            let mut pipe = redis::pipe();
            for rid in streams.iter().filter_map(|k| keys::recipient_of(k)) {
                pipe.add_command(
                    Self::fcall("sp_expire", &MailboxKeys::new(&rid))
                        .arg(cutoff)
                        .arg(self.quotas.dedupe_window)
                        .to_owned(),
                );
            }
            if pipe.is_empty() {
                continue;
            }
            let answers: Vec<Value> = pipe.query_async(&mut c).await.map_err(on)?;
            for a in answers {
                match a {
                    Value::Int(n) => removed += u64::try_from(n).unwrap_or(0),
                    other => {
                        return Err(backend(format!(
                            "expiry on {primary}: sp_expire answered {other:?}"
                        )));
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn unexpected(node: &str, command: &'static str, e: redis::RedisError) -> ClusterError {
    ClusterError::Unexpected {
        node: node.to_owned(),
        command,
        what: e.to_string(),
    }
}

async fn connect_checked(node: &str) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
    Committer::connect(node, Duration::from_secs(5))
        .await
        .map_err(|e| ClusterError::Unreachable {
            nodes: node.to_owned(),
            why: e.to_string(),
        })
}

/// FUNCTION LOAD REPLACE on a primary (its replicas get the library through replication).
async fn load_functions(node: &str) -> Result<(), StoreError> {
    let mut c = connect_checked(node).await?;
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(FUNCTIONS)
        .query_async(&mut c)
        .await
        .map_err(|e| unexpected(node, "FUNCTION LOAD", e))?;
    Ok(())
}

/// The start-up checks on one node: every slot served, WAITAOF there, every write fsynced.
async fn check_node(node: &str) -> Result<(), StoreError> {
    let unexpected = |command: &'static str, e: redis::RedisError| unexpected(node, command, e);
    let mut c = connect_checked(node).await?;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut c)
        .await
        .map_err(|e| unexpected("CLUSTER INFO", e))?;
    checks::check_cluster_state(node, &info)?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .map_err(|e| unexpected("INFO server", e))?;
    checks::check_version(node, &info)?;
    let config: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .arg("appendfsync")
        .query_async(&mut c)
        .await
        .map_err(|e| unexpected("CONFIG GET", e))?;
    let config: Vec<(String, String)> = config.into_iter().collect();
    checks::check_fsync(node, &config)?;
    Ok(())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One FCALL answer of sp_deposit as an outcome.
fn outcome(v: &Value) -> Result<AppendOutcome, StoreError> {
    Ok(match v {
        Value::Int(seq) if *seq > 0 => AppendOutcome::Stored(*seq as u64),
        Value::Int(-1) => AppendOutcome::Duplicate,
        Value::Int(-2) => AppendOutcome::IdReused,
        Value::Int(-3) => AppendOutcome::UnknownMailbox,
        Value::Int(-4) => AppendOutcome::MailboxFull,
        Value::Int(-5) => AppendOutcome::Late,
        other => return Err(backend(format!("sp_deposit answered {other:?}"))),
    })
}

#[async_trait]
impl Store for ClusterStore {
    fn deposit_id_for(&self, recipient_id: &RecipientId) -> DepositId {
        self.prf.deposit_id(recipient_id)
    }

    /// The mailbox count (`keys::MAILBOX_COUNT`) is a reservation taken before the mailbox
    /// is made: INCR, confirmed durable, then refused (and given back) if over the limit. The
    /// INCR is atomic across relays, so concurrent creations through any number of relays
    /// never make more than `max_mailboxes`. The count lives in another slot than the mailbox,
    /// so no one function covers both; every gap between the two errs towards a count too
    /// high (an early refusal), never too low: a relay lost between INCR and giving back, a
    /// creation whose outcome is unknown (its reservation is kept, since the mailbox may
    /// exist), a give-back lost in a failover. docs/CLUSTER.md, "Status".
    async fn create_mailbox(&self, record: MailboxRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(keys::MAILBOX_COUNT);
        // Not given back when unconfirmed: the INCR may have been applied all the same.
        let count = match self
            .durable(keys::slot(keys::MAILBOX_COUNT.as_bytes()), &pipe, 1)
            .await?
            .first()
        {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            other => {
                return Err(backend(format!(
                    "INCR {} answered {other:?}",
                    keys::MAILBOX_COUNT
                )));
            }
        };
        let give_back = || async {
            // Not waited for: a give-back lost in a failover leaves the count high, which only
            // refuses early.
            let _: Result<i64, _> = self
                .query(redis::cmd("DECR").arg(keys::MAILBOX_COUNT))
                .await;
        };
        if count > self.quotas.max_mailboxes {
            give_back().await;
            return Err(StoreError::TooManyMailboxes(self.quotas.max_mailboxes));
        }
        let sealed = match record::encode(&record, Some(&self.secrets)) {
            Ok(s) => s,
            Err(e) => {
                give_back().await;
                return Err(backend(e));
            }
        };
        // The lookup key first (its value can only ever be this recipient id), then the
        // mailbox: a crash in between leaves a lookup key that names no mailbox (keys.rs).
        let dkey = keys::deposit_key(&record.deposit_id);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&dkey).arg(&record.recipient_id[..]);
        if let Err(e) = self.durable(keys::slot(dkey.as_bytes()), &pipe, 1).await {
            // No mailbox yet whatever became of the lookup key.
            give_back().await;
            return Err(e);
        }
        let k = MailboxKeys::new(&record.recipient_id);
        let mut pipe = redis::pipe();
        pipe.add_command(Self::fcall("sp_create", &k).arg(sealed).to_owned());
        match self.durable(k.slot(), &pipe, 1).await {
            Ok(v) if v.first() == Some(&Value::Int(1)) => Ok(()),
            Ok(_) => {
                give_back().await;
                Err(StoreError::Exists)
            }
            // The mailbox may exist (written, not confirmed): keep its reservation.
            Err(e) => Err(e),
        }
    }

    async fn lookup_deposit(
        &self,
        ids: &[DepositId],
    ) -> Result<Vec<Option<Arc<MailboxRecord>>>, StoreError> {
        // Recently read records from the cache (`cache.rs`: safe, since a record never
        // changes and a deletion is caught by the deposit function); each other id read once,
        // all at once (the cluster connection pipelines concurrent requests).
        let mut found: HashMap<DepositId, Option<Arc<MailboxRecord>>> = HashMap::new();
        for id in ids {
            found.entry(*id).or_insert_with(|| self.records.get(id));
        }
        let missing: Vec<DepositId> = found
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(id, _)| *id)
            .collect();
        let read = futures_util::future::try_join_all(missing.iter().map(|id| async move {
            match self.recipient_of_deposit(id).await? {
                Some(rid) => self.record(&rid).await,
                None => Ok(None),
            }
        }))
        .await?;
        for (id, rec) in missing.into_iter().zip(read) {
            if let Some(rec) = &rec {
                self.records.insert(rec.clone());
            }
            found.insert(id, rec);
        }
        Ok(ids
            .iter()
            .map(|id| found.get(id).cloned().flatten())
            .collect())
    }

    async fn mailbox(
        &self,
        recipient_id: &RecipientId,
    ) -> Result<Option<Arc<MailboxRecord>>, StoreError> {
        self.record(recipient_id).await
    }

    async fn delete_mailbox(&self, recipient_id: &RecipientId) -> Result<bool, StoreError> {
        let k = MailboxKeys::new(recipient_id);
        let mut pipe = redis::pipe();
        pipe.add_command(Self::fcall("sp_delete", &k));
        let existed = self.durable(k.slot(), &pipe, 1).await?.first() == Some(&Value::Int(1));
        self.records.forget(&self.deposit_id_for(recipient_id));
        // After the mailbox: a lookup key left by a crash here names no mailbox (keys.rs).
        let _: i64 = self
            .query(redis::cmd("DEL").arg(keys::deposit_key(&self.deposit_id_for(recipient_id))))
            .await?;
        if existed {
            let _: i64 = self
                .query(redis::cmd("DECR").arg(keys::MAILBOX_COUNT))
                .await?;
        }
        Ok(existed)
    }

    async fn append_batch(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut out = vec![AppendOutcome::UnknownMailbox; batch.len()];
        // Resolve each deposit id once: from the record cache (the relay has just looked the
        // mailboxes up), else all at once from the cluster.
        let mut rids: HashMap<DepositId, Option<RecipientId>> = HashMap::new();
        for a in batch {
            rids.entry(a.deposit_id)
                .or_insert_with(|| self.records.get(&a.deposit_id).map(|r| r.recipient_id));
        }
        let missing: Vec<DepositId> = rids
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(id, _)| *id)
            .collect();
        let read = futures_util::future::try_join_all(
            missing.iter().map(|id| self.recipient_of_deposit(id)),
        )
        .await?;
        rids.extend(missing.into_iter().zip(read));
        // Group by slot, then by primary: one pipeline per primary.
        let mut groups: HashMap<String, (Pipeline, Vec<usize>, u16)> = HashMap::new();
        for (i, a) in batch.iter().enumerate() {
            let Some(Some(rid)) = rids.get(&a.deposit_id) else {
                continue;
            };
            let k = MailboxKeys::new(rid);
            let slot = k.slot();
            let primary = match self.committer.primary_of(slot) {
                Some(p) => p,
                None => {
                    let found = match self.committer.refresh().await {
                        Ok(_) => self
                            .committer
                            .primary_of(slot)
                            .ok_or_else(|| format!("no primary serves slot {slot}")),
                        Err(e) => Err(format!("no node answers CLUSTER SLOTS: {e}")),
                    };
                    found.map_err(|why| {
                        self.health.commit_failed("", &why);
                        backend(why)
                    })?
                }
            };
            let g = groups
                .entry(primary)
                .or_insert_with(|| (redis::pipe(), Vec::new(), slot));
            g.0.add_command(
                Self::fcall("sp_deposit", &k)
                    .arg(&a.nonce[..])
                    .arg(&digest(&a.envelope)[..])
                    .arg(&a.envelope[..])
                    .arg(self.quotas.max_envelopes)
                    .arg(self.quotas.max_bytes)
                    .arg(self.quotas.dedupe_window)
                    .arg(self.retention_ms)
                    .arg(a.not_after.map_or(0, |t| millis(t).max(1)))
                    .to_owned(),
            );
            g.1.push(i);
        }
        let commits = groups.into_values().map(|(pipe, items, slot)| async move {
            // No fence write needed after the group: a DUPLICATE (an OK for an envelope
            // that may have come through another connection whose WAITAOF never confirmed
            // it) is itself a write in `sp_deposit`, so the WAITAOF covers the original.
            let answers = self.durable(slot, &pipe, items.len()).await?;
            Ok::<_, StoreError>((items, answers))
        });
        // Every primary's group at once; any group not confirmed durable fails the batch,
        // so no envelope of it is answered OK (a retry is safe: it is deduplicated).
        for r in futures_util::future::join_all(commits).await {
            let (items, answers) = r?;
            for (i, v) in items.into_iter().zip(answers.iter()) {
                out[i] = outcome(v)?;
            }
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        recipient_id: &RecipientId,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let k = MailboxKeys::new(recipient_id);
        let start = format!("{}-0", after.saturating_add(1));
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = self
            .query(
                redis::cmd("XRANGE")
                    .arg(&k.keys[1])
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max),
            )
            .await?;
        entries
            .into_iter()
            .map(|(id, mut fields)| {
                let seq = id
                    .split_once('-')
                    .and_then(|(s, _)| s.parse().ok())
                    .ok_or_else(|| backend(format!("stream entry id {id:?}")))?;
                let envelope = fields
                    .remove("e")
                    .ok_or_else(|| backend("stream entry without its envelope"))?;
                Ok(StoredEnvelope {
                    seq,
                    envelope: Bytes::from(envelope),
                })
            })
            .collect()
    }

    async fn ack(&self, recipient_id: &RecipientId, upto: u64) -> Result<u64, StoreError> {
        // Not waited for: an ack lost to a failover means a redelivery, never a loss.
        let k = MailboxKeys::new(recipient_id);
        self.query(
            Self::fcall("sp_ack", &k)
                .arg(upto)
                .arg(self.quotas.dedupe_window),
        )
        .await
    }

    async fn pending(&self, recipient_id: &RecipientId) -> Result<u64, StoreError> {
        let k = MailboxKeys::new(recipient_id);
        let n: Option<u64> = self
            .query(redis::cmd("HGET").arg(&k.keys[0]).arg("n"))
            .await?;
        Ok(n.unwrap_or(0))
    }

    fn watch(&self, recipient_id: &RecipientId) -> Option<watch::Receiver<u64>> {
        // The caller has just looked the mailbox up; a mailbox deleted since simply never
        // wakes, and its fetches come back empty.
        Some(self.wakes.watch(recipient_id))
    }

    /// Claims the mailbox's one subscription for a subscriber on this relay: every older
    /// claim, on any relay, ends (its `kicked` turns true), so a client's new subscription
    /// ends its old one wherever that is.
    async fn claim_subscriber(&self, recipient_id: &RecipientId) -> Result<Claim, StoreError> {
        // Watch first, so the channel is (being) subscribed before the claim is published;
        // a kick that still arrives before the subscription is caught by the epoch check
        // made once the channel is subscribed.
        let wake = self.wakes.watch(recipient_id);
        let k = MailboxKeys::new(recipient_id);
        let epoch: u64 = self.query(&Self::fcall("sp_claim", &k)).await?;
        if epoch == 0 {
            return Ok(Claim::UnknownMailbox);
        }
        let kicked = self.wakes.claim(recipient_id, epoch);
        let hold = wake::ClaimHold::new(&self.wakes, *recipient_id, wake);
        Ok(Claim::Held(SubscriberClaim::new(epoch, kicked, hold)))
    }

    async fn expire(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        // Every primary at once (as many sweeps in flight as primaries), each a page at a
        // time. A primary that fails fails the sweep after the others finished; the next
        // sweep (every `expire_interval`) tries again.
        let cutoff = millis(cutoff);
        let primaries = self.primaries().await?;
        let sweeps = primaries.iter().map(|p| self.expire_on(p, cutoff));
        let mut removed = 0;
        let mut failed = None;
        for r in futures_util::future::join_all(sweeps).await {
            match r {
                Ok(n) => removed += n,
                Err(e) => failed = Some(e),
            }
        }
        self.wakes.nudge();
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Every mailbox's oldest held envelope, listed on every primary at once (`heads.rs`),
    /// started by the earliest of their clocks. `None` while slots move between nodes or
    /// change primary during the listing: a mailbox may then have been missed.
    async fn held_heads(&self) -> Result<Option<HeldHeads>, StoreError> {
        let primaries = self.primaries().await?;
        let map = self.committer.slot_map();
        let lists = futures_util::future::join_all(
            primaries.iter().map(|p| heads::on_primary(p, &self.prf)),
        )
        .await;
        let mut started: Option<SystemTime> = None;
        let mut all = Vec::new();
        for l in lists {
            let Some((at, heads)) = l? else {
                return Ok(None);
            };
            started = Some(started.map_or(at, |s| s.min(at)));
            all.extend(heads);
        }
        self.primaries().await?;
        if self.committer.slot_map() != map {
            tracing::info!(
                "the Valkey cluster's slot map changed while the at-rest sweep listed mailbox heads; it lists again at its next run"
            );
            return Ok(None);
        }
        Ok(started.map(|started| HeldHeads {
            started,
            heads: all,
        }))
    }

    /// Never a round trip: what the background probe and the recent commits found
    /// (`health.rs`). An unavailable cluster is transient, never `failed`: the relay keeps
    /// running and takes deposits again once Valkey confirms writes.
    fn health(&self) -> StoreHealth {
        StoreHealth {
            unavailable: self.health.current(),
            ..StoreHealth::default()
        }
    }

    async fn stats(&self) -> StoreStats {
        // The per-slot counters (keys.rs), one pipeline per primary. A primary that does not
        // answer counts as empty: the gauges dip rather than the sampler stalling.
        let mut s = StoreStats::default();
        if self.committer.slots_by_primary().is_empty() {
            let _ = self.committer.refresh().await;
        }
        for (primary, slots) in self.committer.slots_by_primary() {
            let Some((host, port)) = primary
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            else {
                continue;
            };
            let mut pipe = redis::pipe();
            for slot in &slots {
                pipe.cmd("HMGET")
                    .arg(keys::stats_key(*slot))
                    .arg("m")
                    .arg("e")
                    .arg("b");
            }
            let answers = self
                .conn
                .clone()
                .route_pipeline(
                    pipe,
                    0,
                    slots.len(),
                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port },
                )
                .await;
            let Ok(answers) = answers else { continue };
            for a in answers {
                let Ok((m, e, b)) =
                    redis::from_redis_value::<(Option<i64>, Option<i64>, Option<i64>)>(a)
                else {
                    continue;
                };
                let add = |total: &mut u64, v: Option<i64>| {
                    *total = total.saturating_add(u64::try_from(v.unwrap_or(0)).unwrap_or(0));
                };
                add(&mut s.mailboxes, m);
                add(&mut s.envelopes, e);
                add(&mut s.bytes, b);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settle_grace_out_of_range_is_refused() {
        assert_eq!(
            settle_grace(Some("120000")).unwrap(),
            Duration::from_secs(120)
        );
        for bad in [
            None,
            Some("120"),
            Some("0"),
            Some("3600001"),
            Some("two minutes"),
        ] {
            let e = settle_grace(bad).unwrap_err().to_string();
            assert!(e.contains("SET sealpost:at-rest:settle 120000"), "{e}");
        }
    }
}
