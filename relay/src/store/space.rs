//! The free-space reserve of the disk store.
//!
//! A filesystem that fills up makes the store's next write fail, and fjall then refuses every
//! later write until the process restarts (its "poisoned" state: after a failed fsync it
//! cannot vouch for what reached the disk). The relay therefore stops taking new envelopes
//! and mailboxes while the free space is below a reserve, long before the disk is full, and
//! keeps serving what frees space: deliveries, ACKs, expiry and deletes. The check is one
//! `statvfs` call per append batch or CREATE (a fraction of the batch's fsync) and one a
//! second for the readiness gauges.
//!
//! Where the free space comes from is a [`FreeSpace`], so that a test can say "the disk is
//! nearly full" without filling one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tells how many bytes an unprivileged process may still write on a filesystem.
pub trait FreeSpace: Send + Sync + 'static {
    /// Bytes available now.
    fn free_bytes(&self) -> std::io::Result<u64>;
}

/// The free space of the filesystem holding a path, from `statvfs` (the blocks available
/// to unprivileged users, so the root reserve does not count).
pub struct Statvfs(PathBuf);

impl Statvfs {
    /// Measures the filesystem that holds `path`.
    pub fn new(path: &Path) -> Self {
        Self(path.to_owned())
    }
}

impl FreeSpace for Statvfs {
    fn free_bytes(&self) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(&self.0)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}

impl<F> FreeSpace for F
where
    F: Fn() -> std::io::Result<u64> + Send + Sync + 'static,
{
    fn free_bytes(&self) -> std::io::Result<u64> {
        self()
    }
}

/// What a check of the reserve found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free, if they could be measured.
    pub free: Option<u64>,
    /// The reserve the store keeps free.
    pub reserve: u64,
}

impl Space {
    /// Whether the free space is below the reserve. A filesystem that cannot be measured
    /// counts as fine: the writes themselves still report a real failure.
    pub fn low(&self) -> bool {
        self.free.is_some_and(|f| f < self.reserve)
    }
}

/// Checks the free space against the reserve and logs when the relay starts or stops
/// refusing because of it (once per change, not once per deposit).
#[derive(Clone)]
pub struct SpaceGuard {
    source: Arc<dyn FreeSpace>,
    reserve: u64,
    low: Arc<AtomicBool>,
}

impl SpaceGuard {
    /// Keeps `reserve` bytes free as `source` measures them; with a reserve of 0 nothing is
    /// refused, and the free space is still measured for the gauges.
    pub fn new(source: Arc<dyn FreeSpace>, reserve: u64) -> Self {
        Self {
            source,
            reserve,
            low: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The reserve kept free (0: none).
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Measures now, with or without a reserve (the free space is exported either way).
    pub fn check(&self) -> Space {
        let free = match self.source.free_bytes() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure the store's free disk space");
                None
            }
        };
        let space = Space {
            free,
            reserve: self.reserve,
        };
        let low = space.low();
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    free_bytes = free.unwrap_or(0),
                    reserve_bytes = self.reserve,
                    "the store's disk is below its free-space reserve (min_free_disk_bytes): \
                     refusing new envelopes and mailboxes (STORAGE_FULL) until space is freed; \
                     deliveries and ACKs go on"
                );
            } else {
                tracing::warn!(
                    free_bytes = free.unwrap_or(0),
                    reserve_bytes = self.reserve,
                    "the store's disk is above its free-space reserve again: accepting deposits"
                );
            }
        }
        space
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn low_below_the_reserve_only() {
        let free = Arc::new(AtomicU64::new(1000));
        let f = free.clone();
        let g = SpaceGuard::new(Arc::new(move || Ok(f.load(Ordering::Relaxed))), 500);
        assert!(!g.check().low());
        free.store(499, Ordering::Relaxed);
        assert!(g.check().low());
        free.store(500, Ordering::Relaxed);
        assert!(!g.check().low());
        let off = SpaceGuard::new(Arc::new(|| Ok(0)), 0);
        assert!(!off.check().low());
        assert_eq!(off.check().free, Some(0), "measured without a reserve too");
        let broken = SpaceGuard::new(Arc::new(|| Err(std::io::Error::other("gone"))), 10);
        assert!(!broken.check().low());
    }

    #[test]
    fn statvfs_measures_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Statvfs::new(dir.path()).free_bytes().unwrap() > 0);
    }
}
