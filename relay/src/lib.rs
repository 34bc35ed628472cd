//! sealpost-relay: the QUIC relay server, its mailbox stores, and the async client library
//! used by the CLI, the load generator and the tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod client;
pub mod config;
pub mod mailbox_file;
pub mod metrics;
pub mod server;
pub mod settings;
pub mod store;
pub mod stream;
pub mod tls;
pub mod udp;

pub use config::{Rate, RelayConfig, RelayLimits, RetryPolicy, stream_credit};
pub use server::{RelayHandle, start};
