//! Small files of the store written whole or not at all: a temporary file under a random
//! name, fsync, rename over the target, fsync of the directory. The random name means two
//! writers (the background flusher and a close, say) never truncate each other's temporary
//! file, so the last rename wins with a complete file instead of a torn one.

use std::io::Write;
use std::path::Path;

/// How temporary files end, so that [`remove_leftovers`] finds those a crash left.
const TMP_SUFFIX: &str = ".tmp";

/// Replaces `dir/name` with `bytes` atomically.
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_mode(dir, name, bytes, false)
}

/// [`write`], the file readable and writable by its owner only (for secrets).
pub(crate) fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_mode(dir, name, bytes, true)
}

fn write_mode(dir: &Path, name: &str, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let suffix: [u8; 8] = rand::random();
    let tmp = dir.join(format!("{name}.{}{TMP_SUFFIX}", hex::encode(suffix)));
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes temporary files of `dir/name` that a crash left between create and rename.
pub(crate) fn remove_leftovers(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.");
    for e in entries.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(TMP_SUFFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers at once each leave a whole file (one of theirs), never a torn one, and no
    /// temporary file stays.
    #[test]
    fn concurrent_writers_never_tear_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = (0u8..4)
            .map(|w| {
                let d = dir.path().to_owned();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write(&d, "f", &[w; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let got = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|&b| b == got[0]), "torn file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn leftovers_of_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.0123.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("other.tmp"), b"not ours").unwrap();
        remove_leftovers(dir.path(), "f");
        assert!(!dir.path().join("f.0123.tmp").exists());
        assert!(dir.path().join("other.tmp").exists());
    }
}
