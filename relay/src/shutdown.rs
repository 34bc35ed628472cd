//! Stopping a relay within one time budget (`shutdown_timeout_secs`): the connections' grace
//! period and the store's final flush share it, and a final flush that fails is an error (the
//! binary then exits non-zero) instead of a warning.

use crate::server::RelayHandle;
use crate::store::StoreError;
use crate::store::disk::DiskStore;
use std::time::{Duration, Instant};

/// Why a stop was not clean.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The store's final flush failed or did not finish in time.
    #[error(
        "final store flush failed: {0}; envelopes acknowledged by recipients since the last flush may be delivered again after the restart"
    )]
    Flush(StoreError),
    /// The task closing the store did not finish normally.
    #[error("closing the store failed: {0}")]
    Task(String),
}

/// The share of the budget kept for the store's final flush: a quarter, at most 2 s (an
/// fsync and a memtable flush; the rest is for clients to finish).
fn store_share(budget: Duration) -> Duration {
    (budget / 4).min(Duration::from_secs(2))
}

/// Shuts the relay down and closes `store` (if it is a disk store), all within about
/// `budget`.
pub async fn stop(
    handle: RelayHandle,
    store: Option<DiskStore>,
    budget: Duration,
) -> Result<(), StopError> {
    let deadline = Instant::now() + budget;
    let relay_part = match store {
        Some(_) => budget - store_share(budget),
        None => budget,
    };
    handle.shutdown_within(relay_part).await;
    let Some(store) = store else {
        return Ok(());
    };
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::task::spawn_blocking(move || store.close(left))
        .await
        .map_err(|e| StopError::Task(e.to_string()))?
        .map_err(StopError::Flush)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_gets_a_bounded_share() {
        assert_eq!(
            store_share(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(store_share(Duration::from_secs(60)), Duration::from_secs(2));
    }
}
