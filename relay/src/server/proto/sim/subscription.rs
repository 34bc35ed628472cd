//! A [`Subscription`] wired to a fake mailbox and a fake recipient.
//!
//! [`SubscriptionPair`] plays the async shell of `server::subscribe` (store operations,
//! the wake-up signal, the stream in both directions) with plain data structures, and checks
//! on every step: the window is never exceeded; deliveries on a stream strictly ascend;
//! only acknowledged, delivered envelopes are deleted; BAD_ACK comes exactly when an ACK
//! passes the last delivery; nothing follows the end of a stream.

use super::{Choices, Clock, until_idle};
use crate::server::proto::{Ending, SubAction, Subscription};
use sealpost_core::status::ErrorCode;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// One envelope in the fake mailbox.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Fetchable; an unreadable envelope (not yet durable) hides those after it.
    readable: bool,
    /// Sent on some subscription at least once.
    delivered: bool,
}

/// A mailbox queue with sequence numbers, as a store keeps it.
#[derive(Debug, Default)]
pub struct SimMailbox {
    held: BTreeMap<u64, Held>,
    last_seq: u64,
    /// The wake-up signal is set and not yet seen.
    wake: bool,
    /// The next store operation fails.
    pub fail_next: bool,
    /// Store operations carried out.
    pub ops: u64,
}

impl SimMailbox {
    /// Stores `n` envelopes; readable ones raise the wake-up signal, as a completed append
    /// does. Returns the last sequence number.
    pub fn append(&mut self, n: usize, readable: bool) -> u64 {
        for _ in 0..n {
            self.last_seq += 1;
            self.held.insert(
                self.last_seq,
                Held {
                    readable,
                    delivered: false,
                },
            );
        }
        if readable && n > 0 {
            self.wake = true;
        }
        self.last_seq
    }

    /// Makes every held envelope readable without raising the wake-up signal: the write
    /// that completes them woke other mailboxes only.
    pub fn make_readable(&mut self) {
        for h in self.held.values_mut() {
            h.readable = true;
        }
    }

    /// Envelopes held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Sequence numbers held, ascending.
    pub fn held_seqs(&self) -> Vec<u64> {
        self.held.keys().copied().collect()
    }

    fn failing(&mut self) -> bool {
        self.ops += 1;
        std::mem::take(&mut self.fail_next)
    }

    fn fetch(&self, after: u64, max: usize) -> Vec<u64> {
        self.held
            .range(after + 1..)
            .take_while(|(_, h)| h.readable)
            .take(max)
            .map(|(s, _)| *s)
            .collect()
    }

    fn mark_delivered(&mut self, seq: u64) {
        if let Some(h) = self.held.get_mut(&seq) {
            h.delivered = true;
        }
    }

    fn delete_upto(&mut self, upto: u64) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > upto {
                break;
            }
            assert!(
                entry.get().delivered,
                "seq {} deleted by ACK {upto} but never delivered",
                entry.key()
            );
            entry.remove();
        }
    }
}

/// When the fake recipient acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// After every delivery.
    Each,
    /// After every `n` deliveries (cumulatively).
    Every(usize),
    /// Only when the test says so.
    Manual,
}

/// What travels from relay to recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Down {
    Deliver(u64),
    End(Ending),
}

/// What travels from recipient to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Up {
    Ack(u64),
    Finish,
    Garbage,
}

/// The fake recipient.
#[derive(Debug)]
pub struct SimPeer {
    /// When it acknowledges.
    pub policy: AckPolicy,
    /// Every delivery received, over all subscriptions, in order.
    pub received: Vec<u64>,
    /// How each subscription ended, as the recipient saw it.
    pub endings: Vec<Ending>,
    /// The highest delivery on the current stream.
    last: u64,
    /// Deliveries on the current stream since its last ACK.
    unacked: usize,
    /// The stream ended for the recipient.
    closed: bool,
}

impl SimPeer {
    fn new(policy: AckPolicy) -> Self {
        Self {
            policy,
            received: Vec::new(),
            endings: Vec::new(),
            last: 0,
            unacked: 0,
            closed: false,
        }
    }

    /// The highest sequence number received on the current stream.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// A subscription, its mailbox and its recipient, stepped deterministically.
#[derive(Debug)]
pub struct SubscriptionPair {
    /// The simulated time.
    pub clock: Clock,
    /// The fake store's mailbox.
    pub store: SimMailbox,
    /// The fake recipient.
    pub peer: SimPeer,
    /// The state machine under test.
    pub sub: Subscription,
    max_batch: usize,
    /// Subscriptions started, the current one included.
    pub subscriptions: usize,
    down: VecDeque<Down>,
    up: VecDeque<Up>,
    /// The store operation under way.
    op: Option<SubAction>,
    /// The last fetch's result.
    fetched: Vec<u64>,
    /// The `max` of the last fetch.
    fetch_max: usize,
    /// Per stream: the highest delivery the relay sent, the highest ACK it accepted.
    sent: u64,
    acked: u64,
    /// Per stream, counted here rather than asked of the state machine: deliveries sent
    /// and not yet deleted, whose number the window bounds.
    outstanding: VecDeque<u64>,
    /// An ACK beyond the last delivery reached a live subscription: BAD_ACK must follow.
    expect_bad_ack: bool,
    /// Store operations complete as soon as they are issued.
    pub instant_store: bool,
}

impl SubscriptionPair {
    /// A first subscription with this window and fetch batch, over an empty mailbox.
    pub fn new(window: u32, max_batch: usize, policy: AckPolicy) -> Self {
        Self {
            clock: Clock::new(),
            store: SimMailbox::default(),
            peer: SimPeer::new(policy),
            sub: Subscription::new(window, max_batch),
            max_batch,
            subscriptions: 1,
            down: VecDeque::new(),
            up: VecDeque::new(),
            op: None,
            fetched: Vec::new(),
            fetch_max: 0,
            sent: 0,
            acked: 0,
            outstanding: VecDeque::new(),
            expect_bad_ack: false,
            instant_store: true,
        }
    }

    /// Ends the current subscription the way a new SUBSCRIBE for the mailbox does (if it is
    /// still live), lets its last frames reach the recipient, and starts a new one with
    /// this window.
    pub fn resubscribe(&mut self, window: u32) {
        if !self.sub.is_ended() {
            self.sub.on_replaced();
            self.run_relay_to_end();
        }
        // Frames already sent still arrive; what the recipient sends now goes nowhere.
        while self.peer_step() {}
        self.up.clear();
        self.sub = Subscription::new(window, self.max_batch);
        self.subscriptions += 1;
        self.sent = 0;
        self.acked = 0;
        self.outstanding.clear();
        self.expect_bad_ack = false;
        self.peer.last = 0;
        self.peer.unacked = 0;
        self.peer.closed = false;
    }

    /// Runs the current subscription's own actions (completing store operations) until it
    /// ends. It must be ending already.
    fn run_relay_to_end(&mut self) {
        for _ in 0..10_000 {
            if self.sub.is_ended() {
                return;
            }
            if !(self.complete_op() || self.relay_step()) {
                break;
            }
        }
        assert!(self.sub.is_ended(), "an ending subscription did not end");
    }

    /// One action of the relay, if it has one. Returns whether anything happened.
    pub fn relay_step(&mut self) -> bool {
        if self.op.is_some() {
            return false;
        }
        let Some(action) = self.sub.poll_action() else {
            return false;
        };
        match &action {
            SubAction::Fetch { after, max } => {
                assert_eq!(*after, self.sent, "a fetch starts after the last delivery");
                assert!(
                    *max >= 1 && *max <= self.max_batch.max(1),
                    "fetch size {max}"
                );
                assert!(
                    self.sub.in_flight() + max <= self.sub.window(),
                    "a fetch of {max} with {} in flight exceeds the window {}",
                    self.sub.in_flight(),
                    self.sub.window()
                );
                // The shell marks the wake-up signal seen before fetching.
                self.store.wake = false;
                self.fetch_max = *max;
                self.op = Some(action);
            }
            SubAction::CountHeld | SubAction::DeleteUpTo(_) => {
                if let SubAction::DeleteUpTo(upto) = action {
                    assert!(
                        upto <= self.acked,
                        "delete up to {upto}, but the highest ACK is {}",
                        self.acked
                    );
                }
                self.op = Some(action);
            }
            SubAction::Deliver { count } => {
                assert!(
                    *count >= 1 && *count <= self.fetched.len() && *count <= self.fetch_max,
                    "deliver {count} of {} fetched (asked for {})",
                    self.fetched.len(),
                    self.fetch_max
                );
                for &seq in &self.fetched[..*count] {
                    assert!(seq > self.sent, "delivery {seq} after {}", self.sent);
                    self.sent = seq;
                    self.store.mark_delivered(seq);
                    self.down.push_back(Down::Deliver(seq));
                    self.outstanding.push_back(seq);
                }
                assert!(
                    self.outstanding.len() <= self.sub.window(),
                    "{} delivered and unacknowledged, window {}",
                    self.outstanding.len(),
                    self.sub.window()
                );
                assert_eq!(self.sub.delivered_upto(), self.sent);
            }
            SubAction::End(ending) => {
                let bad_ack = matches!(ending, Ending::Error(ErrorCode::BadAck, _));
                assert_eq!(
                    bad_ack, self.expect_bad_ack,
                    "ending {ending:?} after an ACK beyond the last delivery: {}",
                    self.expect_bad_ack
                );
                self.down.push_back(Down::End(ending.clone()));
                assert!(self.sub.poll_action().is_none(), "an action after the end");
            }
        }
        self.check_bounds();
        if self.instant_store {
            self.complete_op();
        }
        true
    }

    /// Completes the store operation under way, if any.
    pub fn complete_op(&mut self) -> bool {
        let Some(op) = self.op.take() else {
            return false;
        };
        if self.store.failing() {
            self.sub.on_store_failed("simulated failure");
            return true;
        }
        match op {
            SubAction::Fetch { after, max } => {
                // Asks for one more than allowed: the state machine must keep to `max`.
                self.fetched = self.store.fetch(after, max + 1);
                self.sub.on_fetched(self.fetched.iter().copied());
            }
            SubAction::CountHeld => self.sub.on_held(self.store.held() as u64, self.clock.now()),
            SubAction::DeleteUpTo(upto) => {
                self.store.delete_upto(upto);
                self.sub.on_deleted(upto);
                while self.outstanding.front().is_some_and(|s| *s <= upto) {
                    self.outstanding.pop_front();
                }
                assert_eq!(self.sub.in_flight(), self.outstanding.len());
            }
            SubAction::Deliver { .. } | SubAction::End(_) => {
                unreachable!("not store operations")
            }
        }
        self.check_bounds();
        true
    }

    /// Hands the relay a raised wake-up signal, if any.
    pub fn wake_step(&mut self) -> bool {
        if !self.store.wake || self.sub.is_ended() {
            return false;
        }
        self.store.wake = false;
        self.sub.on_wake();
        true
    }

    /// The recipient takes one frame from the relay, acknowledging per its policy.
    pub fn peer_step(&mut self) -> bool {
        let Some(msg) = self.down.pop_front() else {
            return false;
        };
        assert!(!self.peer.closed, "a frame after the end of the stream");
        match msg {
            Down::Deliver(seq) => {
                assert!(
                    seq > self.peer.last,
                    "delivered {seq} after {}",
                    self.peer.last
                );
                self.peer.last = seq;
                self.peer.received.push(seq);
                self.peer.unacked += 1;
                let due = match self.peer.policy {
                    AckPolicy::Each => true,
                    AckPolicy::Every(n) => self.peer.unacked >= n.max(1),
                    AckPolicy::Manual => false,
                };
                if due {
                    self.ack(seq);
                }
            }
            Down::End(ending) => {
                self.peer.closed = true;
                self.peer.endings.push(ending);
            }
        }
        true
    }

    /// The relay takes one frame from the recipient.
    pub fn up_step(&mut self) -> bool {
        let Some(msg) = self.up.pop_front() else {
            return false;
        };
        match msg {
            Up::Ack(seq) => {
                if !self.sub.is_ending() {
                    if seq > self.sub.delivered_upto() {
                        self.expect_bad_ack = true;
                    } else {
                        self.acked = self.acked.max(seq);
                    }
                }
                self.sub.on_ack(seq);
                assert!(self.sub.acked_upto() <= self.sub.delivered_upto());
            }
            Up::Finish => self.sub.on_stream_closed(),
            Up::Garbage => self
                .sub
                .on_peer_error(ErrorCode::UnexpectedFrame, "not an ACK".into()),
        }
        true
    }

    /// The recipient sends an ACK for `seq` (whatever it received).
    pub fn ack(&mut self, seq: u64) {
        if !self.peer.closed {
            self.peer.unacked = 0;
            self.up.push_back(Up::Ack(seq));
        }
    }

    /// The recipient acknowledges everything it received on this stream.
    pub fn ack_all(&mut self) {
        let last = self.peer.last;
        if last > 0 {
            self.ack(last);
        }
    }

    /// The recipient finishes its side of the stream.
    pub fn peer_finish(&mut self) {
        if !self.peer.closed {
            self.up.push_back(Up::Finish);
        }
    }

    /// The recipient sends a frame that is not an ACK.
    pub fn peer_garbage(&mut self) {
        if !self.peer.closed {
            self.up.push_back(Up::Garbage);
        }
    }

    /// One step of whoever can move, in a fixed order. Returns whether anything happened.
    /// Store operations complete here only with `instant_store`; otherwise the test
    /// completes them with [`SubscriptionPair::complete_op`].
    pub fn step(&mut self) -> bool {
        self.relay_step() || self.wake_step() || self.peer_step() || self.up_step()
    }

    /// Steps until nothing more happens without the clock moving.
    pub fn run(&mut self) {
        until_idle(|| self.step());
    }

    /// Runs, then moves the clock to each timer that is due, until idle with no timer.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            self.run();
            match self.sub.poll_timeout() {
                Some(t) => {
                    self.clock.advance_to(t);
                    self.sub.handle_timeout(self.clock.now());
                }
                None => return,
            }
        }
        panic!("timers kept firing");
    }

    /// Moves the clock forward and fires a timer that is due.
    pub fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.sub.handle_timeout(self.clock.now());
    }

    fn check_bounds(&self) {
        assert!(
            self.sub.in_flight() <= self.sub.window(),
            "{} in flight, window {}",
            self.sub.in_flight(),
            self.sub.window()
        );
    }

    /// The end-of-run check: a new subscription with a recipient that acknowledges
    /// everything, over a mailbox whose envelopes are all readable, drains it. With the
    /// checks on deletion, this shows that every stored envelope was delivered (none
    /// skipped) before it was deleted.
    pub fn drain_and_check(&mut self) {
        self.store.fail_next = false;
        self.store.make_readable();
        self.instant_store = true;
        if self.op.is_some() {
            self.complete_op();
        }
        self.resubscribe(self.sub.window().max(1) as u32);
        self.peer.policy = AckPolicy::Each;
        self.settle();
        assert_eq!(
            self.store.held_seqs(),
            Vec::<u64>::new(),
            "envelopes left after a drain"
        );
        assert!(!self.sub.is_ending(), "the drain ended the subscription");
    }
}

/// Reads `data` as a sequence of subscription events (store appends, ACKs, wake-ups, clock
/// ticks, replacements, shutdowns, store failures, stream ends, in any order) and checks
/// the invariants on every step, then drains the mailbox. Panics on a violation. For
/// property tests and fuzzers.
pub fn fuzz_subscription(data: &[u8]) {
    let mut c = Choices::new(data);
    let window = 1 + c.below(16) as u32;
    let max_batch = 1 + c.below(8);
    let mut p = SubscriptionPair::new(window, max_batch, AckPolicy::Manual);
    p.instant_store = c.byte() & 1 == 0;
    while let Some(op) = c.next() {
        if p.sub.is_ended() && op % 4 == 0 {
            // A recipient whose stream ended comes back.
            let w = 1 + c.below(16) as u32;
            p.resubscribe(w);
            continue;
        }
        match op % 20 {
            0 => {
                p.store.append(1 + c.below(4), true);
            }
            1 => {
                p.store.append(1 + c.below(3), false);
            }
            2 => p.store.make_readable(),
            3 => p.ack_all(),
            4 => {
                // An old or repeated ACK.
                let back = c.below(4) as u64;
                p.ack(p.peer.last.saturating_sub(back));
            }
            5 => {
                // An ACK beyond what arrived (and perhaps beyond what was sent).
                let ahead = 1 + c.below(3) as u64;
                p.ack(p.peer.last + ahead);
            }
            6 => {
                p.relay_step();
            }
            7 => {
                p.complete_op();
            }
            8 => {
                p.peer_step();
            }
            9 => {
                p.up_step();
            }
            10 => p.run(),
            11 => p.advance(Duration::from_millis(c.byte() as u64)),
            12 => {
                let w = 1 + c.below(16) as u32;
                p.resubscribe(w);
            }
            13 => p.sub.on_shutdown(),
            14 => p.peer_finish(),
            15 => p.store.fail_next = true,
            16 => p.store.wake = true,
            17 => {
                p.peer.policy = match c.below(3) {
                    0 => AckPolicy::Each,
                    1 => AckPolicy::Every(1 + c.below(4)),
                    _ => AckPolicy::Manual,
                }
            }
            18 => p.peer_garbage(),
            _ => p.sub.on_mailbox_deleted(),
        }
    }
    p.drain_and_check();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended_with(p: &SubscriptionPair, code: ErrorCode) -> bool {
        matches!(p.peer.endings.last(), Some(Ending::Error(c, _)) if *c == code)
    }

    #[test]
    fn pending_envelopes_are_delivered_in_order_within_the_window() {
        let mut p = SubscriptionPair::new(2, 8, AckPolicy::Manual);
        p.store.append(5, true);
        p.run();
        assert_eq!(p.peer.received, vec![1, 2], "a window of 2");
        assert_eq!(p.sub.in_flight(), 2);
        p.ack(2);
        p.run();
        assert_eq!(p.peer.received, vec![1, 2, 3, 4]);
        assert_eq!(
            p.store.held_seqs(),
            vec![3, 4, 5],
            "the ACK deleted 1 and 2"
        );
        p.ack(3);
        p.run();
        assert_eq!(p.peer.received, vec![1, 2, 3, 4, 5]);
        assert_eq!(p.sub.in_flight(), 2);
    }

    #[test]
    fn fetches_are_split_by_the_batch_limit() {
        let mut p = SubscriptionPair::new(10, 3, AckPolicy::Manual);
        p.store.append(7, true);
        p.run();
        assert_eq!(p.peer.received, (1..=7).collect::<Vec<_>>());
        // 3 + 3 + 1, then an empty fetch and a count.
        assert_eq!(p.store.ops, 5);
    }

    #[test]
    fn cumulative_ack_deletes_up_to_its_seq_and_old_acks_are_harmless() {
        let mut p = SubscriptionPair::new(8, 8, AckPolicy::Manual);
        p.store.append(6, true);
        p.run();
        p.ack(4);
        p.run();
        assert_eq!(p.store.held_seqs(), vec![5, 6]);
        let ops = p.store.ops;
        p.ack(2);
        p.ack(4);
        p.run();
        assert_eq!(p.store.ops, ops, "an old ACK changes nothing");
        assert_eq!(p.store.held_seqs(), vec![5, 6]);
        assert!(!p.sub.is_ending());
    }

    #[test]
    fn acks_queued_together_make_one_deletion() {
        let mut p = SubscriptionPair::new(8, 8, AckPolicy::Manual);
        p.store.append(3, true);
        p.run();
        let ops = p.store.ops;
        p.sub.on_ack(1);
        p.sub.on_ack(3);
        p.sub.on_ack(2);
        p.acked = 3;
        p.run();
        // One delete; no fetch, since the mailbox had nothing more and no wake-up came.
        assert_eq!(p.store.ops - ops, 1);
        assert_eq!(p.store.held(), 0);
    }

    #[test]
    fn ack_beyond_delivered_is_bad_ack() {
        let mut p = SubscriptionPair::new(2, 8, AckPolicy::Manual);
        p.store.append(3, true);
        p.run();
        p.ack(3);
        p.run();
        assert!(ended_with(&p, ErrorCode::BadAck), "{:?}", p.peer.endings);
        assert_eq!(p.store.held(), 3, "nothing deleted");
    }

    #[test]
    fn unacknowledged_envelopes_are_redelivered_on_a_new_subscription() {
        let mut p = SubscriptionPair::new(16, 8, AckPolicy::Manual);
        p.store.append(3, true);
        p.run();
        p.ack(1);
        p.peer_finish();
        p.run();
        assert_eq!(p.peer.endings, vec![Ending::Finish]);
        assert_eq!(
            p.store.held_seqs(),
            vec![2, 3],
            "the ACK before the FIN counts"
        );
        p.resubscribe(16);
        p.run();
        assert_eq!(p.peer.received, vec![1, 2, 3, 2, 3]);
    }

    #[test]
    fn replacement_ends_the_old_subscription_with_replaced() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Manual);
        p.store.append(2, true);
        p.run();
        p.resubscribe(4);
        assert!(matches!(
            &p.peer.endings[..],
            [Ending::Error(ErrorCode::Replaced, _)]
        ));
        p.run();
        assert_eq!(p.peer.received, vec![1, 2, 1, 2]);
    }

    #[test]
    fn shutdown_mid_stream_ends_with_shutting_down_and_delivers_nothing_more() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Manual);
        p.instant_store = false;
        p.store.append(6, true);
        p.run();
        assert!(p.complete_op(), "the first fetch");
        p.run();
        assert_eq!(p.peer.received, vec![1, 2, 3, 4]);
        p.ack(2);
        p.run();
        // The deletion is under way when the shutdown comes; it still completes.
        p.sub.on_shutdown();
        assert!(p.complete_op());
        p.run();
        assert!(ended_with(&p, ErrorCode::ShuttingDown));
        assert_eq!(p.store.held_seqs(), vec![3, 4, 5, 6]);
        assert_eq!(p.peer.received, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_fetched_batch_is_not_sent_once_the_stream_ends() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Manual);
        p.instant_store = false;
        p.store.append(2, true);
        p.relay_step(); // Fetch issued.
        p.complete_op();
        p.sub.on_replaced();
        p.run();
        assert!(p.peer.received.is_empty());
        assert!(ended_with(&p, ErrorCode::Replaced));
    }

    #[test]
    fn live_appends_wake_an_idle_subscription() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Each);
        p.run();
        assert_eq!(p.sub.poll_timeout(), None, "idle, no timer");
        p.store.append(1, true);
        p.run();
        assert_eq!(p.peer.received, vec![1]);
        assert_eq!(p.store.held(), 0);
    }

    #[test]
    fn a_stall_looks_again_after_the_retry_interval() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Each);
        p.store.append(2, false);
        p.run();
        assert!(p.peer.received.is_empty());
        let due = p.sub.poll_timeout().expect("stalled");
        assert_eq!(
            due - p.clock.now(),
            crate::server::proto::subscription::STALL_RETRY
        );
        // Readable now, without a wake-up: only the timer finds them.
        p.store.make_readable();
        p.advance(Duration::from_millis(19));
        p.run();
        assert!(p.peer.received.is_empty(), "not before the interval");
        p.advance(Duration::from_millis(1));
        p.run();
        assert_eq!(p.peer.received, vec![1, 2]);
        assert_eq!(p.sub.poll_timeout(), None);
    }

    #[test]
    fn a_store_failure_ends_with_unavailable() {
        let mut p = SubscriptionPair::new(4, 8, AckPolicy::Manual);
        p.store.append(1, true);
        p.store.fail_next = true;
        p.run();
        assert!(ended_with(&p, ErrorCode::Unavailable));
        p.resubscribe(4);
        p.run();
        assert_eq!(p.peer.received, vec![1]);
    }

    #[test]
    fn out_of_order_store_answers_are_refused() {
        let mut sub = Subscription::new(8, 8);
        assert!(matches!(sub.poll_action(), Some(SubAction::Fetch { .. })));
        sub.on_fetched([3, 2]);
        assert!(matches!(
            sub.poll_action(),
            Some(SubAction::End(Ending::Error(ErrorCode::Unavailable, _)))
        ));
        assert_eq!(sub.in_flight(), 0);
    }
}
