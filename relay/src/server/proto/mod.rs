//! The relay's stream state machines, without I/O: [`Subscription`] for a SUBSCRIBE stream
//! and [`DepositStream`] for a DEPOSIT stream.
//!
//! They follow quinn-proto's split. A state machine takes events (an ACK arrived, the store
//! answered a fetch, a batch's statuses are ready, the clock reached a deadline) and tells its
//! driver what to do next through `poll_action`; it never reads a socket, awaits a future,
//! looks at the wall clock or touches the store. The async shells in `super::subscribe` and
//! `super::deposit` do the I/O and feed the results back, one action at a time. Every protocol
//! rule lives in the state machine (the window, cumulative and monotone ACKs, BAD_ACK,
//! ascending deliveries, answers in order, the bounds on what is held in flight), so the
//! simulated harness in [`sim`] can check those rules deterministically, with a simulated
//! clock, over millions of event orders that real sockets would rarely produce.
//!
//! They live in the relay rather than in `sealpost-core` because what they decide is relay
//! policy on top of the wire format: how much to fetch from the store at once, when to look
//! at the store again, how many deposit batches may be with the shards. No client uses them,
//! and they speak in store operations (fetch after a seq, delete up to a seq) that only the
//! relay has. They need nothing from the relay's other modules either, so moving them is easy
//! should that change.

pub mod deposit_stream;
pub mod sim;
pub mod subscription;

pub use deposit_stream::{BatchId, DepositAction, DepositLimits, DepositStream};
pub use subscription::{SubAction, Subscription};

use sealpost_core::status::ErrorCode;

/// How a stream ends, once the state machine has nothing more to send on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Finish the relay's side of the stream cleanly.
    Finish,
    /// Send an ERROR with this code and message, then finish.
    Error(ErrorCode, String),
    /// The stream is gone: send nothing.
    Abandon,
}
