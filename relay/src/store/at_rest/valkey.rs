//! The cluster store's keyring: one Valkey hash, `{sealpost}:at-rest:keys`, field `shard (1) ‖
//! window start (8)`, value `window end (8) ‖ wrapped key (60)`, shared by every relay of the
//! deployment, so that any relay opens what another sealed.
//!
//! A key is made with HSETNX (two relays making one epoch's key at once agree on the first)
//! followed, on the same connection, by `WAITAOF 1 1`: it is fsynced on its primary and a
//! replica before any envelope is sealed under it, like a deposit. A key is destroyed with HDEL,
//! after which every node is asked to rewrite its append-only file (BGREWRITEAOF): until then
//! the AOF still holds the HSETNX that wrote it. The old AOF files are deleted by Valkey (their
//! blocks freed, not erased), and RDB snapshots taken while the key lived keep it: see
//! docs/AT-REST.md.

use super::keyring::{KeyringError, KeyringStore, StoredKey, WRAPPED_LEN};
use super::record::EpochId;
use async_trait::async_trait;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The hash holding the wrapped keys.
pub const KEYRING_KEY: &str = "{sealpost}:at-rest:keys";
/// How long a key's creation waits for WAITAOF, in milliseconds.
const WAITAOF_MS: u64 = 2000;

/// The keyring in the Valkey cluster.
pub struct ValkeyKeys {
    conn: ClusterConnection,
    nodes: String,
    /// Set by a destruction, cleared once every node has started rewriting its AOF after it.
    rewrite_owed: AtomicBool,
}

fn field(e: EpochId) -> [u8; 9] {
    let mut f = [0u8; 9];
    f[0] = e.shard;
    f[1..].copy_from_slice(&e.start.to_be_bytes());
    f
}

fn value(k: &StoredKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + WRAPPED_LEN);
    v.extend_from_slice(&k.end.to_be_bytes());
    v.extend_from_slice(&k.wrapped);
    v
}

fn decode(f: &[u8], v: &[u8]) -> Option<StoredKey> {
    if f.len() != 9 || v.len() != 8 + WRAPPED_LEN {
        return None;
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&f[1..]);
    let mut end = [0u8; 8];
    end.copy_from_slice(&v[..8]);
    let mut wrapped = [0u8; WRAPPED_LEN];
    wrapped.copy_from_slice(&v[8..]);
    Some(StoredKey {
        epoch: EpochId {
            start: u64::from_be_bytes(start),
            shard: f[0],
        },
        end: u64::from_be_bytes(end),
        wrapped,
    })
}

impl ValkeyKeys {
    /// Connects to the cluster through `nodes` (`HOST:PORT`).
    pub async fn open(nodes: &[String]) -> Result<Self, KeyringError> {
        let joined = nodes.join(",");
        let io = |e: redis::RedisError| KeyringError::Io {
            place: format!("{KEYRING_KEY} in the Valkey cluster via {joined}"),
            why: e.to_string(),
        };
        let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
        let conn = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .build()
            .map_err(io)?
            .get_async_connection()
            .await
            .map_err(io)?;
        Ok(Self {
            conn,
            nodes: joined,
            rewrite_owed: AtomicBool::new(false),
        })
    }

    fn io(&self, why: impl std::fmt::Display) -> KeyringError {
        KeyringError::Io {
            place: self.describe(),
            why: why.to_string(),
        }
    }

    /// Asks every node (primaries and replicas) to rewrite its append-only file, so that the
    /// HSETNX of a destroyed key leaves the AOF.
    async fn rewrite_aof(&self) {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllNodes,
            Some(ResponsePolicy::AllSucceeded),
        ));
        let asked = self
            .conn
            .clone()
            .route_command(redis::cmd("BGREWRITEAOF"), routing)
            .await;
        match asked {
            Ok(_) => self.rewrite_owed.store(false, Ordering::Relaxed),
            Err(e) => {
                // Typically a rewrite already in progress, which may have begun before the
                // HDEL and so still copy the key: ask again at the next sweep.
                tracing::warn!(
                    error = %e,
                    "cannot start an AOF rewrite on every Valkey node after destroying at-rest keys; asking again at the next sweep"
                );
            }
        }
    }

    /// Whether an AOF rewrite is still owed (the last request failed on some node).
    pub fn rewrite_owed(&self) -> bool {
        self.rewrite_owed.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl KeyringStore for ValkeyKeys {
    async fn load(&self) -> Result<Vec<StoredKey>, KeyringError> {
        let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(KEYRING_KEY)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.io(e))?;
        Ok(all.iter().filter_map(|(f, v)| decode(f, v)).collect())
    }

    async fn put(&self, key: &StoredKey) -> Result<StoredKey, KeyringError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX")
            .arg(KEYRING_KEY)
            .arg(&field(key.epoch)[..])
            .arg(value(key))
            .ignore()
            .cmd("WAITAOF")
            .arg(1)
            .arg(1)
            .arg(WAITAOF_MS)
            .cmd("HGET")
            .arg(KEYRING_KEY)
            .arg(&field(key.epoch)[..]);
        let (acks, kept): ((i64, i64), Vec<u8>) = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.io(e))?;
        if acks.0 < 1 || acks.1 < 1 {
            return Err(self.io(format!(
                "a new epoch key was not confirmed fsynced on its primary and a replica within {WAITAOF_MS} ms (WAITAOF answered {} local, {} replicas)",
                acks.0, acks.1
            )));
        }
        decode(&field(key.epoch), &kept)
            .ok_or_else(|| self.io("the epoch key read back is malformed"))
    }

    async fn find(&self, epoch: EpochId) -> Result<Option<StoredKey>, KeyringError> {
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(KEYRING_KEY)
            .arg(&field(epoch)[..])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.io(e))?;
        Ok(v.and_then(|v| decode(&field(epoch), &v)))
    }

    async fn remove(&self, epoch: EpochId) -> Result<(), KeyringError> {
        let _: Value = redis::cmd("HDEL")
            .arg(KEYRING_KEY)
            .arg(&field(epoch)[..])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.io(e))?;
        self.rewrite_owed.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn settle(&self) {
        if self.rewrite_owed() {
            self.rewrite_aof().await;
        }
    }

    fn describe(&self) -> String {
        format!("{KEYRING_KEY} in the Valkey cluster via {}", self.nodes)
    }
}
