//! Two-hop forwarding (docs/PROTOCOL.md §9, docs/FORWARDING.md): the relay's forwarding key,
//! HPKE over the relay's crypto provider, the destination's handling of FORWARDED requests
//! and the forwarding relay's pool of connections to destination relays.

pub mod hpke;
pub mod key;
pub mod pool;

pub use key::{ForwardKey, ForwardKeyError, ForwardKeys};
