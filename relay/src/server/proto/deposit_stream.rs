//! The relay's side of one DEPOSIT stream: how many frames make a batch, how many batches may
//! be with the shards at once, that answers go out in the order the batches were read, and
//! how the stream ends.
//!
//! The state machine counts frames and bytes; the frames themselves stay with the driver,
//! which keeps them in a batch buffer between [`DepositStream::on_frame`] and
//! [`DepositAction::Submit`]. It is generic over the answer `A` of a batch (today the
//! statuses, tomorrow perhaps statuses with a retry hint): it only holds answers that arrive
//! before those of earlier batches and hands them out in order.

use super::Ending;
use sealpost_core::status::ErrorCode;
use std::collections::VecDeque;

/// Bounds on one deposit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositLimits {
    /// Frames in one batch.
    pub max_batch: usize,
    /// Batches submitted and not yet answered.
    pub max_in_flight: usize,
    /// Envelope bytes submitted and not yet answered. A batch is submitted while the bytes
    /// in flight are below this, so they may exceed it by at most one batch.
    pub max_in_flight_bytes: usize,
}

/// Identifies a submitted batch, to report its answer with [`DepositStream::on_answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

/// What the driver of a [`DepositStream`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepositAction<A> {
    /// Submit the `frames` frames collected since the last submit (all of them) as batch
    /// `id`; report its answer with [`DepositStream::on_answer`].
    Submit {
        /// The batch.
        id: BatchId,
        /// How many frames it has.
        frames: usize,
    },
    /// Send this answer as the next DEPOSIT_RESULT.
    SendResult(A),
    /// End the stream. Nothing follows.
    End(Ending),
}

/// A batch with the shards.
#[derive(Debug)]
struct Slot<A> {
    bytes: usize,
    answer: Option<A>,
}

/// Refused by [`DepositStream::on_frame`]: the batch is full or the stream is ending, so
/// the driver should not have taken the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the deposit stream takes no frame now")]
pub struct NoRoom;

/// One deposit stream's batching and answer state.
///
/// Invariants, whatever the order of events: a batch has at most `max_batch` frames; at most
/// `max_in_flight` batches are unanswered and their bytes stay below `max_in_flight_bytes`
/// plus one batch; answers are handed out in the order the batches were submitted, each
/// once; the stream ends only after every frame read was answered.
#[derive(Debug)]
pub struct DepositStream<A> {
    limits: DepositLimits,
    /// Frames collected and not yet submitted, and their bytes.
    batch_frames: usize,
    batch_bytes: usize,
    /// Unanswered batches, oldest first; the oldest has id `oldest`.
    in_flight: VecDeque<Slot<A>>,
    oldest: u64,
    in_flight_bytes: usize,
    ending: Option<Ending>,
    ended: bool,
}

impl<A> DepositStream<A> {
    /// A stream within `limits` (a zero batch or in-flight limit counts as one).
    pub fn new(limits: DepositLimits) -> Self {
        let limits = DepositLimits {
            max_batch: limits.max_batch.max(1),
            max_in_flight: limits.max_in_flight.max(1),
            max_in_flight_bytes: limits.max_in_flight_bytes.max(1),
        };
        Self {
            limits,
            batch_frames: 0,
            batch_bytes: 0,
            in_flight: VecDeque::with_capacity(limits.max_in_flight),
            oldest: 0,
            in_flight_bytes: 0,
            ending: None,
            ended: false,
        }
    }

    /// How many more frames the batch takes from what is already received (0 once the
    /// stream is ending).
    pub fn frames_wanted(&self) -> usize {
        if self.ending.is_some() || self.ended {
            return 0;
        }
        self.limits.max_batch - self.batch_frames
    }

    /// A DEPOSIT frame with `len` payload bytes joins the batch. Only while
    /// [`DepositStream::frames_wanted`] is above zero; otherwise it is refused and not
    /// counted.
    pub fn on_frame(&mut self, len: usize) -> Result<(), NoRoom> {
        if self.frames_wanted() == 0 {
            return Err(NoRoom);
        }
        self.batch_frames += 1;
        self.batch_bytes += len;
        Ok(())
    }

    /// Whether to wait for more data from the peer: only while nothing is collected and
    /// there is room to submit it, so that QUIC flow control holds back a sender that is
    /// ahead of the store.
    pub fn wants_read(&self) -> bool {
        self.ending.is_none() && !self.ended && self.batch_frames == 0 && self.room()
    }

    /// The answer for batch `id`. Ignored for an unknown or already answered batch.
    pub fn on_answer(&mut self, id: BatchId, answer: A) {
        let Some(i) = id.0.checked_sub(self.oldest) else {
            return;
        };
        if let Some(slot) = usize::try_from(i)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            && slot.answer.is_none()
        {
            slot.answer = Some(answer);
        }
    }

    /// The peer finished its side: once everything read is answered, finish. Report it
    /// only after every frame read before the end was offered to [`DepositStream::on_frame`]:
    /// nothing is taken afterwards.
    pub fn on_peer_finished(&mut self) {
        self.end(Ending::Finish);
    }

    /// The peer broke the protocol (a frame other than DEPOSIT, a framing fault): answer
    /// the deposits before it, then ERROR.
    pub fn on_peer_error(&mut self, code: ErrorCode, msg: String) {
        self.end(Ending::Error(code, msg));
    }

    /// The stream or connection failed: read nothing more, and send nothing at the end.
    /// What was read is still submitted (and stored).
    pub fn on_stream_failed(&mut self) {
        self.end(Ending::Abandon);
    }

    /// The relay is shutting down: stop reading, answer what was read, then ERROR
    /// SHUTTING_DOWN.
    pub fn on_shutdown(&mut self) {
        self.end(Ending::Error(
            ErrorCode::ShuttingDown,
            "relay shutting down; reconnect and resend what was not answered".into(),
        ));
    }

    /// The next thing to do, or `None` until an event arrives.
    pub fn poll_action(&mut self) -> Option<DepositAction<A>> {
        if self.ended {
            return None;
        }
        if self.in_flight.front().is_some_and(|s| s.answer.is_some())
            && let Some(slot) = self.in_flight.pop_front()
        {
            self.oldest += 1;
            self.in_flight_bytes -= slot.bytes;
            return slot.answer.map(DepositAction::SendResult);
        }
        if self.batch_frames > 0 && self.room() {
            let id = BatchId(self.oldest + self.in_flight.len() as u64);
            let frames = std::mem::take(&mut self.batch_frames);
            let bytes = std::mem::take(&mut self.batch_bytes);
            self.in_flight_bytes += bytes;
            self.in_flight.push_back(Slot {
                bytes,
                answer: None,
            });
            return Some(DepositAction::Submit { id, frames });
        }
        if self.in_flight.is_empty()
            && self.batch_frames == 0
            && let Some(ending) = self.ending.take()
        {
            self.ended = true;
            return Some(DepositAction::End(ending));
        }
        None
    }

    /// True once an ending is decided (answers may still be due before it).
    pub fn is_ending(&self) -> bool {
        self.ended || self.ending.is_some()
    }

    /// True once the `End` action was handed out.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Batches submitted and not yet answered out.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Their envelope bytes.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Frames collected and not yet submitted.
    pub fn batch_frames(&self) -> usize {
        self.batch_frames
    }

    /// The limits in force.
    pub fn limits(&self) -> DepositLimits {
        self.limits
    }

    fn room(&self) -> bool {
        self.in_flight.len() < self.limits.max_in_flight
            && self.in_flight_bytes < self.limits.max_in_flight_bytes
    }

    /// Records how the stream ends; the first reason wins.
    fn end(&mut self, ending: Ending) {
        if !self.ended && self.ending.is_none() {
            self.ending = Some(ending);
        }
    }
}
