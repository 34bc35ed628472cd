//! Whether the cluster store can take deposits now, for `/readyz`, `/servingz` and the
//! `sealpost_store_unavailable` gauge, without a round trip per question.
//!
//! Two sources, both kept here and read under a lock by [`Health::current`]:
//! - the outcome of recent commits: a group that no primary confirmed durable marks its
//!   primary (or the slot map, when no primary was known) as failing until a later commit on
//!   it succeeds, or a whole probe that started after the failure succeeds;
//! - a probe every second ([`run`]): the slot map read again from a seed, every slot served,
//!   and on each primary one small write confirmed by `WAITAOF 1 1`, that is fsynced on the
//!   primary and a replica, as a deposit must be. The probe is bounded by a timeout, so a node
//!   that stops answering without closing its connections counts as failing, not as silent.
//!
//! The state is transient: it clears by itself when Valkey is back, and the relay keeps
//! running through it (unlike the disk store's failed state, which makes the relay exit).

use super::commit::Committer;
use super::keys;
use crate::store::Unavailable;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Pause between the end of one probe and the start of the next.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe's time beyond its WAITAOF wait (connecting, CLUSTER SLOTS).
const PROBE_SLACK: Duration = Duration::from_secs(2);
/// How long the probe's key lives: it only needs to exist while its write is confirmed.
const PROBE_KEY_TTL_MS: u64 = 10_000;
/// The failures named in one reason; more are counted.
const NAMED: usize = 3;

/// What the store knows about its own availability.
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Commits not confirmed durable, by primary ("" for the slot map): why, and when.
    commits: HashMap<String, (String, Instant)>,
    /// What the last probe found wrong, if anything.
    probe: Option<Unavailable>,
    /// What [`Health::current`] answered last, to log changes once.
    reported: Option<Unavailable>,
}

impl State {
    fn current(&self) -> Option<Unavailable> {
        if let Some(p) = &self.probe {
            return Some(p.clone());
        }
        let mut failing: Vec<&String> = self.commits.values().map(|(why, _)| why).collect();
        failing.sort();
        let first = failing.first()?;
        let more = match failing.len() {
            1 => String::new(),
            n => format!(" (and {} other primaries)", n - 1),
        };
        Some(Unavailable {
            why: format!("recent deposits could not be confirmed durable: {first}{more}"),
            serves_nothing: false,
        })
    }

    /// Logs a change of the answer (once per change, without mailbox ids).
    fn note_change(&mut self) {
        let now = self.current();
        match (&self.reported, &now) {
            (None, Some(u)) => tracing::warn!(
                why = %u.why,
                "the cluster store cannot take deposits for now (/readyz answers 503); \
                 deposits are answered UNAVAILABLE until Valkey confirms writes again"
            ),
            (Some(_), None) => tracing::info!("the cluster store takes deposits again"),
            _ => {}
        }
        self.reported = now;
    }
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the store cannot take deposits now, if it cannot.
    pub fn current(&self) -> Option<Unavailable> {
        self.lock().current()
    }

    /// A commit on `primary` was confirmed durable.
    pub fn commit_ok(&self, primary: &str) {
        let mut s = self.lock();
        if s.commits.remove(primary).is_some() {
            s.note_change();
        }
    }

    /// A commit on `primary` ("" when no primary was known for its slot) was not confirmed.
    pub fn commit_failed(&self, primary: &str, why: &str) {
        let mut s = self.lock();
        s.commits
            .insert(primary.to_owned(), (why.to_owned(), Instant::now()));
        s.note_change();
    }

    /// A probe that started at `started` found `result`. A success also clears the commit
    /// failures from before it started: every primary confirmed a write since.
    pub fn probed(&self, started: Instant, result: Result<(), Unavailable>) {
        let mut s = self.lock();
        if result.is_ok() {
            s.commits.retain(|_, (_, at)| *at >= started);
        }
        s.probe = result.err();
        s.note_change();
    }
}

/// Probes the cluster every [`PROBE_INTERVAL`] until the store is gone; each probe waits at
/// most `wait` for WAITAOF and `wait` + [`PROBE_SLACK`] in all.
pub async fn run(health: Weak<Health>, committer: Weak<Committer>, wait: Duration) {
    let mut conns: HashMap<String, MultiplexedConnection> = HashMap::new();
    loop {
        let Some(c) = committer.upgrade() else { return };
        let started = Instant::now();
        let result =
            match tokio::time::timeout(wait + PROBE_SLACK, probe(&c, &mut conns, wait)).await {
                Ok(r) => r,
                Err(_) => {
                    // A connection may be stuck in a request: start afresh next time.
                    conns.clear();
                    Err(Unavailable {
                        why: format!(
                            "the Valkey cluster did not answer the probe within {:?}",
                            wait + PROBE_SLACK
                        ),
                        serves_nothing: true,
                    })
                }
            };
        drop(c);
        let Some(h) = health.upgrade() else { return };
        h.probed(started, result);
        drop(h);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One probe: the slot map, its coverage, and a write confirmed durable on every primary.
async fn probe(
    c: &Committer,
    conns: &mut HashMap<String, MultiplexedConnection>,
    wait: Duration,
) -> Result<(), Unavailable> {
    c.refresh().await.map_err(|why| Unavailable {
        why: format!("no Valkey node given in cluster_nodes answers CLUSTER SLOTS ({why})"),
        serves_nothing: true,
    })?;
    let by_primary = c.slots_by_primary();
    let served: usize = by_primary.values().map(Vec::len).sum();
    let mut failures = Vec::new();
    if served < keys::SLOTS {
        failures.push(format!(
            "{} of {} hash slots have no primary",
            keys::SLOTS - served,
            keys::SLOTS
        ));
    }
    let checks = by_primary.iter().filter_map(|(primary, slots)| {
        let slot = *slots.first()?;
        let conn = conns.remove(primary);
        Some(async move {
            let r = confirm(primary, conn, slot, wait).await;
            (primary.clone(), r)
        })
    });
    let mut confirmed = 0;
    for (primary, r) in futures_util::future::join_all(checks).await {
        match r {
            Ok(conn) => {
                confirmed += 1;
                conns.insert(primary, conn);
            }
            Err(why) => failures.push(format!("{primary}: {why}")),
        }
    }
    // Connections to nodes that are no longer primaries.
    conns.retain(|p, _| by_primary.contains_key(p));
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    let n = failures.len();
    let mut why = failures
        .into_iter()
        .take(NAMED)
        .collect::<Vec<_>>()
        .join("; ");
    if n > NAMED {
        why.push_str(&format!("; and {} more", n - NAMED));
    }
    Err(Unavailable {
        why: format!("cannot confirm writes durable: {why}"),
        serves_nothing: confirmed == 0,
    })
}

/// A small write in `slot` on `primary`, confirmed fsynced there and on a replica within
/// `wait`; hands the connection back for the next probe.
async fn confirm(
    primary: &str,
    conn: Option<MultiplexedConnection>,
    slot: u16,
    wait: Duration,
) -> Result<MultiplexedConnection, String> {
    let mut conn = match conn {
        Some(c) => c,
        None => Committer::connect(primary, wait)
            .await
            .map_err(|e| e.to_string())?,
    };
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let (counts,): ((i64, i64),) = redis::pipe()
        .cmd("SET")
        .arg(keys::probe_key(slot))
        .arg(1)
        .arg("PX")
        .arg(PROBE_KEY_TTL_MS)
        .ignore()
        .cmd("WAITAOF")
        .arg(1)
        .arg(1)
        .arg(wait_ms)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    match counts {
        (local, replicas) if local >= 1 && replicas >= 1 => Ok(conn),
        (local, replicas) => Err(format!(
            "a write was fsynced on {local} local and {replicas} replica(s) within {wait:?}, needs 1 and 1 (is a replica missing?)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(why: &str, serves_nothing: bool) -> Unavailable {
        Unavailable {
            why: why.into(),
            serves_nothing,
        }
    }

    #[test]
    fn a_failed_commit_lasts_until_a_success_there_or_a_later_whole_probe() {
        let h = Health::default();
        assert_eq!(h.current(), None);
        let before = Instant::now();
        h.commit_failed("a:1", "a:1: WAITAOF timed out");
        h.commit_failed("b:1", "b:1: connection refused");
        let u = h.current().expect("unavailable");
        assert!(!u.serves_nothing);
        assert!(
            u.why.contains("a:1: WAITAOF") && u.why.contains("1 other"),
            "{}",
            u.why
        );
        h.commit_ok("a:1");
        assert!(h.current().expect("b still failing").why.contains("b:1"));
        // A probe that started before the failure does not clear it.
        h.probed(before, Ok(()));
        assert!(h.current().is_some());
        h.probed(Instant::now(), Ok(()));
        assert_eq!(h.current(), None);
    }

    #[test]
    fn a_failed_probe_wins_and_clears_with_the_next() {
        let h = Health::default();
        h.probed(Instant::now(), Err(down("nothing answers", true)));
        assert_eq!(h.current(), Some(down("nothing answers", true)));
        h.commit_ok("a:1");
        assert!(
            h.current().is_some(),
            "a commit does not clear the probe's finding"
        );
        h.probed(Instant::now(), Ok(()));
        assert_eq!(h.current(), None);
    }
}
