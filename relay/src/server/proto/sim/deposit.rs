//! A [`DepositStream`] wired to a fake sender and fake shards.
//!
//! [`DepositPair`] plays the async shell of `server::deposit`: frames travel from the sender
//! over a "wire" into the reader's buffer, the relay collects them into batches, submits the
//! batches to shards that answer in whatever order the test chooses, and sends the answers.
//! A batch's answer is the list of the frames it covers, so the sender can check on every
//! result that the answers cover its deposits exactly, in the order sent. Also checked on
//! every step: batch and in-flight bounds, and that the stream ends only after everything
//! read was answered.

use super::{Choices, until_idle};
use crate::server::proto::{BatchId, DepositAction, DepositLimits, DepositStream, Ending};
use sealpost_core::status::ErrorCode;
use std::collections::VecDeque;

/// What the sender puts on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// A DEPOSIT frame: its index in sending order and its payload length.
    Deposit(u32, usize),
    /// A frame of another type.
    Unexpected,
    /// Bytes that are not a valid frame.
    Fault,
    /// The sender finished the stream.
    Fin,
    /// The stream failed.
    Dead,
}

/// A deposit stream between a fake sender and fake shards.
#[derive(Debug)]
pub struct DepositPair {
    /// The state machine under test; a batch's answer is the indices of its frames.
    pub ds: DepositStream<Vec<u32>>,
    /// Sent, not yet read by the relay.
    wire: VecDeque<Wire>,
    /// Read and decoded, not yet taken into a batch.
    buffered: VecDeque<Wire>,
    /// The batch being collected (frame indices).
    batch: Vec<u32>,
    /// Batches with the shards, unanswered.
    shards: Vec<(BatchId, Vec<u32>)>,
    /// The last batch id submitted.
    last_id: Option<BatchId>,
    /// The bytes of each batch submitted and not yet answered to the sender, oldest first:
    /// counted here rather than asked of the state machine.
    unanswered: VecDeque<usize>,
    /// The payload length of each frame in the batch being collected.
    batch_bytes: usize,
    /// DEPOSIT frames sent, taken into batches, and answered to the sender.
    sent: u32,
    taken: u32,
    answered: u32,
    /// The largest payload sent.
    max_len: usize,
    /// What the sender did to end or break the stream (first only).
    sender_end: Option<Wire>,
    /// The relay was told to shut down while the stream was open.
    shutdown: bool,
    /// How the stream ended, as the sender saw it.
    pub ending: Option<Ending>,
}

impl DepositPair {
    /// A stream within `limits`.
    pub fn new(limits: DepositLimits) -> Self {
        Self {
            ds: DepositStream::new(limits),
            wire: VecDeque::new(),
            buffered: VecDeque::new(),
            batch: Vec::new(),
            shards: Vec::new(),
            last_id: None,
            unanswered: VecDeque::new(),
            batch_bytes: 0,
            sent: 0,
            taken: 0,
            answered: 0,
            max_len: 0,
            sender_end: None,
            shutdown: false,
            ending: None,
        }
    }

    /// The sender sends a DEPOSIT frame with `len` payload bytes (after it ended or broke
    /// the stream, nothing is sent).
    pub fn send(&mut self, len: usize) {
        if self.sender_end.is_none() {
            self.wire.push_back(Wire::Deposit(self.sent, len));
            self.sent += 1;
            self.max_len = self.max_len.max(len);
        }
    }

    fn send_end(&mut self, what: Wire) {
        if self.sender_end.is_none() {
            self.sender_end = Some(what);
            self.wire.push_back(what);
        }
    }

    /// The sender finishes the stream.
    pub fn finish(&mut self) {
        self.send_end(Wire::Fin);
    }

    /// The sender sends a frame other than DEPOSIT.
    pub fn send_unexpected(&mut self) {
        self.send_end(Wire::Unexpected);
    }

    /// The sender sends bytes that are not a frame.
    pub fn send_garbage(&mut self) {
        self.send_end(Wire::Fault);
    }

    /// The stream fails (after what is already on the wire).
    pub fn kill(&mut self) {
        self.send_end(Wire::Dead);
    }

    /// The relay starts shutting down.
    pub fn shut_down(&mut self) {
        if !self.ds.is_ending() {
            self.shutdown = true;
        }
        self.ds.on_shutdown();
    }

    /// Deposits the sender got results for.
    pub fn answered(&self) -> u32 {
        self.answered
    }

    /// Batches with the shards.
    pub fn with_shards(&self) -> usize {
        self.shards.len()
    }

    /// One turn of the relay's loop without waiting: take buffered frames, then one action.
    pub fn relay_step(&mut self) -> bool {
        let mut progressed = false;
        while self.ds.frames_wanted() > 0 {
            let Some(w) = self.buffered.pop_front() else {
                break;
            };
            progressed = true;
            match w {
                Wire::Deposit(i, len) => {
                    assert_eq!(i, self.taken, "frames are taken in order");
                    assert!(self.ds.on_frame(len).is_ok());
                    self.batch.push(i);
                    self.batch_bytes += len;
                    self.taken += 1;
                }
                Wire::Unexpected => self
                    .ds
                    .on_peer_error(ErrorCode::UnexpectedFrame, "not DEPOSIT".into()),
                Wire::Fault => self
                    .ds
                    .on_peer_error(ErrorCode::MalformedFrame, "bad frame".into()),
                Wire::Fin | Wire::Dead => unreachable!("never buffered"),
            }
        }
        let limits = self.ds.limits();
        assert!(self.batch.len() <= limits.max_batch, "batch over its limit");
        let Some(action) = self.ds.poll_action() else {
            return progressed;
        };
        assert!(self.ending.is_none(), "an action after the end: {action:?}");
        match action {
            DepositAction::Submit { id, frames } => {
                assert_eq!(frames, self.batch.len(), "a batch is what was collected");
                assert!(frames >= 1);
                assert!(self.last_id.is_none_or(|l| id > l), "batch ids ascend");
                self.last_id = Some(id);
                self.shards.push((id, std::mem::take(&mut self.batch)));
                self.unanswered
                    .push_back(std::mem::take(&mut self.batch_bytes));
                let bytes: usize = self.unanswered.iter().sum();
                assert!(self.unanswered.len() <= limits.max_in_flight);
                assert!(
                    bytes < limits.max_in_flight_bytes + limits.max_batch * self.max_len.max(1),
                    "{bytes} bytes in flight"
                );
                assert_eq!(self.ds.in_flight(), self.unanswered.len());
                assert_eq!(self.ds.in_flight_bytes(), bytes);
            }
            DepositAction::SendResult(frames) => {
                let want: Vec<u32> = (self.answered..self.answered + frames.len() as u32).collect();
                assert_eq!(frames, want, "results cover the deposits in the order sent");
                assert!(!frames.is_empty());
                self.answered += frames.len() as u32;
                self.unanswered.pop_front();
            }
            DepositAction::End(ending) => {
                assert!(self.batch.is_empty() && self.shards.is_empty());
                assert_eq!(self.answered, self.taken, "everything read is answered");
                match &ending {
                    Ending::Finish => {
                        assert_eq!(self.sender_end, Some(Wire::Fin));
                        assert_eq!(self.answered, self.sent, "a finished stream is answered");
                    }
                    Ending::Abandon => assert_eq!(self.sender_end, Some(Wire::Dead)),
                    Ending::Error(ErrorCode::ShuttingDown, _) => assert!(self.shutdown),
                    Ending::Error(ErrorCode::UnexpectedFrame, _) => {
                        assert_eq!(self.sender_end, Some(Wire::Unexpected));
                        assert_eq!(self.answered, self.sent, "deposits before it are answered");
                    }
                    Ending::Error(ErrorCode::MalformedFrame, _) => {
                        assert_eq!(self.sender_end, Some(Wire::Fault));
                        assert_eq!(self.answered, self.sent, "deposits before it are answered");
                    }
                    other => panic!("unexpected ending {other:?}"),
                }
                self.ending = Some(ending);
                assert!(self.ds.poll_action().is_none());
            }
        }
        true
    }

    /// The relay reads from the stream, if it wants to and there is something to read.
    pub fn fill(&mut self) -> bool {
        // The shell reads only once the frames already decoded are taken (or the batch is
        // full, when it does not want to read anyway).
        if !self.ds.wants_read() || !self.buffered.is_empty() {
            return false;
        }
        match self.wire.front() {
            None => false,
            Some(Wire::Fin) => {
                self.wire.pop_front();
                self.ds.on_peer_finished();
                true
            }
            Some(Wire::Dead) => {
                self.wire.pop_front();
                self.ds.on_stream_failed();
                true
            }
            Some(_) => {
                // Everything up to the end of the stream arrives in one read.
                while let Some(w) = self.wire.front().copied() {
                    if matches!(w, Wire::Fin | Wire::Dead) {
                        break;
                    }
                    self.wire.pop_front();
                    self.buffered.push_back(w);
                    if matches!(w, Wire::Fault) {
                        // The decoder reads nothing after a fault.
                        self.wire.clear();
                        break;
                    }
                }
                true
            }
        }
    }

    /// The shards answer the `k`-th batch they hold (in submission order), if any.
    pub fn answer(&mut self, k: usize) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        let (id, frames) = self.shards.remove(k % self.shards.len());
        self.ds.on_answer(id, frames);
        true
    }

    /// The shards answer every batch they hold, newest first (the harder order).
    pub fn answer_all(&mut self) {
        while let Some((id, frames)) = self.shards.pop() {
            self.ds.on_answer(id, frames);
        }
    }

    /// Relay steps and reads until neither does anything (shards answer only when told).
    pub fn run(&mut self) {
        until_idle(|| self.relay_step() || self.fill());
    }

    /// Runs with the shards answering everything, until idle.
    pub fn run_answering(&mut self) {
        for _ in 0..1_000_000 {
            self.run();
            if self.shards.is_empty() {
                return;
            }
            self.answer_all();
        }
    }
}

/// Reads `data` as a sequence of deposit stream events (deposits of various sizes, shard
/// answers in any order, reads, the sender's end or fault, a shutdown) and checks the
/// invariants on every step; then the sender finishes and the shards answer everything,
/// and the stream must end with every deposit read answered. Panics on a violation. For
/// property tests and fuzzers.
pub fn fuzz_deposit(data: &[u8]) {
    let mut c = Choices::new(data);
    let limits = DepositLimits {
        max_batch: 1 + c.below(8),
        max_in_flight: 1 + c.below(4),
        max_in_flight_bytes: 1 + c.below(256),
    };
    let mut p = DepositPair::new(limits);
    while let Some(op) = c.next() {
        match op % 12 {
            0 | 1 => p.send(1 + c.below(64)),
            2 => {
                for _ in 0..1 + c.below(16) {
                    p.send(1 + c.below(64));
                }
            }
            3 => {
                p.answer(c.byte() as usize);
            }
            4 => {
                p.relay_step();
            }
            5 => {
                p.fill();
            }
            6 => p.run(),
            7 => p.finish(),
            8 => match c.below(8) {
                0 => p.send_unexpected(),
                1 => p.send_garbage(),
                2 => p.kill(),
                _ => p.shut_down(),
            },
            _ => {
                p.answer(0);
            }
        }
    }
    p.finish();
    p.run_answering();
    assert!(p.ds.is_ended(), "the stream did not end");
    assert_eq!(p.answered, p.taken);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_batch: usize, max_in_flight: usize, max_in_flight_bytes: usize) -> DepositLimits {
        DepositLimits {
            max_batch,
            max_in_flight,
            max_in_flight_bytes,
        }
    }

    #[test]
    fn answers_go_out_in_order_whatever_order_the_shards_answer_in() {
        let mut p = DepositPair::new(limits(2, 8, 1 << 20));
        for _ in 0..3 {
            p.send(10);
            p.run(); // One frame per read: three batches.
        }
        assert_eq!(p.with_shards(), 3);
        p.answer(2);
        p.answer(1);
        p.run();
        assert_eq!(p.answered(), 0, "the first batch is not answered yet");
        p.answer(0);
        p.run();
        assert_eq!(p.answered(), 3);
    }

    #[test]
    fn in_flight_batches_are_bounded_and_reading_stops_at_the_bound() {
        let mut p = DepositPair::new(limits(1, 2, 1 << 20));
        for _ in 0..5 {
            p.send(10);
        }
        p.run();
        assert_eq!(p.with_shards(), 2, "two batches in flight");
        assert!(!p.ds.wants_read(), "no read while full");
        assert_eq!(p.ds.batch_frames(), 1, "one frame collected while waiting");
        p.answer(0);
        p.run();
        assert_eq!(p.answered(), 1);
        assert_eq!(p.with_shards(), 2);
        p.finish();
        p.run_answering();
        assert_eq!(p.ending, Some(Ending::Finish));
        assert_eq!(p.answered(), 5);
    }

    #[test]
    fn in_flight_bytes_are_bounded() {
        let mut p = DepositPair::new(limits(1, 64, 100));
        for _ in 0..4 {
            p.send(60);
        }
        p.run();
        // 60 < 100 lets a second batch go; 120 stops the third.
        assert_eq!(p.with_shards(), 2);
        assert_eq!(p.ds.in_flight_bytes(), 120);
        p.answer(0);
        p.run();
        assert_eq!(p.with_shards(), 2);
    }

    #[test]
    fn finish_after_everything_is_answered() {
        let mut p = DepositPair::new(limits(4, 4, 1 << 20));
        for _ in 0..6 {
            p.send(10);
        }
        p.finish();
        p.run();
        assert_eq!(p.ending, None, "answers are still due");
        p.run_answering();
        assert_eq!(p.ending, Some(Ending::Finish));
        assert_eq!(p.answered(), 6);
    }

    #[test]
    fn an_unexpected_frame_is_refused_after_the_deposits_before_it_are_answered() {
        let mut p = DepositPair::new(limits(4, 4, 1 << 20));
        for _ in 0..3 {
            p.send(10);
        }
        p.send_unexpected();
        p.run();
        assert_eq!(p.ending, None);
        p.run_answering();
        assert!(matches!(
            p.ending,
            Some(Ending::Error(ErrorCode::UnexpectedFrame, _))
        ));
        assert_eq!(p.answered(), 3);
    }

    #[test]
    fn a_dead_stream_still_submits_what_it_read_and_sends_nothing_at_the_end() {
        let mut p = DepositPair::new(limits(4, 4, 1 << 20));
        p.send(10);
        p.send(10);
        p.kill();
        p.run_answering();
        assert_eq!(p.ending, Some(Ending::Abandon));
        assert_eq!(p.answered(), 2);
    }

    #[test]
    fn shutdown_stops_reading_and_answers_what_was_read() {
        let mut p = DepositPair::new(limits(2, 8, 1 << 20));
        for _ in 0..3 {
            p.send(10);
        }
        p.run();
        p.send(10);
        p.shut_down();
        p.run_answering();
        assert!(matches!(
            p.ending,
            Some(Ending::Error(ErrorCode::ShuttingDown, _))
        ));
        assert_eq!(
            p.answered(),
            3,
            "the deposit sent after the shutdown is not read"
        );
    }

    #[test]
    fn frames_beyond_the_batch_limit_are_refused() {
        let mut ds: DepositStream<()> = DepositStream::new(limits(2, 1, 10));
        assert!(ds.on_frame(1).is_ok());
        assert!(ds.on_frame(1).is_ok());
        assert_eq!(ds.frames_wanted(), 0);
        assert!(ds.on_frame(1).is_err());
        assert_eq!(ds.batch_frames(), 2);
    }
}
