//! Rewriting the store under another master key (or sealing secrets that were kept in the
//! clear) without leaving the old copies behind.
//!
//! Rewriting the records in place is not enough: fjall keeps the old versions in its journal
//! until the journal rotates (after about 64 MB of writes), and there is no call to rotate it
//! sooner. So the store is copied into a fresh database beside it (`DIR.rekey`), whose journal
//! only ever sees the new records, and swapped in. The swap is two renames; a marker file
//! written once the copy is complete tells a start-up after a crash which copy to keep.

use std::path::{Path, PathBuf};

/// The marker, in the new copy, that it is complete.
const COMPLETE: &str = "rekey-complete";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Where the new copy is built.
pub(crate) fn new_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".rekey")
}

/// Creates the (empty) directory for the new copy with the permissions of `dir`, so that a
/// store directory an operator restricted (say to 0700) stays restricted after the swap
/// instead of taking the process's umask.
pub(crate) fn create_new_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let new = new_dir(dir);
    std::fs::create_dir(&new)?;
    std::fs::set_permissions(&new, std::fs::metadata(dir)?.permissions())?;
    Ok(new)
}

/// Marks the new copy complete (durably), then swaps it in for `dir` and removes the old one.
pub(crate) fn swap_in(dir: &Path) -> std::io::Result<()> {
    let new = new_dir(dir);
    std::fs::File::create(new.join(COMPLETE))?.sync_all()?;
    sync_dir(&new)?;
    finish(dir)
}

/// Completes a swap that a crash interrupted, or drops an incomplete copy; nothing to do
/// when neither is there.
pub(crate) fn finish(dir: &Path) -> std::io::Result<()> {
    let new = new_dir(dir);
    let old = sibling(dir, ".old");
    if new.join(COMPLETE).exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&new, dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        std::fs::remove_file(dir.join(COMPLETE))?;
    } else if new.exists() {
        std::fs::remove_dir_all(&new)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_copy_wins_and_an_incomplete_one_goes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("store");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"old").unwrap();
        std::fs::create_dir(new_dir(&dir)).unwrap();
        std::fs::write(new_dir(&dir).join("f"), b"half").unwrap();
        finish(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"old");
        assert!(!new_dir(&dir).exists());
        std::fs::create_dir(new_dir(&dir)).unwrap();
        std::fs::write(new_dir(&dir).join("f"), b"new").unwrap();
        swap_in(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"new");
        assert!(!dir.join(COMPLETE).exists());
        assert!(!sibling(&dir, ".old").exists());
        assert!(!new_dir(&dir).exists());
    }

    #[cfg(unix)]
    #[test]
    fn the_new_copy_keeps_the_directory_mode() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("store");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let new = create_new_dir(&dir).unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(new.join("f"), b"new").unwrap();
        swap_in(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
