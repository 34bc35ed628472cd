//! `rotate-master-key` for the cluster store: re-seals, in place in Valkey, everything the
//! cluster keeps under the master key: the deposit-id PRF key (`sealpost:prf`), every
//! mailbox's record (`rec` of `{m:<rid>}`) and the at-rest keyring (epoch keys and the dedupe
//! key). The relays must be stopped (they cache records and hold the old key).
//!
//! Each value is tried under the new key first and left alone if it opens, so running the
//! command again after an interruption finishes the job. Nothing is copied out: the values are
//! replaced where they are, each primary's writes confirmed by `WAITAOF 1 1` like a deposit.
//! The old values stay in the nodes' AOF until it is rewritten, so every node is asked to
//! rewrite it (and to replace its snapshot) at the end, as after an epoch key's destruction.

use super::commit::Committer;
use super::keys;
use super::{ClusterError, backend};
use crate::store::StoreError;
use crate::store::at_rest::valkey;
use crate::store::record::{self, RecordError, secrets_key};
use redis::aio::MultiplexedConnection;
use sealpost_core::{AeadKey, RecipientId};
use std::time::Duration;

/// How long each primary's WAITAOF may take.
const DURABLE: Duration = Duration::from_secs(5);

/// What a rotation re-sealed (values already under the new key are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Mailbox records.
    pub records: u64,
    /// Whether the deposit-id PRF key was re-sealed.
    pub prf: bool,
    /// Wrapped keys of the at-rest keyring (epoch keys and the dedupe key).
    pub keyring: usize,
    /// Whether every node started rewriting its AOF and scheduled a snapshot afterwards
    /// (until then the old values are in those files).
    pub rewritten: bool,
}

/// Re-seals what the cluster at `nodes` keeps under the master key `old` under `new`.
pub async fn rotate_master_key(
    nodes: &[String],
    old: &[u8; 32],
    new: &[u8; 32],
) -> Result<Rotated, StoreError> {
    if nodes.is_empty() {
        return Err(ClusterError::NoNodes.into());
    }
    let unreachable = |why: String| ClusterError::Unreachable {
        nodes: nodes.join(","),
        why,
    };
    let (old_key, new_key) = (secrets_key(old), secrets_key(new));
    let committer = Committer::new(nodes.to_vec(), DURABLE);
    let (primaries, _) = committer.refresh_all().await.map_err(unreachable)?;
    if primaries.is_empty() {
        return Err(unreachable("no node serves any slot".into()).into());
    }
    let mut out = Rotated::default();
    for primary in &primaries {
        out.records += records_on(primary, &old_key, &new_key).await?;
    }
    let mut conn = super::cluster_connection(nodes, Duration::from_secs(10))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    out.prf = prf(&mut conn, &old_key, &new_key).await?;
    out.keyring = valkey::rotate_master_key(&mut conn, old, new)
        .await
        .map_err(|e| StoreError::AtRest(e.into()))?;
    // The old values are still in the append-only files (and any snapshot): have every node
    // write them out of both.
    out.rewritten = valkey::rewrite_every_node(&mut conn).await;
    Ok(out)
}

/// Re-seals a value sealed under `old` (with `aad`, opening to `len` bytes) under `new`;
/// `None` if it is under `new` already.
fn reseal(
    old: &AeadKey,
    new: &AeadKey,
    aad: &[u8],
    sealed: &[u8],
    len: usize,
    what: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    record::reseal(old, new, aad, sealed, len).map_err(|e| match e {
        RecordError::WrongMasterKey => StoreError::Backend(format!(
            "{what} opens under neither the old nor the new master key: is --old-key-file the key the cluster's relays use?"
        )),
        other => backend(other),
    })
}

/// Re-seals the deposit-id PRF key; whether it changed.
async fn prf(
    conn: &mut redis::cluster_async::ClusterConnection,
    old: &AeadKey,
    new: &AeadKey,
) -> Result<bool, StoreError> {
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys::PRF_KEY)
        .query_async(conn)
        .await
        .map_err(backend)?;
    let Some(stored) = stored else {
        return Ok(false);
    };
    let Some(sealed) = reseal(old, new, keys::PRF_AAD, &stored, 16, keys::PRF_KEY)? else {
        return Ok(false);
    };
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(keys::PRF_KEY)
        .arg(sealed)
        .ignore()
        .cmd("WAITAOF")
        .arg(1)
        .arg(1)
        .arg(DURABLE.as_millis() as u64);
    let (acks,): ((i64, i64),) = pipe.query_async(conn).await.map_err(backend)?;
    durable(keys::PRF_KEY, acks)?;
    Ok(true)
}

fn durable(what: &str, acks: (i64, i64)) -> Result<(), StoreError> {
    if acks.0 < 1 || acks.1 < 1 {
        return Err(backend(format!(
            "{what}: the re-sealed value was not confirmed fsynced on a primary and a replica (WAITAOF answered {} local, {} replicas); run the command again",
            acks.0, acks.1
        )));
    }
    Ok(())
}

/// Re-seals the mailbox records on one primary, a SCAN page at a time; how many changed.
async fn records_on(primary: &str, old: &AeadKey, new: &AeadKey) -> Result<u64, StoreError> {
    let on = |e: redis::RedisError| backend(format!("{primary}: {e}"));
    let mut c = Committer::connect(primary, DURABLE).await.map_err(on)?;
    let mut changed = 0u64;
    let mut pages = keys::ScanPages::new("{m:*}", "hash");
    while let Some(found) = pages.next(&mut c).await.map_err(on)? {
        // The dedupe hashes (`{m:<rid>}:d`) match the pattern too; only the main hashes name
        // a mailbox exactly.
        let mailboxes: Vec<(Vec<u8>, RecipientId)> = found
            .into_iter()
            .filter_map(|k| {
                keys::recipient_of(&k)
                    .filter(|_| k.len() == 36)
                    .map(|r| (k, r))
            })
            .collect();
        changed += page(&mut c, primary, &mailboxes, old, new).await?;
    }
    Ok(changed)
}

/// Re-seals the records of one page of mailboxes on one primary.
async fn page(
    c: &mut MultiplexedConnection,
    primary: &str,
    mailboxes: &[(Vec<u8>, RecipientId)],
    old: &AeadKey,
    new: &AeadKey,
) -> Result<u64, StoreError> {
    if mailboxes.is_empty() {
        return Ok(0);
    }
    let on = |e: redis::RedisError| backend(format!("{primary}: {e}"));
    let mut read = redis::pipe();
    for (k, _) in mailboxes {
        read.cmd("HGET").arg(k).arg("rec");
    }
    let recs: Vec<Option<Vec<u8>>> = read.query_async(c).await.map_err(on)?;
    let mut write = redis::pipe();
    let mut n = 0u64;
    for ((k, rid), rec) in mailboxes.iter().zip(recs) {
        // A mailbox deleted since the SCAN.
        let Some(rec) = rec else { continue };
        if record::decode(rid, &rec, Some(new)).is_ok() {
            continue;
        }
        let r = record::decode(rid, &rec, Some(old)).map_err(|e| match e {
            RecordError::WrongMasterKey => StoreError::Backend(format!(
                "a mailbox record on {primary} opens under neither the old nor the new master key: is --old-key-file the key the cluster's relays use?"
            )),
            other => backend(format!("{primary}: {other}")),
        })?;
        let sealed = record::encode(&r, Some(new)).map_err(backend)?;
        write.cmd("HSET").arg(k).arg("rec").arg(sealed).ignore();
        n += 1;
    }
    if n > 0 {
        write
            .cmd("WAITAOF")
            .arg(1)
            .arg(1)
            .arg(DURABLE.as_millis() as u64);
        let (acks,): ((i64, i64),) = write.query_async(c).await.map_err(on)?;
        durable(&format!("mailbox records on {primary}"), acks)?;
    }
    Ok(n)
}
