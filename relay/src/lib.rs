//! sealpost-relay: the QUIC relay server and its mailbox stores. The client library is the
//! sealpost-client crate (the CLI's client commands use it).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod forward;
pub mod master_key;
pub mod metrics;
pub mod open;
pub mod provenance;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod tls;
pub mod udp;

/// Entry points for fuzzers: [`fuzzing::fuzz_subscription`] and [`fuzzing::fuzz_deposit`]
/// read arbitrary bytes as a sequence of stream events, drive the relay's stream state
/// machines through the simulated harness, and panic when a protocol invariant breaks. The
/// harness itself is here too, for scenarios of a fuzzer's own. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::server::proto::sim::{
        AckPolicy, Clock, DepositPair, SubscriptionPair, fuzz_deposit, fuzz_subscription,
    };
    pub use crate::server::proto::{
        BatchId, DepositAction, DepositLimits, DepositStream, Ending, SubAction, Subscription,
    };
}

pub use config::{Rate, RelayConfig, RelayLimits, RetryPolicy, stream_credit};
pub use open::{OpenError, Relay, StoreOptions};
pub use server::{RelayHandle, start};
