//! The relay's side of one SUBSCRIBE stream after SUBSCRIBED: which envelopes to fetch and
//! deliver, what the ACKs delete, and when the stream ends.
//!
//! The driver runs one store operation at a time: it takes an action from
//! [`Subscription::poll_action`], carries it out, reports the result, and only then polls
//! again. Peer and relay events ([`Subscription::on_ack`], [`Subscription::on_wake`], the
//! endings) may come at any time in between.

use super::Ending;
use sealpost_core::status::ErrorCode;
use std::collections::VecDeque;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long a stalled subscription waits before looking at the store again. A subscription
/// stalls when the store holds more envelopes than it delivered yet returns none: they are
/// not durable or not readable yet, and the write that completes them may wake only other
/// mailboxes.
pub const STALL_RETRY: Duration = Duration::from_millis(20);

/// What the driver of a [`Subscription`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubAction {
    /// Fetch up to `max` envelopes with a sequence number above `after`, ascending; report
    /// them with [`Subscription::on_fetched`] or a failure with
    /// [`Subscription::on_store_failed`]. Mark the store's wake-up signal seen before
    /// fetching, so that an append racing with the fetch still wakes the subscription.
    Fetch {
        /// The highest sequence number delivered on this stream.
        after: u64,
        /// At most this many.
        max: usize,
    },
    /// Count the envelopes the mailbox holds; report with [`Subscription::on_held`].
    CountHeld,
    /// Seal the first `count` envelopes of the last fetch and send them as DELIVER frames,
    /// in order. Nothing to report; a failed write is [`Subscription::on_stream_closed`].
    Deliver {
        /// How many of the fetched envelopes to send (the rest are fetched again later).
        count: usize,
    },
    /// Delete every envelope with a sequence number up to and including this one; report
    /// with [`Subscription::on_deleted`] or [`Subscription::on_store_failed`].
    DeleteUpTo(u64),
    /// End the stream. Nothing follows.
    End(Ending),
}

/// The store operation the driver is carrying out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fetch { max: usize },
    CountHeld,
    Delete(u64),
}

/// One subscription's delivery state.
///
/// Invariants, whatever the order of events: at most `window` envelopes are delivered and
/// unacknowledged; deliveries are strictly ascending; an ACK above the highest delivered
/// sequence number ends the stream with BAD_ACK; ACKs are cumulative and an old or repeated
/// one changes nothing; nothing is deleted that was not acknowledged; what it holds is
/// bounded by the window.
#[derive(Debug)]
pub struct Subscription {
    window: usize,
    max_batch: usize,
    /// Sequence numbers delivered and not yet acknowledged (and deleted), ascending; the
    /// tail may also hold a fetched batch not yet handed out (`fetched`).
    in_flight: VecDeque<u64>,
    /// The highest sequence number handed out for delivery.
    sent_upto: u64,
    /// The highest ACK received (never above `sent_upto`).
    acked: u64,
    /// The highest sequence number the store confirmed deleted.
    deleted: u64,
    /// The store operation under way, if any.
    op: Option<Op>,
    /// A fetched batch at the tail of `in_flight`, not yet handed out: its length and last
    /// sequence number.
    fetched: Option<(usize, u64)>,
    /// The store may hold envelopes this stream has not fetched.
    more: bool,
    /// An empty fetch asks whether envelopes are held but not yet readable.
    count_held: bool,
    /// When to look at the store again after a stall.
    stall_until: Option<Instant>,
    /// A store operation failed: nothing more goes to the store.
    store_failed: bool,
    /// How the stream is to end, once what must precede it is done.
    ending: Option<Ending>,
    /// The `End` action was handed out.
    ended: bool,
}

impl Subscription {
    /// A subscription that delivers at most `window` unacknowledged envelopes, fetching at
    /// most `max_batch` at a time. It starts by fetching what is pending. A window of 0
    /// delivers nothing (the wire format does not allow it).
    pub fn new(window: u32, max_batch: usize) -> Self {
        let window = window as usize;
        Self {
            window,
            max_batch: max_batch.max(1),
            in_flight: VecDeque::with_capacity(window),
            sent_upto: 0,
            acked: 0,
            deleted: 0,
            op: None,
            fetched: None,
            more: true,
            count_held: false,
            stall_until: None,
            store_failed: false,
            ending: None,
            ended: false,
        }
    }

    /// The next thing to do, or `None` until an event arrives. Store operations come one at
    /// a time: none while one is under way.
    pub fn poll_action(&mut self) -> Option<SubAction> {
        if self.ended || self.op.is_some() {
            return None;
        }
        if let Some((count, last)) = self.fetched.take() {
            if self.ending.is_none() {
                self.sent_upto = last;
                if self.in_flight.len() >= self.window {
                    // A full window waits for ACKs, not for the store.
                    self.stall_until = None;
                }
                return Some(SubAction::Deliver { count });
            }
            // Ending: the batch is never sent.
            self.in_flight.truncate(self.in_flight.len() - count);
        }
        if self.acked > self.deleted && !self.store_failed {
            // Before any ending, so that what the peer acknowledged before it left is not
            // delivered again.
            self.op = Some(Op::Delete(self.acked));
            return Some(SubAction::DeleteUpTo(self.acked));
        }
        if let Some(ending) = self.ending.take() {
            self.ended = true;
            return Some(SubAction::End(ending));
        }
        if self.count_held {
            self.count_held = false;
            self.op = Some(Op::CountHeld);
            return Some(SubAction::CountHeld);
        }
        if self.more && self.in_flight.len() < self.window {
            let max = (self.window - self.in_flight.len()).min(self.max_batch);
            self.op = Some(Op::Fetch { max });
            return Some(SubAction::Fetch {
                after: self.sent_upto,
                max,
            });
        }
        None
    }

    /// When [`Subscription::handle_timeout`] is due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended || self.ending.is_some() {
            return None;
        }
        self.stall_until
    }

    /// The clock reached `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stall_until.is_some_and(|t| t <= now) {
            self.stall_until = None;
            self.more = true;
        }
    }

    /// The store answered a [`SubAction::Fetch`] with these sequence numbers, in the order
    /// returned. More than asked for are left for later; numbers that do not ascend above
    /// everything delivered are a store fault and end the stream with UNAVAILABLE. Ignored
    /// unless a fetch is under way.
    pub fn on_fetched(&mut self, seqs: impl IntoIterator<Item = u64>) {
        let Some(Op::Fetch { max }) = self.op else {
            return;
        };
        self.op = None;
        let mut last = self.sent_upto;
        let mut count = 0;
        for seq in seqs.into_iter().take(max) {
            if seq <= last {
                self.in_flight.truncate(self.in_flight.len() - count);
                self.fail(format!(
                    "store returned seq {seq} after seq {last}; deliveries must ascend"
                ));
                return;
            }
            self.in_flight.push_back(seq);
            last = seq;
            count += 1;
        }
        if count == 0 {
            self.more = false;
            self.count_held = true;
            return;
        }
        // Whether or not the batch filled the request, look again: the loop ends with a
        // full window or an empty fetch.
        self.more = true;
        self.stall_until = None;
        self.fetched = Some((count, last));
    }

    /// The store answered a [`SubAction::CountHeld`] at `now`. Ignored unless a count is
    /// under way.
    pub fn on_held(&mut self, held: u64, now: Instant) {
        if self.op != Some(Op::CountHeld) {
            return;
        }
        self.op = None;
        if held > self.in_flight.len() as u64 && self.in_flight.len() < self.window {
            self.stall_until = Some(now + STALL_RETRY);
        }
    }

    /// The store deleted every envelope up to `upto` ([`SubAction::DeleteUpTo`]): their
    /// window slots open. Ignored unless that deletion is under way.
    pub fn on_deleted(&mut self, upto: u64) {
        if self.op != Some(Op::Delete(upto)) {
            return;
        }
        self.op = None;
        self.deleted = upto;
        while self.in_flight.front().is_some_and(|s| *s <= upto) {
            self.in_flight.pop_front();
        }
    }

    /// A store operation failed: the stream ends with UNAVAILABLE.
    pub fn on_store_failed(&mut self, why: impl Display) {
        self.op = None;
        self.fail(format!("store unavailable: {why}"));
    }

    /// The peer acknowledged every delivery up to `seq`. Above the highest delivered, the
    /// stream ends with BAD_ACK; at or below an earlier ACK, nothing happens.
    pub fn on_ack(&mut self, seq: u64) {
        if self.ended || self.ending.is_some() {
            return;
        }
        if seq > self.sent_upto {
            self.end(Ending::Error(
                ErrorCode::BadAck,
                format!(
                    "ACK {seq} is beyond the last delivered seq {}",
                    self.sent_upto
                ),
            ));
            return;
        }
        self.acked = self.acked.max(seq);
    }

    /// The store signalled that the mailbox changed.
    pub fn on_wake(&mut self) {
        self.more = true;
    }

    /// A newer subscription for the mailbox took over: ERROR REPLACED.
    pub fn on_replaced(&mut self) {
        self.end(Ending::Error(
            ErrorCode::Replaced,
            "a newer subscription for this mailbox took over".into(),
        ));
    }

    /// The mailbox was deleted: ERROR UNKNOWN_MAILBOX.
    pub fn on_mailbox_deleted(&mut self) {
        self.end(Ending::Error(
            ErrorCode::UnknownMailbox,
            "mailbox was deleted".into(),
        ));
    }

    /// The relay is shutting down: ERROR SHUTTING_DOWN.
    pub fn on_shutdown(&mut self) {
        self.end(Ending::Error(
            ErrorCode::ShuttingDown,
            "relay shutting down; reconnect".into(),
        ));
    }

    /// The peer sent something other than a valid ACK: ERROR with this code.
    pub fn on_peer_error(&mut self, code: ErrorCode, msg: String) {
        self.end(Ending::Error(code, msg));
    }

    /// The peer finished its side, or the stream failed: the relay finishes its side (which
    /// does no harm on a stream that is gone) after applying the ACKs it has.
    pub fn on_stream_closed(&mut self) {
        self.end(Ending::Finish);
    }

    /// Envelopes delivered and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() - self.fetched.map_or(0, |(n, _)| n)
    }

    /// The window this subscription honours.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The highest sequence number delivered.
    pub fn delivered_upto(&self) -> u64 {
        self.sent_upto
    }

    /// The highest ACK received.
    pub fn acked_upto(&self) -> u64 {
        self.acked
    }

    /// True once the `End` action was handed out.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// True once an ending is decided (it may still wait for a deletion to finish).
    pub fn is_ending(&self) -> bool {
        self.ended || self.ending.is_some()
    }

    fn fail(&mut self, msg: String) {
        self.store_failed = true;
        self.end(Ending::Error(ErrorCode::Unavailable, msg));
    }

    /// Records how the stream ends; the first reason wins.
    fn end(&mut self, ending: Ending) {
        if !self.ended && self.ending.is_none() {
            self.ending = Some(ending);
        }
    }
}
