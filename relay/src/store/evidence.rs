//! What one run of the disk store leaves for the next, because it must outlive a restart:
//!
//! - `failed`: written when a store write fails. The relay exits right after (so that its
//!   supervisor restarts it), usually before any scrape sees `sealpost_store_failed`; the next
//!   start reads the file, logs it, exports its time as
//!   `sealpost_store_previous_failure_timestamp_seconds` and removes it.
//! - `shortfall`: the acknowledged envelopes recovery found missing (see `checkpoint`), added
//!   up over the starts that found some. Each start reports it (log and
//!   `sealpost_store_recovery_shortfall_envelopes`) until an operator removes the file, so the
//!   evidence survives a start that then fails, and the restarts after it.
//!
//! Both are short text files of `key=value` lines, written atomically.

use super::atomic_file;
use super::checkpoint::Shortfall;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The failure marker's name in the store directory.
pub const FAILED_FILE: &str = "failed";
/// The shortfall record's name in the store directory.
pub const SHORTFALL_FILE: &str = "shortfall";

/// A store failure that stopped an earlier run, as its marker tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousFailure {
    /// When it failed, in seconds since the Unix epoch (0 if the marker did not say).
    pub at_unix_secs: u64,
    /// The error, as logged then.
    pub reason: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The value of `key` in `key=value` lines.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn number(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.trim().parse().ok()
}

/// Records a store failure for the next start. Best effort: a disk that just failed a write
/// may fail this one too, which the caller logs.
pub fn record_failure(dir: &Path, reason: &str) -> std::io::Result<()> {
    let reason = reason.replace(['\n', '\r'], " ");
    let text = format!("at_unix_secs={}\nreason={reason}\n", now_secs());
    atomic_file::write(dir, FAILED_FILE, text.as_bytes())
}

/// The failure an earlier run recorded, if any (the file is left in place: see
/// [`clear_failure`]).
pub fn read_failure(dir: &Path) -> Option<PreviousFailure> {
    let text = std::fs::read_to_string(dir.join(FAILED_FILE)).ok()?;
    Some(PreviousFailure {
        at_unix_secs: number(&text, "at_unix_secs").unwrap_or(0),
        reason: field(&text, "reason")
            .unwrap_or("(not recorded)")
            .trim()
            .to_owned(),
    })
}

/// Removes the failure marker once this start has reported it.
pub fn clear_failure(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(FAILED_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The shortfall recorded by earlier starts, if any; an error if the file cannot be read.
pub fn read_shortfall(dir: &Path) -> Result<Option<Shortfall>, String> {
    let path = dir.join(SHORTFALL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok(Some(Shortfall {
        envelopes: number(&text, "missing_envelopes").unwrap_or(0),
        mailboxes: number(&text, "mailboxes_affected").unwrap_or(0),
        mailboxes_missing: number(&text, "mailboxes_missing").unwrap_or(0),
    }))
}

/// Adds `found` to the recorded shortfall and returns the new total.
pub fn add_shortfall(dir: &Path, found: Shortfall) -> Result<Shortfall, String> {
    let before = read_shortfall(dir)?.unwrap_or_default();
    let total = Shortfall {
        envelopes: before.envelopes.saturating_add(found.envelopes),
        mailboxes: before.mailboxes.saturating_add(found.mailboxes),
        mailboxes_missing: before
            .mailboxes_missing
            .saturating_add(found.mailboxes_missing),
    };
    let text = format!(
        "# Acknowledged envelopes the store did not recover at start-up (sealpost relay).\n\
         # Reported at every start until this file is removed: remove it once dealt with.\n\
         missing_envelopes={}\nmailboxes_affected={}\nmailboxes_missing={}\nlast_found_unix_secs={}\n",
        total.envelopes,
        total.mailboxes,
        total.mailboxes_missing,
        now_secs()
    );
    atomic_file::write(dir, SHORTFALL_FILE, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", dir.join(SHORTFALL_FILE).display()))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_read_back_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_failure(dir.path()), None);
        record_failure(dir.path(), "disk\nfull").unwrap();
        let f = read_failure(dir.path()).unwrap();
        assert_eq!(f.reason, "disk full");
        assert!(f.at_unix_secs > 1_700_000_000, "{}", f.at_unix_secs);
        clear_failure(dir.path()).unwrap();
        assert_eq!(read_failure(dir.path()), None);
        clear_failure(dir.path()).unwrap();
    }

    #[test]
    fn shortfalls_add_up() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_shortfall(dir.path()).unwrap(), None);
        let s = Shortfall {
            envelopes: 49,
            mailboxes: 1,
            mailboxes_missing: 2,
        };
        assert_eq!(add_shortfall(dir.path(), s).unwrap(), s);
        let total = add_shortfall(dir.path(), s).unwrap();
        assert_eq!(total.envelopes, 98);
        assert_eq!(read_shortfall(dir.path()).unwrap(), Some(total));
    }
}
