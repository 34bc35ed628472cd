//! sealpost-client: the async client library for sealpost relays. Connect to a relay (by pin
//! or CA roots), create mailboxes, deposit pipelined, subscribe to a stream of deliveries,
//! open and acknowledge them; keep a recipient's credentials in a mailbox file.
//!
//! An application that only sends and receives depends on this crate alone: it brings no
//! server, store or admin listener with it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod forwarding;
pub mod mailbox_file;
pub mod stream;
pub mod tls;

pub use client::{
    CONNECT_TIMEOUT, Client, ClientError, Delivery, DepositResults, DepositSender, KEEP_ALIVE,
    Mailbox, MailboxAccess, RESUME_WITHIN, ResumingSubscription, Subscription,
};
pub use forwarding::{ForwardTarget, ForwardedDeposit};
