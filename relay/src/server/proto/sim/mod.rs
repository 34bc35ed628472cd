//! A deterministic, in-memory harness for the stream state machines, after quinn's test
//! `Pair`: a fake store, a fake peer and a simulated clock, stepped by hand or until nothing
//! more happens. No task, socket or real time is involved, so a test says exactly which
//! event comes when, and a run is the same every time.
//!
//! The pairs check the protocol's invariants on every step and panic when one breaks, so
//! that a property test or a fuzzer only has to drive them: [`fuzz_subscription`] and
//! [`fuzz_deposit`] read arbitrary bytes as a sequence of events.

pub mod deposit;
pub mod subscription;

#[cfg(test)]
mod properties;

pub use deposit::{DepositPair, fuzz_deposit};
pub use subscription::{AckPolicy, SubscriptionPair, fuzz_subscription};

use std::time::{Duration, Instant};

/// A clock that moves only when told to.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    elapsed: Duration,
}

impl Clock {
    /// A clock at its start. Only differences between its readings mean anything.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    /// The simulated time now.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    /// Moves the clock forward to `to`, if that is later.
    pub fn advance_to(&mut self, to: Instant) {
        if to > self.now() {
            self.elapsed = to - self.base;
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `step` until it reports that nothing happened; panics if that never comes (a
/// livelock between the two sides).
pub(crate) fn until_idle(mut step: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if !step() {
            return;
        }
    }
    panic!("the pair never went idle");
}

/// Fuzzer input read as a series of choices; zeros once it is used up.
#[derive(Debug)]
pub(crate) struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, or `None` at the end.
    pub(crate) fn next(&mut self) -> Option<u8> {
        let (first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*first)
    }

    /// The next byte, 0 at the end.
    pub(crate) fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    /// A number in `0..n` (n ≥ 1).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n.max(1)
    }
}
