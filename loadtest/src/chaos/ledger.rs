//! The books of a chaos run: every envelope sent, every answer the relays gave to every
//! attempt, what is still to be sent again, and what the recipients were delivered.

use crate::message::Stamp;
use bytes::Bytes;
use hdrhistogram::Histogram;
use sealpost_core::status::DepositStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An envelope: (mailbox index, message id within the mailbox).
pub type Key = (u32, u64);

/// How one attempt at a deposit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored.
    Ok,
    /// Stored before (by an earlier attempt).
    Duplicate,
    /// The relay could not store it now (its store did not confirm in time); sent again.
    Unavailable,
    /// Refused for good with another status (none is expected in a chaos run).
    Rejected,
    /// No answer: the connection was lost and not regained in time, or the attempt timed
    /// out; sent again.
    Unanswered,
}

impl Outcome {
    /// The outcome a deposit status means.
    pub fn of(status: DepositStatus) -> Self {
        match status {
            DepositStatus::Ok => Self::Ok,
            DepositStatus::Duplicate => Self::Duplicate,
            DepositStatus::Unavailable => Self::Unavailable,
            _ => Self::Rejected,
        }
    }

    /// Whether the envelope counts as stored.
    pub fn acked(self) -> bool {
        matches!(self, Self::Ok | Self::Duplicate)
    }

    /// Whether the envelope is sent again.
    pub fn retried(self) -> bool {
        matches!(self, Self::Unavailable | Self::Unanswered)
    }
}

/// One attempt, with times in seconds since the load started.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Which envelope.
    pub key: Key,
    /// When it was sent.
    pub sent_s: f64,
    /// When its answer came (or the attempt was given up).
    pub answered_s: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Answers counted by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// OK.
    pub ok: u64,
    /// DUPLICATE.
    pub duplicate: u64,
    /// UNAVAILABLE.
    pub unavailable: u64,
    /// Any other status.
    pub rejected: u64,
    /// No answer.
    pub unanswered: u64,
}

impl OutcomeCounts {
    /// Counts one more `o`.
    pub fn add(&mut self, o: Outcome) {
        *match o {
            Outcome::Ok => &mut self.ok,
            Outcome::Duplicate => &mut self.duplicate,
            Outcome::Unavailable => &mut self.unavailable,
            Outcome::Rejected => &mut self.rejected,
            Outcome::Unanswered => &mut self.unanswered,
        } += 1;
    }

    /// All attempts counted.
    pub fn total(&self) -> u64 {
        self.ok + self.duplicate + self.unavailable + self.rejected + self.unanswered
    }
}

/// The books; shared by the depositors, the recipients and the kill loop.
pub struct Ledger {
    /// When the load started.
    pub t0: Instant,
    /// Next message id per mailbox.
    next_id: Vec<u64>,
    /// Next mailbox to deposit a new envelope to.
    next_mailbox: u32,
    /// Sent, neither stored nor refused yet: the bytes, to send again unchanged (the relay's
    /// dedupe key).
    pending: HashMap<Key, Bytes>,
    /// Pending envelopes to send again, with the earliest time to do so, oldest first.
    retry: VecDeque<(Instant, Key)>,
    /// Envelopes sent more than once.
    pub resent: HashSet<Key>,
    /// Envelopes answered OK or DUPLICATE.
    pub acked: HashSet<Key>,
    /// When each acknowledged envelope not delivered yet was acknowledged.
    acked_at: HashMap<Key, f64>,
    /// Time from acknowledgement to first delivery, in microseconds (0 when the delivery
    /// came before the answer).
    pub ack_to_delivery_us: Histogram<u64>,
    /// Envelopes refused for good.
    pub refused: HashSet<Key>,
    /// Distinct envelopes delivered and verified.
    pub delivered: HashSet<Key>,
    /// Per mailbox: relay seq → message id, to tell redelivery from double storage.
    by_seq: Vec<BTreeMap<u64, u64>>,
    /// Every attempt, in the order answered.
    pub attempts: Vec<Attempt>,
    /// Deliveries that failed to open or check.
    pub corrupted: u64,
    /// An envelope delivered under a second sequence number.
    pub stored_twice: u64,
    /// Deliveries repeated under the same sequence number.
    pub redelivered_same_seq: u64,
    /// Final answers to resent envelopes: OK.
    pub resent_ok: u64,
    /// Final answers to resent envelopes: DUPLICATE.
    pub resent_duplicate: u64,
    /// Subscriptions started again after one ended (beyond what the client library resumed
    /// by itself).
    pub resubscribed: u64,
    /// Acknowledged envelopes the live subscriptions never delivered but a new subscription
    /// at the end did: stored, yet the subscriber was not woken for them.
    pub found_by_new_subscription: u64,
    /// Distinct envelopes first delivered in each second since the start (one counter a
    /// second: the timeline of the report).
    delivered_per_s: Vec<u64>,
}

/// One second of a chaos run, for its timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChaosSecond {
    /// Whole seconds since the load started: this second runs from `t_s` to `t_s + 1`.
    pub t_s: u64,
    /// Deposit attempts answered OK or DUPLICATE in this second.
    pub acked: u64,
    /// Deposit attempts answered UNAVAILABLE, another status, or not at all in this second.
    pub failed: u64,
    /// Distinct envelopes first delivered in this second.
    pub delivered: u64,
}

/// The books behind a lock.
pub type Shared = Arc<Mutex<Ledger>>;

/// Locks the books, whatever a panicking holder left (they stay consistent enough to report).
pub fn lock(b: &Shared) -> MutexGuard<'_, Ledger> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
    /// Empty books for `mailboxes` mailboxes, the clock starting now.
    pub fn new(mailboxes: usize) -> Self {
        Self {
            t0: Instant::now(),
            next_id: vec![0; mailboxes],
            next_mailbox: 0,
            pending: HashMap::new(),
            retry: VecDeque::new(),
            resent: HashSet::new(),
            acked: HashSet::new(),
            acked_at: HashMap::new(),
            ack_to_delivery_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds"),
            refused: HashSet::new(),
            delivered: HashSet::new(),
            by_seq: vec![BTreeMap::new(); mailboxes],
            attempts: Vec::new(),
            corrupted: 0,
            stored_twice: 0,
            redelivered_same_seq: 0,
            resent_ok: 0,
            resent_duplicate: 0,
            resubscribed: 0,
            found_by_new_subscription: 0,
            delivered_per_s: Vec::new(),
        }
    }

    /// Seconds since the load started.
    pub fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Distinct envelopes sent.
    pub fn sent(&self) -> u64 {
        self.next_id.iter().sum()
    }

    /// Envelopes sent and not yet stored or refused.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Pending envelopes that are sent again later.
    pub fn pending_keys(&self) -> impl Iterator<Item = &Key> {
        self.pending.keys()
    }

    /// A pending envelope whose time to be sent again has come.
    pub fn take_retry(&mut self) -> Option<(Key, Bytes)> {
        let now = Instant::now();
        while let Some(&(at, key)) = self.retry.front() {
            if at > now {
                return None;
            }
            self.retry.pop_front();
            if let Some(env) = self.pending.get(&key) {
                self.resent.insert(key);
                return Some((key, env.clone()));
            }
        }
        None
    }

    /// The key of a new envelope (mailboxes in turn), unless `cap` envelopes are pending.
    pub fn next_new(&mut self, cap: usize) -> Option<Key> {
        if self.pending.len() >= cap {
            return None;
        }
        let mb = self.next_mailbox;
        self.next_mailbox = (mb + 1) % self.next_id.len() as u32;
        let id = self.next_id[mb as usize];
        self.next_id[mb as usize] += 1;
        Some((mb, id))
    }

    /// A new envelope is about to be sent.
    pub fn sending(&mut self, key: Key, env: Bytes) {
        self.pending.insert(key, env);
    }

    /// An attempt sent at `sent_s` ended with `outcome`; one that is to be sent again is
    /// queued for `pause` from now.
    pub fn answered(&mut self, key: Key, sent_s: f64, outcome: Outcome, pause: Duration) {
        let answered_s = self.now_s();
        self.attempts.push(Attempt {
            key,
            sent_s,
            answered_s,
            outcome,
        });
        if outcome.retried() {
            if self.pending.contains_key(&key) {
                self.retry.push_back((Instant::now() + pause, key));
            }
            return;
        }
        // Settled: stored or refused. (A later attempt of a key already settled cannot
        // happen: only pending keys are sent.)
        if self.pending.remove(&key).is_none() {
            return;
        }
        if outcome.acked() {
            self.acked.insert(key);
            if !self.delivered.contains(&key) {
                self.acked_at.insert(key, answered_s);
            }
            if self.resent.contains(&key) {
                match outcome {
                    Outcome::Ok => self.resent_ok += 1,
                    _ => self.resent_duplicate += 1,
                }
            }
        } else {
            self.refused.insert(key);
        }
    }

    /// A delivery of relay sequence number `seq` to mailbox `index`, with the stamp found in
    /// it (`None`: it did not open or check). Returns whether it was an envelope not
    /// delivered before.
    pub fn delivered(&mut self, index: u32, seq: u64, stamp: Option<Stamp>) -> bool {
        let Some(st) = stamp.filter(|s| s.mailbox == index) else {
            self.corrupted += 1;
            return false;
        };
        match self.by_seq[index as usize].get(&seq).copied() {
            Some(id) if id == st.seq => self.redelivered_same_seq += 1,
            Some(_) => self.corrupted += 1,
            None => {
                self.by_seq[index as usize].insert(seq, st.seq);
                let key = (index, st.seq);
                if self.delivered.insert(key) {
                    let now = self.now_s();
                    let second = now as usize;
                    if self.delivered_per_s.len() <= second {
                        self.delivered_per_s.resize(second + 1, 0);
                    }
                    self.delivered_per_s[second] += 1;
                    let delay = self
                        .acked_at
                        .remove(&key)
                        .map_or(0.0, |at| (now - at).max(0.0));
                    // Saturates at the histogram's top (an hour) rather than failing.
                    self.ack_to_delivery_us
                        .saturating_record((delay * 1e6).max(1.0) as u64);
                    return true;
                }
                self.stored_twice += 1;
            }
        }
        false
    }

    /// Acknowledged envelopes not delivered (yet).
    pub fn undelivered(&self) -> impl Iterator<Item = &Key> {
        self.acked.iter().filter(|k| !self.delivered.contains(*k))
    }

    /// The first answer OK or DUPLICATE to an attempt sent at or after `t_s`, in seconds since
    /// the start.
    pub fn first_ack_after(&self, t_s: f64) -> Option<f64> {
        // Attempts are recorded in the order answered, and an attempt is answered after it
        // is sent: only those answered since `t_s` can qualify, and the first that does is it.
        let from = self.attempts.partition_point(|a| a.answered_s < t_s);
        self.attempts[from..]
            .iter()
            .find(|a| a.sent_s >= t_s && a.outcome.acked())
            .map(|a| a.answered_s)
    }

    /// Attempts sent from `from_s` to `to_s`, by outcome, and how many of those acknowledged
    /// were not delivered.
    pub fn window(&self, from_s: f64, to_s: f64) -> (OutcomeCounts, u64) {
        let mut counts = OutcomeCounts::default();
        let mut lost = 0;
        for a in self
            .attempts
            .iter()
            .filter(|a| a.sent_s >= from_s && a.sent_s <= to_s)
        {
            counts.add(a.outcome);
            if a.outcome.acked() && !self.delivered.contains(&a.key) {
                lost += 1;
            }
        }
        (counts, lost)
    }

    /// Per second since the start: answers by kind (from the attempts, by when they were
    /// answered) and first deliveries, up to the last second with either.
    pub fn timeline(&self) -> Vec<ChaosSecond> {
        let last_answer = self
            .attempts
            .last()
            .map_or(0, |a| a.answered_s as usize + 1);
        let len = last_answer.max(self.delivered_per_s.len());
        let mut t: Vec<ChaosSecond> = (0..len)
            .map(|i| ChaosSecond {
                t_s: i as u64,
                delivered: self.delivered_per_s.get(i).copied().unwrap_or(0),
                ..ChaosSecond::default()
            })
            .collect();
        for a in &self.attempts {
            let s = &mut t[(a.answered_s as usize).min(len - 1)];
            if a.outcome.acked() {
                s.acked += 1;
            } else {
                s.failed += 1;
            }
        }
        t
    }

    /// Every attempt by outcome.
    pub fn all_outcomes(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for a in &self.attempts {
            c.add(a.outcome);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(mailbox: u32, seq: u64) -> Option<Stamp> {
        Some(Stamp {
            mailbox,
            seq,
            sent_us: 0,
        })
    }

    #[test]
    fn unavailable_is_sent_again_and_settles_once() {
        let mut b = Ledger::new(2);
        let k = b.next_new(10).unwrap();
        assert_eq!(k, (0, 0));
        assert_eq!(b.next_new(10), Some((1, 0)));
        b.sending(k, Bytes::from_static(b"env"));
        let first = b.now_s();
        b.answered(k, first, Outcome::Unavailable, Duration::ZERO);
        assert_eq!(b.pending(), 1);
        let (again, env) = b.take_retry().expect("due now");
        assert_eq!((again, &env[..]), (k, &b"env"[..]));
        assert!(b.take_retry().is_none());
        let between = b.now_s();
        let second = b.now_s();
        b.answered(k, second, Outcome::Duplicate, Duration::ZERO);
        assert_eq!(b.pending(), 0);
        assert!(b.acked.contains(&k));
        assert_eq!((b.resent_ok, b.resent_duplicate), (0, 1));
        let (counts, lost) = b.window(0.0, 1e9);
        assert_eq!((counts.unavailable, counts.duplicate, lost), (1, 1, 1));
        assert!(b.delivered(0, 7, stamp(0, 0)));
        assert_eq!(b.ack_to_delivery_us.len(), 1);
        assert_eq!(b.window(0.0, 1e9).1, 0);
        assert_eq!(b.window(between, 1e9).0.total(), 1);
        assert_eq!(
            b.first_ack_after(between),
            b.attempts.last().map(|a| a.answered_s)
        );
        assert_eq!(b.first_ack_after(b.now_s() + 5.0), None);
    }

    #[test]
    fn deliveries_tell_redelivery_from_double_storage() {
        let mut b = Ledger::new(1);
        assert!(b.delivered(0, 1, stamp(0, 5)));
        assert!(!b.delivered(0, 1, stamp(0, 5)));
        assert_eq!(b.redelivered_same_seq, 1);
        b.delivered(0, 2, stamp(0, 5));
        assert_eq!(b.stored_twice, 1);
        b.delivered(0, 1, stamp(0, 6));
        b.delivered(0, 3, None);
        b.delivered(0, 4, stamp(1, 9));
        assert_eq!(b.corrupted, 3);
    }

    #[test]
    fn the_timeline_counts_answers_and_first_deliveries_per_second() {
        let mut b = Ledger::new(1);
        assert!(b.timeline().is_empty());
        for outcome in [Outcome::Unanswered, Outcome::Ok] {
            b.answered((0, 0), 0.0, outcome, Duration::ZERO);
        }
        b.answered((0, 1), 0.0, Outcome::Duplicate, Duration::ZERO);
        assert!(b.delivered(0, 1, stamp(0, 0)));
        assert!(!b.delivered(0, 1, stamp(0, 0)));
        let t = b.timeline();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(
            (t[0].t_s, t[0].acked, t[0].failed, t[0].delivered),
            (0, 2, 1, 1)
        );
    }

    #[test]
    fn new_envelopes_wait_while_too_many_are_pending() {
        let mut b = Ledger::new(1);
        let k = b.next_new(1).unwrap();
        b.sending(k, Bytes::new());
        assert_eq!(b.next_new(1), None);
        b.answered(k, 0.0, Outcome::Rejected, Duration::ZERO);
        assert!(b.refused.contains(&k));
        assert!(b.next_new(1).is_some());
    }
}
