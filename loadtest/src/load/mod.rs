//! The parts of a load run (`run`, `baseline`, `compare`, `sweep` and `abuse` all drive one):
//! what it is asked to do, the relay it loads, its senders and subscribers, its per-second
//! timeline and its disk figures. [`crate::run`] puts them together.

pub mod disk_usage;
pub mod options;
pub(crate) mod progress;
pub(crate) mod sender;
pub(crate) mod subscriber;
pub(crate) mod tally;
pub mod target;
