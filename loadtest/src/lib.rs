//! sealpost-loadtest: the load generator's library, used by the `sealpost-loadtest` binary
//! and its tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod baseline;
pub mod chaos;
pub mod child;
pub mod compare;
pub mod ctcheck;
pub mod fast;
pub mod many;
pub mod message;
pub mod report;
pub mod run;
pub mod speed;
