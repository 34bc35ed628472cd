//! Which epochs are closed: the sweep's decision, without I/O, so that it is tested alone.
//!
//! An epoch is closed once its window has ended, no append sealed under it is still running,
//! and no envelope of it can still be held. The last is read off the mailboxes' oldest held
//! envelopes: a mailbox holds its envelopes in the order they were stored, so if every
//! mailbox of the shard has its oldest envelope stored after the epoch's last envelope was
//! stored (or holds none), none of the epoch's envelopes is left. No counter per epoch has
//! to be kept durable for that, and nothing can drift. A store that cannot list its
//! mailboxes' oldest envelopes gets the hard bound alone: the window ended longer ago than
//! the retention (plus a window), so expiry has removed every envelope of it.
//!
//! When the epoch's last envelope was stored ([`Candidate::last_return`]) is known one of two
//! ways ([`Rule`]): on a store only this process uses, from its own appends (when the last
//! one returned); on a store several relays share, from a deadline the store itself enforces
//! (the window's end plus a settle grace, by the store's clock), since another relay may
//! still be appending under the epoch.

use super::record::EpochId;
use crate::store::HeldHeads;
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
    /// Every envelope of the epoch was stored (its `stored_at` set) by then, by the clock that
    /// stamps `stored_at`.
    pub last_return: SystemTime,
    /// A listing of the mailboxes' heads tells whether the epoch is closed only if it started
    /// after this: `last_return` on a local store; on a shared store one settle grace later,
    /// so that a node whose clock is behind the listed primaries' (a replica promoted after
    /// the listing) by less than the grace is past the deadline too.
    pub list_after: SystemTime,
}

/// What this process knows about the appends sealed under one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// Appends sealed under it that have not returned yet.
    pub in_flight: u32,
    /// When the last of its appends returned: every envelope of the epoch this process
    /// appended was stored by then.
    pub last_return: SystemTime,
}

/// How the sweep learns when an epoch's last envelope was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Only this process appends to the store (the memory and disk stores): the epoch's
    /// last envelope was stored when this process's last append under it returned; an epoch
    /// it has not appended under since it opened the store, before `opened_at`.
    Local {
        /// When this process opened the store.
        opened_at: SystemTime,
    },
    /// Several relays append to the store (the cluster store), so this process's appends
    /// are not all there are. Every append sealed under an epoch carries the deadline
    /// `end + settle` ([`crate::store::Append::not_after`]), which the store enforces by its
    /// own clock: the epoch's last envelope was stored by then, by the clock that stamps
    /// `stored_at`, whichever relay appended it.
    Shared {
        /// The grace after a window's end during which envelopes sealed under it are still
        /// stored: longer than an append takes plus the relays' clock differences.
        settle: Duration,
    },
}

impl Rule {
    /// The deadline of appends sealed under an epoch whose window ends at `end` (Unix
    /// seconds): none on a store only this process uses.
    pub fn not_after(&self, end: u64) -> Option<SystemTime> {
        match self {
            Self::Local { .. } => None,
            Self::Shared { settle } => Some(UNIX_EPOCH + Duration::from_secs(end) + *settle),
        }
    }

    /// The candidate for the live epoch `epoch` ending at `end`, given what this process
    /// knows of its appends; `None` while one of them is running.
    pub fn candidate(&self, epoch: EpochId, end: u64, used: Option<&Use>) -> Option<Candidate> {
        if used.is_some_and(|u| u.in_flight > 0) {
            return None;
        }
        let (last_return, list_after) = match self {
            Self::Local { opened_at } => {
                let t = used.map_or(*opened_at, |u| u.last_return.max(UNIX_EPOCH));
                (t, t)
            }
            Self::Shared { settle } => {
                let deadline = self.not_after(end)?;
                (deadline, deadline.checked_add(*settle)?)
            }
        };
        Some(Candidate {
            epoch,
            end,
            last_return,
            list_after,
        })
    }

    /// Whether `c`, found closed, may still be destroyed given what this process knows of
    /// its appends now: no append began under it since the candidates were chosen (on a
    /// shared store one that did is refused by the store's deadline, but it is left to the
    /// next sweep all the same).
    pub fn still_closed(&self, c: &Candidate, used: Option<&Use>) -> bool {
        used.is_none_or(|u| {
            u.in_flight == 0
                && match self {
                    Self::Local { .. } => u.last_return.max(UNIX_EPOCH) <= c.last_return,
                    Self::Shared { .. } => true,
                }
        })
    }

    /// The least time between two listings of the mailboxes' heads. On a local store a
    /// listing is one pass over an index in memory: every sweep may list. On a shared store it
    /// reads every mailbox stream of the cluster (as an expiry sweep does), and an epoch kept
    /// open by a mailbox whose recipient is offline would have every sweep list again: one
    /// window apart there, but never more than a minute (so that a key goes within a minute
    /// of its shard draining past the deadline) nor less than a second.
    pub fn list_every(&self, window: Duration) -> Duration {
        match self {
            Self::Local { .. } => Duration::ZERO,
            Self::Shared { .. } => window.clamp(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// How long after a window's end its key goes even without a listing: the retention plus
    /// a window (expiry has removed every envelope by then), plus the settle grace on a shared
    /// store (its envelopes may be stored that much later).
    pub fn expire_after(&self, retention: Duration, window: Duration) -> Duration {
        let bound = retention.saturating_add(window);
        match self {
            Self::Local { .. } => bound,
            Self::Shared { settle } => bound.saturating_add(*settle),
        }
    }
}

/// The oldest held envelope's `stored_at` per shard, and when the listing started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The oldest held envelope's `stored_at` per shard.
    pub oldest: HashMap<u8, SystemTime>,
    /// When the listing started, by the clock that stamps `stored_at`.
    pub started: SystemTime,
}

impl Listing {
    /// The listing of `heads`.
    pub fn new(heads: &HeldHeads) -> Self {
        Self {
            oldest: oldest_per_shard(&heads.heads),
            started: heads.started,
        }
    }
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

fn window_end(c: &Candidate) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(c.end)
}

fn past_bound(c: &Candidate, now: SystemTime, expire_after: Duration) -> bool {
    window_end(c)
        .checked_add(expire_after)
        .is_some_and(|t| t <= now)
}

/// Whether listing the mailboxes' heads can close any of `candidates` at `now`: some
/// candidate's window has ended, its last envelope was stored before now, and it is not
/// closed by the hard bound `expire_after` anyway. The sweep lists only then (a listing of
/// the cluster store reads every mailbox's head).
pub fn worth_listing(candidates: &[Candidate], now: SystemTime, expire_after: Duration) -> bool {
    candidates
        .iter()
        .any(|c| window_end(c) <= now && c.list_after < now && !past_bound(c, now, expire_after))
}

/// The candidates that are closed at `now`, given the mailboxes' heads `listing` (`None`:
/// unknown; started after the candidates were chosen) and the hard bound `expire_after` past
/// a window's end.
pub fn closed(
    candidates: &[Candidate],
    listing: Option<&Listing>,
    now: SystemTime,
    expire_after: Duration,
) -> Vec<Candidate> {
    candidates
        .iter()
        .filter(|c| {
            if window_end(c) > now {
                return false;
            }
            if past_bound(c, now, expire_after) {
                return true;
            }
            let Some(l) = listing else {
                return false;
            };
            // An envelope stored after the listing began may be missing from it.
            c.list_after < l.started
                && l.oldest
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
            list_after: at(last),
        }
    }

    fn listing(heads: &[(DepositId, SystemTime)], started: u64) -> Listing {
        Listing {
            oldest: oldest_per_shard(heads),
            started: at(started),
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
        let got = closed(&c, Some(&listing(&heads, 151)), at(150), week);
        assert_eq!(got, [c[1]]);
        // Shard 1 drained: it closes too.
        let got = closed(&c, Some(&listing(&[(did(2), at(150))], 151)), at(150), week);
        assert_eq!(got, [c[0], c[1]]);
    }

    #[test]
    fn an_append_returning_after_the_listing_keeps_the_epoch_open() {
        let c = [cand(1, 100, 160)];
        let got = closed(&c, Some(&listing(&[], 150)), at(170), Duration::MAX / 2);
        assert!(got.is_empty());
    }

    #[test]
    fn without_a_listing_only_the_retention_bound_closes() {
        let c = [cand(1, 100, 95)];
        let d = Duration::from_secs(50);
        assert!(closed(&c, None, at(149), d).is_empty());
        assert_eq!(closed(&c, None, at(150), d), c);
    }

    const SHARED: Rule = Rule::Shared {
        settle: Duration::from_secs(30),
    };

    fn epoch(shard: u8, end: u64) -> EpochId {
        EpochId {
            start: end - 10,
            shard,
        }
    }

    #[test]
    fn on_a_shared_store_the_last_envelope_is_bounded_by_the_deadline_not_by_local_appends() {
        let used = Use {
            in_flight: 0,
            last_return: at(101),
        };
        // This relay's last append returned at 101, but another relay may append until the
        // deadline, 130, which is what the candidate carries (and what appends carry).
        let c = SHARED.candidate(epoch(1, 100), 100, Some(&used)).unwrap();
        assert_eq!(c.last_return, at(130));
        assert_eq!(SHARED.not_after(100), Some(at(130)));
        // Without appends of its own (another relay made the key) the same.
        assert_eq!(SHARED.candidate(epoch(1, 100), 100, None), Some(c));
        // A running append keeps the epoch from being a candidate, as on a local store.
        let running = Use {
            in_flight: 1,
            ..used
        };
        assert_eq!(SHARED.candidate(epoch(1, 100), 100, Some(&running)), None);
        // Locally the last return is the relay's own.
        let local = Rule::Local { opened_at: at(50) };
        assert_eq!(local.not_after(100), None);
        let lc = local.candidate(epoch(1, 100), 100, Some(&used)).unwrap();
        assert_eq!(lc.last_return, at(101));
        assert_eq!(
            local
                .candidate(epoch(1, 100), 100, None)
                .unwrap()
                .last_return,
            at(50)
        );
    }

    #[test]
    fn on_a_shared_store_an_epoch_closes_only_after_a_listing_started_a_grace_past_the_deadline() {
        let week = SHARED.expire_after(Duration::from_secs(1000), Duration::from_secs(10));
        let c = [SHARED.candidate(epoch(1, 100), 100, None).unwrap()];
        assert_eq!(c[0].last_return, at(130));
        assert_eq!(c[0].list_after, at(160));
        // The window ended at 100, nothing is held, but the listing started at 129 by the
        // store's clock: a late envelope (another relay's, or one in flight at the boundary)
        // may still be stored until 130 and be missing from it. Until 160 a node whose clock
        // is behind the listed ones' by less than the grace might still take one.
        for started in [129, 130, 159, 160] {
            assert!(closed(&c, Some(&listing(&[], started)), at(200), week).is_empty());
        }
        assert_eq!(closed(&c, Some(&listing(&[], 161)), at(200), week), c);
        // A mailbox of the shard whose oldest envelope was stored at the deadline may hold one
        // of the epoch's: open. Stored after it: not the epoch's, closed.
        let held = |t| listing(&[(did(1), t)], 161);
        assert!(closed(&c, Some(&held(at(130))), at(200), week).is_empty());
        let after = held(at(130) + Duration::from_millis(1));
        assert_eq!(closed(&c, Some(&after), at(200), week), c);
        // Another shard's heads do not matter.
        assert_eq!(
            closed(&c, Some(&listing(&[(did(2), at(90))], 161)), at(200), week),
            c
        );
        // The relay's own clock (`now`) deciding the window has not ended keeps it open.
        assert!(closed(&c, Some(&listing(&[], 161)), at(99), week).is_empty());
    }

    #[test]
    fn on_a_shared_store_the_hard_bound_allows_for_the_settle_grace() {
        let retention = Duration::from_secs(1000);
        let window = Duration::from_secs(10);
        let bound = SHARED.expire_after(retention, window);
        assert_eq!(bound, Duration::from_secs(1040));
        let local = Rule::Local { opened_at: at(0) };
        assert_eq!(
            local.expire_after(retention, window),
            Duration::from_secs(1010)
        );
        // An envelope stored at the deadline (130) expires at 1130; the key goes at 1140.
        let c = [SHARED.candidate(epoch(1, 100), 100, None).unwrap()];
        assert!(closed(&c, None, at(1139), bound).is_empty());
        assert_eq!(closed(&c, None, at(1140), bound), c);
    }

    #[test]
    fn a_shared_epoch_found_closed_stays_closed_unless_an_append_is_running_now() {
        let c = SHARED.candidate(epoch(1, 100), 100, None).unwrap();
        let late = Use {
            in_flight: 0,
            last_return: at(500),
        };
        // An append that returned since (refused by the store, or stored before the
        // deadline and so in the listing) does not matter on a shared store; locally it does.
        assert!(SHARED.still_closed(&c, Some(&late)));
        let local = Rule::Local { opened_at: at(0) };
        let lc = local.candidate(epoch(1, 100), 100, None).unwrap();
        assert!(!local.still_closed(&lc, Some(&late)));
        let running = Use {
            in_flight: 1,
            ..late
        };
        assert!(!SHARED.still_closed(&c, Some(&running)));
        assert!(SHARED.still_closed(&c, None));
    }

    #[test]
    fn a_shared_store_is_listed_at_most_once_a_window_and_at_least_once_a_minute() {
        let local = Rule::Local { opened_at: at(0) };
        assert_eq!(local.list_every(Duration::from_secs(3600)), Duration::ZERO);
        let every = |w| SHARED.list_every(Duration::from_secs(w)).as_secs();
        assert_eq!(every(3600), 60);
        assert_eq!(every(10), 10);
        assert_eq!(every(1), 1);
    }

    #[test]
    fn a_listing_is_worth_it_only_for_an_epoch_it_could_close() {
        let bound = Duration::from_secs(1000);
        let c = [SHARED.candidate(epoch(1, 100), 100, None).unwrap()];
        // Window not ended, or not yet past the deadline: nothing to list for.
        assert!(!worth_listing(&c, at(99), bound));
        assert!(!worth_listing(&c, at(130), bound));
        assert!(!worth_listing(&c, at(160), bound));
        assert!(worth_listing(&c, at(161), bound));
        // Past the hard bound it closes without a listing.
        assert!(!worth_listing(&c, at(1100), bound));
        assert!(!worth_listing(&[], at(161), bound));
    }
}
