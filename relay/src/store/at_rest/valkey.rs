//! The cluster store's keyring: one Valkey hash, `{sealpost}:at-rest:keys`, field `shard (1) ‖
//! window start (8)`, value `window end (8) ‖ wrapped key (60)`, shared by every relay of the
//! deployment, so that any relay opens what another sealed.
//!
//! A key is made with HSETNX (two relays making one epoch's key at once agree on the first)
//! followed, on the same connection, by `WAITAOF 1 1`: it is fsynced on its primary and a
//! replica before any envelope is sealed under it, like a deposit. A key is destroyed with HDEL
//! (then WAITAOF, so that a replica has it before its AOF is rewritten),
//! after which every node is asked to rewrite its append-only file (BGREWRITEAOF), since until
//! then the AOF still holds the HSETNX that wrote it, and to replace its RDB snapshot
//! (`BGSAVE SCHEDULE`, run once the rewrite is done), since a snapshot taken while the key
//! lived (by `save` settings, or received in a replica's full sync) holds it too. The old files
//! are deleted by Valkey (their blocks freed, not erased); copies made elsewhere (backups)
//! are out of reach: see docs/AT-REST.md.

use super::keyring::{KeyringError, KeyringStore, StoredKey, WRAPPED_LEN};
use super::record::EpochId;
use async_trait::async_trait;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The hash holding the wrapped keys.
pub const KEYRING_KEY: &str = "{sealpost}:at-rest:keys";
/// How many destructions are still owed a rewrite of every node's files (a counter in the
/// keyring's slot): kept in Valkey, not only by the relay that destroyed, so that another
/// relay's sweep pays the debt when that relay died between the HDEL and the rewrite.
pub const OWED_KEY: &str = "{sealpost}:at-rest:rewrite-owed";
/// Removes a key from the keyring hash and, if it was there, counts a rewrite owed, in one
/// atomic step (KEYS: the hash, the counter; ARGV: the field). Answers 1 if it removed it.
const DESTROY: &str = "if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then \
    redis.call('INCR', KEYS[2]) return 1 end return 0";
/// Clears the counter if it still holds what was read before the rewrite (a destruction since
/// then is owed another one). KEYS: the counter; ARGV: the value read.
const PAID: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('DEL', KEYS[1]) end return 0";
/// How long a key's creation waits for WAITAOF, in milliseconds.
const WAITAOF_MS: u64 = 2000;

/// The keyring in the Valkey cluster.
pub struct ValkeyKeys {
    conn: ClusterConnection,
    nodes: String,
    /// Set by a destruction, cleared once every node has started rewriting its AOF and has
    /// scheduled a snapshot after it.
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

    /// Asks every node to rewrite its files ([`rewrite_every_node`]) when this relay or any
    /// other destroyed keys since the last complete rewrite; the debt is paid once every node
    /// has.
    async fn rewrite_aof(&self) {
        let mut conn = self.conn.clone();
        let owed: Option<String> = match redis::cmd("GET")
            .arg(OWED_KEY)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read whether at-rest key destructions are owed an AOF rewrite; asking again at the next sweep");
                return;
            }
        };
        if owed.is_none() && !self.rewrite_owed() {
            return;
        }
        if rewrite_every_node(&mut conn).await {
            self.rewrite_owed.store(false, Ordering::Relaxed);
            if let Some(v) = owed {
                let paid: Result<Value, _> = redis::cmd("EVAL")
                    .arg(PAID)
                    .arg(1)
                    .arg(OWED_KEY)
                    .arg(v)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = paid {
                    // Only costs one more rewrite at a later sweep.
                    tracing::debug!(error = %e, "could not clear the owed AOF rewrite");
                }
            }
        }
    }

    /// Whether an AOF rewrite is still owed (the last request failed on some node).
    pub fn rewrite_owed(&self) -> bool {
        self.rewrite_owed.load(Ordering::Relaxed)
    }
}

/// Asks every node (primaries and replicas) to rewrite its append-only file and to replace
/// its RDB snapshot, so that a destroyed (or re-wrapped) key's old value leaves both; whether
/// every node did. Each node is asked on a connection of its own: the cluster client only
/// holds connections to the nodes it routes to (the primaries), and a command "for all
/// nodes" silently skips the others.
pub async fn rewrite_every_node(conn: &mut ClusterConnection) -> bool {
    let text: Result<String, _> = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await;
    let nodes = match text {
        Ok(t) => cluster_nodes(&t),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the Valkey nodes to rewrite their AOFs after changing at-rest keys (a relay asks again at its next sweep)");
            return false;
        }
    };
    let mut failed = 0;
    for node in &nodes {
        if let Err(e) = rewrite_one(node).await {
            failed += 1;
            // Typically a rewrite already in progress, which may have begun before the
            // change and so still copy the old value: ask again at the next sweep.
            tracing::warn!(
                error = %e,
                "a Valkey node did not start an AOF rewrite or schedule an RDB snapshot after at-rest keys changed (a relay asks again at its next sweep)"
            );
        }
    }
    failed == 0
}

/// Re-wraps every key of the cluster's keyring from master key `old` to `new`, in place
/// (HSET of the field, confirmed by WAITAOF); how many it re-wrapped. Keys already under
/// `new` are left alone, so running it again finishes an interrupted rotation. For
/// `rotate-master-key`, with the relays stopped.
pub async fn rotate_master_key(
    conn: &mut ClusterConnection,
    old: &[u8; 32],
    new: &[u8; 32],
) -> Result<usize, KeyringError> {
    let io = |why: String| KeyringError::Io {
        place: format!("{KEYRING_KEY} in the Valkey cluster"),
        why,
    };
    let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(KEYRING_KEY)
        .query_async(conn)
        .await
        .map_err(|e| io(e.to_string()))?;
    let (old_wrap, new_wrap) = (
        super::keyring::wrapping_key(old),
        super::keyring::wrapping_key(new),
    );
    let mut pipe = redis::pipe();
    let mut n = 0;
    let mut has_dedupe = false;
    for (f, v) in &all {
        let Some(mut k) = decode(f, v) else { continue };
        has_dedupe |= k.epoch == super::keyring::DEDUPE_SLOT;
        if let Some(w) = super::keyring::rewrap(&k, &old_wrap, &new_wrap).map_err(io)? {
            k.wrapped = w;
            pipe.cmd("HSET")
                .arg(KEYRING_KEY)
                .arg(&f[..])
                .arg(value(&k))
                .ignore();
            n += 1;
        }
    }
    if !has_dedupe {
        // A keyring from before the dedupe key was kept in it: its key was derived from the
        // old master key, and must not change with it.
        let k = super::keyring::dedupe_entry(old, &new_wrap).map_err(io)?;
        pipe.cmd("HSETNX")
            .arg(KEYRING_KEY)
            .arg(&field(k.epoch)[..])
            .arg(value(&k))
            .ignore();
        n += 1;
    }
    if n > 0 {
        pipe.cmd("WAITAOF").arg(1).arg(1).arg(WAITAOF_MS);
        let (acks,): ((i64, i64),) = pipe
            .query_async(conn)
            .await
            .map_err(|e| io(e.to_string()))?;
        if acks.0 < 1 || acks.1 < 1 {
            return Err(io(format!(
                "the re-wrapped keys were not confirmed fsynced on the primary and a replica within {WAITAOF_MS} ms; run the command again"
            )));
        }
    }
    Ok(n)
}

/// The addresses in a `CLUSTER NODES` answer (`<id> <ip:port@bus[,host]> <flags> ...` per
/// line) of the nodes that are not failed and have an address.
fn cluster_nodes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, addr, flags) = (f.next()?, f.next()?, f.next()?);
            if flags.contains("fail") || flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            (!addr.is_empty() && !addr.starts_with(':')).then(|| addr.to_owned())
        })
        .collect()
}

/// Sends BGREWRITEAOF, then `BGSAVE SCHEDULE`, to one node. A plain BGSAVE is refused while
/// the rewrite runs; SCHEDULE has the node start the snapshot as soon as the rewrite is done.
async fn rewrite_one(node: &str) -> Result<(), redis::RedisError> {
    let mut conn = redis::Client::open(format!("redis://{node}/"))?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await?;
    let _: Value = redis::cmd("BGREWRITEAOF").query_async(&mut conn).await?;
    let _: Value = redis::cmd("BGSAVE")
        .arg("SCHEDULE")
        .query_async(&mut conn)
        .await?;
    Ok(())
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
        // WAITAOF: the HDEL has reached a replica before any node is asked to rewrite its AOF,
        // or the replica's rewrite could still copy the key.
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(DESTROY)
            .arg(2)
            .arg(KEYRING_KEY)
            .arg(OWED_KEY)
            .arg(&field(epoch)[..])
            .cmd("WAITAOF")
            .arg(1)
            .arg(1)
            .arg(WAITAOF_MS);
        let (removed, acks): (i64, (i64, i64)) = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.io(e))?;
        if removed == 0 {
            // Another relay of the deployment destroyed it first and counted the rewrite
            // owed: whichever relay sweeps next pays it, once.
            return Ok(());
        }
        if acks.1 < 1 {
            tracing::warn!(
                "the destruction of an at-rest key was not confirmed on a Valkey replica in time; its AOF is rewritten anyway"
            );
        }
        self.rewrite_owed.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn settle(&self) {
        self.rewrite_aof().await;
    }

    fn describe(&self) -> String {
        format!("{KEYRING_KEY} in the Valkey cluster via {}", self.nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_every_live_node_with_an_address() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7003@17003,host-b slave a1 0 1 1 connected\n\
                    c3 127.0.0.1:7004@17004 slave,fail a1 0 1 1 disconnected\n\
                    d4 :0@0 master,noaddr - 0 1 1 disconnected\n";
        assert_eq!(cluster_nodes(text), ["127.0.0.1:7000", "127.0.0.1:7003"]);
    }
}
