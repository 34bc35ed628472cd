//! Which epochs are closed: the sweep's decision, without I/O, so that it is tested alone.
//!
//! An epoch is closed once its window has ended, no append sealed under it is still running,
//! and no envelope of it can still be held. The last is read off the mailboxes' oldest held
//! envelopes: a mailbox holds its envelopes in the order they were stored, so if every
//! mailbox of the shard has its oldest envelope stored after the epoch's last append
//! returned (or holds none), none of the epoch's envelopes is left. No counter per epoch has
//! to be kept durable for that, and nothing can drift. A store that cannot list its
//! mailboxes' oldest envelopes gets the hard bound alone: the window ended longer ago than
//! the retention (plus a window), so expiry has removed every envelope of it.

use super::record::EpochId;
use sealpost_core::DepositId;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A live epoch the sweep may close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The epoch.
    pub epoch: EpochId,
    /// When its window ends, Unix seconds.
    pub end: u64,
    /// When its last append returned (every envelope of it was stored by then).
    pub last_return: SystemTime,
}

/// The oldest held envelope's `stored_at` per shard.
pub fn oldest_per_shard(heads: &[(DepositId, SystemTime)]) -> HashMap<u8, SystemTime> {
    let mut m: HashMap<u8, SystemTime> = HashMap::new();
    for (did, at) in heads {
        let e = m.entry(super::shard_of(did)).or_insert(*at);
        *e = (*e).min(*at);
    }
    m
}

/// The candidates that are closed at `now`, given the oldest held envelope per shard
/// (`None`: unknown) listed at `snapshot` (taken after the candidates were chosen), and the
/// hard bound `expire_after` past a window's end.
pub fn closed(
    candidates: &[Candidate],
    oldest: Option<&HashMap<u8, SystemTime>>,
    now: SystemTime,
    snapshot: SystemTime,
    expire_after: Duration,
) -> Vec<Candidate> {
    candidates
        .iter()
        .filter(|c| {
            let end = UNIX_EPOCH + Duration::from_secs(c.end);
            if end > now {
                return false;
            }
            if end.checked_add(expire_after).is_some_and(|t| t <= now) {
                return true;
            }
            let Some(oldest) = oldest else {
                return false;
            };
            // An append that returned after the listing began may be missing from it.
            c.last_return < snapshot
                && oldest
                    .get(&c.epoch.shard)
                    .is_none_or(|&at| at > c.last_return)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn did(shard: u8) -> DepositId {
        let mut d = [0u8; 16];
        d[15] = shard;
        d
    }

    fn cand(shard: u8, end: u64, last: u64) -> Candidate {
        Candidate {
            epoch: EpochId {
                start: end - 10,
                shard,
            },
            end,
            last_return: at(last),
        }
    }

    #[test]
    fn an_epoch_closes_once_no_mailbox_of_its_shard_holds_an_envelope_from_it() {
        let week = Duration::from_secs(1000);
        let c = [cand(1, 100, 95), cand(2, 100, 95), cand(3, 200, 195)];
        // Shard 1 holds an envelope stored at 90 (before the last append returned): open.
        // Shard 2 holds only envelopes stored after it: closed. Shard 3's window has not
        // ended.
        let heads = [(did(1), at(90)), (did(2), at(150)), (did(1), at(160))];
        let oldest = oldest_per_shard(&heads);
        let got = closed(&c, Some(&oldest), at(150), at(151), week);
        assert_eq!(got, [c[1]]);
        // Shard 1 drained: it closes too.
        let oldest = oldest_per_shard(&[(did(2), at(150))]);
        let got = closed(&c, Some(&oldest), at(150), at(151), week);
        assert_eq!(got, [c[0], c[1]]);
    }

    #[test]
    fn an_append_returning_after_the_listing_keeps_the_epoch_open() {
        let c = [cand(1, 100, 160)];
        let got = closed(
            &c,
            Some(&HashMap::new()),
            at(170),
            at(150),
            Duration::MAX / 2,
        );
        assert!(got.is_empty());
    }

    #[test]
    fn without_a_listing_only_the_retention_bound_closes() {
        let c = [cand(1, 100, 95)];
        let d = Duration::from_secs(50);
        assert!(closed(&c, None, at(149), at(149), d).is_empty());
        assert_eq!(closed(&c, None, at(150), at(150), d), c);
    }
}
