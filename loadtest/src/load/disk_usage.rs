//! Disk figures of a run: bytes this process wrote, and what a spawned relay's data directory
//! occupies once the load is over.

use super::target::SpawnedRelay;
use anyhow::Context;
use std::time::Duration;

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// Bytes this process has caused to be written to storage (Linux `/proc/self/io`).
pub fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Disk space the files under `dir` occupy (allocated blocks where the platform reports them:
/// stores preallocate journals, whose apparent size says little).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += allocated(&m),
                Err(_) => {}
            }
        }
    }
    total
}

/// Disk space of a spawned disk-store relay's data directory after the drain, and again after
/// the store flushed and compacted (`None`, `None` for other relays).
pub async fn data_dir_after_drain(
    spawned: Option<&SpawnedRelay>,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let Some(s) = spawned else {
        return Ok((None, None));
    };
    let Some(d) = s.relay.disk_store() else {
        return Ok((None, None));
    };
    // Give the store's background flush and compaction a moment, then measure what is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = dir_size(s.dir.path());
    let d = d.clone();
    tokio::task::spawn_blocking(move || d.reclaim_space())
        .await
        .context("reclaim task")??;
    Ok((Some(before), Some(dir_size(s.dir.path()))))
}
