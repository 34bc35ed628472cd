//! Turns the storage library's errors at open into errors an operator can act on: which file
//! of the data directory is damaged and what to do, or which relay holds the directory.

use super::StoreError;
use std::path::{Path, PathBuf};

/// The file, in the store directory, where the relay that holds the store notes its process
/// id (fjall's own `lock` file only holds the lock). The storage library ignores files that
/// are not its own.
const OWNER_FILE: &str = "owner.pid";

/// Notes this process as the store's holder (best effort: the pid only makes the "in use"
/// message more helpful).
pub(crate) fn note_owner(dir: &Path) {
    let _ = std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string());
}

fn owner(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The journal files in `dir`, named for the message (the library does not say which one
/// failed).
fn journals(dir: &Path) -> PathBuf {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jnl"))
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => dir.join(one),
        [] => dir.join("*.jnl"),
        many => dir.join(format!("{{{}}}", many.join(","))),
    }
}

/// What an error from opening the store at `dir` means.
pub(crate) fn explain(dir: &Path, e: fjall::Error) -> StoreError {
    use fjall::Error as F;
    let damaged = |file: PathBuf, what: String| StoreError::Damaged {
        store: dir.to_owned(),
        file,
        what,
    };
    match e {
        F::Locked => StoreError::InUse {
            path: dir.to_owned(),
            pid: owner(dir),
        },
        F::InvalidVersion(None) => damaged(
            dir.join("version"),
            "the format version marker is missing or unreadable".into(),
        ),
        F::InvalidVersion(Some(v)) => damaged(
            dir.join("version"),
            format!(
                "the store was written in format {v:?}, which this version of sealpost cannot read (run the version that wrote it)"
            ),
        ),
        F::JournalRecovery(j) => damaged(
            journals(dir),
            format!("a journal file does not replay ({j:?})"),
        ),
        F::InvalidTrailer | F::InvalidTag(_) | F::Decompress(_) => damaged(
            journals(dir),
            format!("a journal file does not decode ({e:?})"),
        ),
        F::Storage(s) => explain_storage(dir, s),
        F::Unrecoverable => damaged(
            dir.join("keyspaces"),
            "some of the store's tables or manifests could not be recovered".into(),
        ),
        F::Io(io) => StoreError::Open {
            path: dir.to_owned(),
            why: io.to_string(),
        },
        other => StoreError::Open {
            path: dir.to_owned(),
            why: format!("{other:?}"),
        },
    }
}

fn explain_storage(dir: &Path, s: fjall::LsmError) -> StoreError {
    use fjall::LsmError as L;
    let tables = dir.join("keyspaces");
    let what = match s {
        L::Io(io) => {
            return StoreError::Open {
                path: dir.to_owned(),
                why: io.to_string(),
            };
        }
        L::Unrecoverable => "some of the store's tables or manifests could not be recovered".into(),
        L::ChecksumMismatch { .. } => "a table's checksum does not match its contents".into(),
        L::InvalidVersion(v) => format!("a table or manifest has an unknown format version {v}"),
        other => format!("a table or manifest does not decode ({other:?})"),
    };
    StoreError::Damaged {
        store: dir.to_owned(),
        file: tables,
        what,
    }
}
