//! The keyring file of the disk and memory stores: fixed slots of 128 bytes, each written in
//! place and synced.
//!
//! Slot: `state (1: live, 0: free) | shard (1) | epoch start (8) | epoch end (8) | wrapped key
//! (60) | zeros`. A key is destroyed by overwriting its slot with zeros in place and syncing
//! (`fdatasync`). That is the point of slots: the store's other small files are replaced by
//! writing a new file and renaming it (`atomic_file`), which leaves the old copy in a freed
//! block of the disk, readable with the master key. Overwriting in place leaves no old copy on
//! a filesystem that writes data in place (ext4, XFS: docs/AT-REST.md says where that does not
//! hold). 128-byte slots never straddle a 512-byte sector, so a crash tears at most the slot
//! being written; a torn slot fails to unwrap and is dropped ([`super::keyring::Keyring::open`]).

use super::keyring::{KeyringError, KeyringStore, StoredKey, WRAPPED_LEN};
use super::record::EpochId;
use async_trait::async_trait;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One slot's length.
pub const SLOT_LEN: usize = 128;
const LIVE: u8 = 1;

struct State {
    file: File,
    /// The slot of each live key.
    slots: HashMap<EpochId, u64>,
    /// Free slots, reused before the file grows.
    free: Vec<u64>,
    /// Slots in the file.
    count: u64,
}

/// The keyring file.
pub struct SlotFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl SlotFile {
    /// Opens (or creates) the keyring file at `path`.
    pub fn open(path: &Path) -> Result<Self, KeyringError> {
        let io = |e: std::io::Error| KeyringError::Io {
            place: path.display().to_string(),
            why: e.to_string(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(State {
                file,
                slots: HashMap::new(),
                free: Vec::new(),
                count: len / SLOT_LEN as u64,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, e: std::io::Error) -> KeyringError {
        KeyringError::Io {
            place: self.path.display().to_string(),
            why: e.to_string(),
        }
    }

    /// The keyring file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Re-wraps every key in the keyring file at `path` from master key `old` to `new`, each slot
/// overwritten in place (so no copy under the old key stays in the file); returns how many
/// it re-wrapped. Running it again after an interruption finishes the job. For
/// `rotate-master-key`, with no relay running.
pub fn rotate_master_key(
    path: &Path,
    old: &[u8; 32],
    new: &[u8; 32],
) -> Result<usize, KeyringError> {
    let io = |why: String| KeyringError::Io {
        place: path.display().to_string(),
        why,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(e.to_string()))?;
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut all).map_err(|e| io(e.to_string()))?;
    let (old_wrap, new_wrap) = (
        super::keyring::wrapping_key(old),
        super::keyring::wrapping_key(new),
    );
    let mut n = 0;
    let mut has_dedupe = false;
    let mut free = None;
    for (i, s) in all.chunks_exact(SLOT_LEN).enumerate() {
        let Some(mut k) = decode(s) else {
            free = free.or(Some(i));
            continue;
        };
        has_dedupe |= k.epoch == super::keyring::DEDUPE_SLOT;
        if let Some(w) = super::keyring::rewrap(&k, &old_wrap, &new_wrap).map_err(io)? {
            k.wrapped = w;
            file.write_all_at(&encode(&k), (i * SLOT_LEN) as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| io(e.to_string()))?;
            n += 1;
        }
    }
    if !has_dedupe {
        // A keyring from before the dedupe key was kept in it: its key was derived from the
        // old master key, and must not change with it.
        let k = super::keyring::dedupe_entry(old, &new_wrap).map_err(io)?;
        let at = free.unwrap_or(all.len() / SLOT_LEN);
        file.write_all_at(&encode(&k), (at * SLOT_LEN) as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io(e.to_string()))?;
        n += 1;
    }
    Ok(n)
}

fn encode(k: &StoredKey) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[0] = LIVE;
    s[1] = k.epoch.shard;
    s[2..10].copy_from_slice(&k.epoch.start.to_be_bytes());
    s[10..18].copy_from_slice(&k.end.to_be_bytes());
    s[18..18 + WRAPPED_LEN].copy_from_slice(&k.wrapped);
    s
}

fn decode(s: &[u8]) -> Option<StoredKey> {
    if s[0] != LIVE {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let mut wrapped = [0u8; WRAPPED_LEN];
    wrapped.copy_from_slice(&s[18..18 + WRAPPED_LEN]);
    Some(StoredKey {
        epoch: EpochId {
            start: u64_at(2),
            shard: s[1],
        },
        end: u64_at(10),
        wrapped,
    })
}

// The calls below do their small writes and syncs on the calling thread: a key is made once
// per epoch and shard and destroyed once, so they are rare next to the appends, and they must
// be durable before the caller goes on anyway.
#[async_trait]
impl KeyringStore for SlotFile {
    async fn load(&self) -> Result<Vec<StoredKey>, KeyringError> {
        let mut st = self.lock();
        let mut all = vec![0u8; (st.count as usize) * SLOT_LEN];
        st.file.read_exact_at(&mut all, 0).map_err(|e| self.io(e))?;
        let mut keys = Vec::new();
        st.slots.clear();
        st.free.clear();
        for (i, s) in all.chunks_exact(SLOT_LEN).enumerate() {
            match decode(s) {
                Some(k) if !st.slots.contains_key(&k.epoch) => {
                    st.slots.insert(k.epoch, i as u64);
                    keys.push(k);
                }
                _ => st.free.push(i as u64),
            }
        }
        Ok(keys)
    }

    async fn put(&self, key: &StoredKey) -> Result<StoredKey, KeyringError> {
        // Only this relay writes the file, and the keyring makes one key per epoch at a time.
        let mut st = self.lock();
        let (slot, grows) = match st.free.pop() {
            Some(s) => (s, false),
            None => (st.count, true),
        };
        let written = st
            .file
            .write_all_at(&encode(key), slot * SLOT_LEN as u64)
            .and_then(|()| {
                if grows {
                    // The file's length changed: its metadata must reach the disk too.
                    st.file.sync_all()
                } else {
                    st.file.sync_data()
                }
            });
        if let Err(e) = written {
            st.free.push(slot);
            return Err(self.io(e));
        }
        if grows {
            st.count += 1;
        }
        st.slots.insert(key.epoch, slot);
        Ok(key.clone())
    }

    async fn remove(&self, epoch: EpochId) -> Result<(), KeyringError> {
        let mut st = self.lock();
        let Some(slot) = st.slots.get(&epoch).copied() else {
            return Ok(());
        };
        st.file
            .write_all_at(&[0u8; SLOT_LEN], slot * SLOT_LEN as u64)
            .and_then(|()| st.file.sync_data())
            .map_err(|e| self.io(e))?;
        st.slots.remove(&epoch);
        st.free.push(slot);
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(shard: u8, byte: u8) -> StoredKey {
        StoredKey {
            epoch: EpochId { start: 60, shard },
            end: 120,
            wrapped: [byte; WRAPPED_LEN],
        }
    }

    /// Destroying a key overwrites its slot in place: the file keeps its length, the wrapped
    /// bytes are gone from it, and the freed slot is reused.
    #[tokio::test]
    async fn a_removed_key_is_overwritten_in_place_and_its_slot_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let f = SlotFile::open(&path).unwrap();
        let kept = f.put(&key(1, 0xAB)).await.unwrap();
        assert_eq!(kept, key(1, 0xAB));
        f.put(&key(2, 0xCD)).await.unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.len(), 2 * SLOT_LEN);
        assert!(raw.windows(WRAPPED_LEN).any(|w| w == [0xAB; WRAPPED_LEN]));
        f.remove(key(1, 0).epoch).await.unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.len(), 2 * SLOT_LEN);
        assert!(!raw.windows(8).any(|w| w == [0xAB; 8]));
        f.put(&key(3, 0xEF)).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT_LEN);
        let reopened = SlotFile::open(&path).unwrap();
        let mut got: Vec<u8> = reopened
            .load()
            .await
            .unwrap()
            .iter()
            .map(|k| k.epoch.shard)
            .collect();
        got.sort();
        assert_eq!(got, [2, 3]);
    }
}
