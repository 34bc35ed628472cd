//! Listing every mailbox's oldest held envelope for the at-rest sweep (`Store::held_heads`,
//! docs/AT-REST.md), the same way expiry walks the mailboxes: on every primary at once, a page
//! of its mailbox streams at a time (SCAN), then one pipeline of read-only `sp_head` calls for
//! the page, which answer only the head's stored-at time (never the envelope). Memory is one
//! page plus the result; the cost is a read of every mailbox stream per listing, like an
//! expiry sweep.
//!
//! The sweep compares the heads with deadlines enforced by the nodes' clocks, so the listing
//! also says when it started by those clocks: each primary's `TIME`, read before its SCAN (in
//! whole milliseconds, as `sp_deposit` stamps envelopes), the earliest of them. A listing
//! while slots move between nodes could miss a mailbox whose keys moved past both SCANs, and a
//! slot that changes primary mid-listing is served by a node whose clock was not read: such
//! a listing is not used (`None`); the next sweep lists again.

use super::commit::Committer;
use super::keys::{self, MailboxKeys};
use crate::store::StoreError;
use crate::store::index::IdPrf;
use redis::Value;
use sealpost_core::DepositId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One primary's heads and when its listing started by its clock; `None` if slots were moving
/// on it (before or after the listing).
pub type PrimaryHeads = Option<(SystemTime, Vec<(DepositId, SystemTime)>)>;

fn failed(primary: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "valkey cluster: listing the mailboxes' oldest envelopes on {primary}: {e}"
    ))
}

/// Lists the heads of the mailboxes on `primary`, deposit ids by `prf`.
pub async fn on_primary(primary: &str, prf: &IdPrf) -> Result<PrimaryHeads, StoreError> {
    let on = |e: redis::RedisError| failed(primary, e);
    let mut c = Committer::connect(primary, Duration::from_secs(5))
        .await
        .map_err(on)?;
    if slots_moving(&mut c, primary).await? {
        return Ok(None);
    }
    let (secs, micros): (String, String) =
        redis::cmd("TIME").query_async(&mut c).await.map_err(on)?;
    let started = match (secs.parse::<u64>(), micros.parse::<u64>()) {
        // Whole milliseconds, as `now_ms()` in the functions: an append stamped in the same
        // millisecond as the listing began counts as after it.
        (Ok(s), Ok(us)) => UNIX_EPOCH + Duration::from_millis(s * 1000 + us / 1000),
        _ => {
            return Err(failed(
                primary,
                format!("TIME answered {secs:?} {micros:?}"),
            ));
        }
    };
    let mut heads = Vec::new();
    let mut pages = keys::ScanPages::new(keys::STREAM_PATTERN, "stream");
    while let Some(streams) = pages.next(&mut c).await.map_err(on)? {
        let rids: Vec<_> = streams
            .iter()
            .filter_map(|k| keys::recipient_of(k))
            .collect();
        let mut pipe = redis::pipe();
        for rid in &rids {
            pipe.cmd("FCALL_RO")
                .arg("sp_head")
                .arg(1)
                .arg(&MailboxKeys::new(rid).keys[1]);
        }
        if pipe.is_empty() {
            continue;
        }
        let answers: Vec<Value> = pipe.query_async(&mut c).await.map_err(on)?;
        for (rid, a) in rids.iter().zip(answers) {
            match a {
                Value::Int(t) if t >= 0 => heads.push((
                    prf.deposit_id(rid),
                    UNIX_EPOCH + Duration::from_millis(t.unsigned_abs()),
                )),
                Value::Int(_) => {}
                other => {
                    return Err(failed(primary, format!("sp_head answered {other:?}")));
                }
            }
        }
    }
    if slots_moving(&mut c, primary).await? {
        return Ok(None);
    }
    Ok(Some((started, heads)))
}

/// Whether `primary` is migrating slots to or importing slots from another node now.
async fn slots_moving(
    c: &mut redis::aio::MultiplexedConnection,
    primary: &str,
) -> Result<bool, StoreError> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(c)
        .await
        .map_err(|e| failed(primary, e))?;
    let moving = moving_slots(&nodes);
    if moving {
        tracing::info!(
            primary,
            "slots are moving between Valkey nodes: the at-rest sweep does not use this listing of mailbox heads and lists again at its next run"
        );
    }
    Ok(moving)
}

/// Whether a `CLUSTER NODES` answer shows the answering node (`myself`) migrating or importing
/// a slot: its line then ends in entries like `[5461->-<node id>]` or `[5461-<-<node id>]`.
pub fn moving_slots(cluster_nodes: &str) -> bool {
    cluster_nodes
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
        })
        .any(|l| l.split_whitespace().any(|t| t.starts_with('[')))
}

#[cfg(test)]
mod tests {
    use super::moving_slots;

    #[test]
    fn a_slot_in_migration_on_the_node_itself_is_seen() {
        let steady = "07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                      67ed 127.0.0.1:7002@17002 master - 0 1426238316232 2 connected 5461-10922\n";
        assert!(!moving_slots(steady));
        let out =
            "07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461-<-67ed]\n";
        assert!(moving_slots(out));
        let out = "07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [93->-67ed]\n";
        assert!(moving_slots(out));
        // Another node's line is not this node's business (and never carries them anyway).
        let other = "67ed 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [5461->-07c3]\n\
                     07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n";
        assert!(!moving_slots(other));
    }
}
