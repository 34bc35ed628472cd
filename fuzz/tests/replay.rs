//! Replays every corpus file through its target on the stable toolchain: a regression that
//! makes any stored input fail a property fails `cargo test --workspace`, and so CI.

use sealpost_fuzz::TARGETS;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(name: &str) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let dir = corpus_root().join(name);
    let inputs = files(&dir);
    assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        // The hand-made seeds must reach the round-trip checks; only `seed-bad-*` may not.
        let must_accept = file
            .as_deref()
            .is_some_and(|f| f.starts_with("seed-") && !f.starts_with("seed-bad-"));
        match catch_unwind(AssertUnwindSafe(|| (target.run)(&data))) {
            Err(_) => failed.push(path.display().to_string()),
            Ok(false) if must_accept => {
                failed.push(format!("{} (a seed, but refused)", path.display()));
            }
            Ok(_) => {}
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {} corpus inputs fail (the panic messages are above):\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
    eprintln!("{name}: {} corpus inputs pass", inputs.len());
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let mut dirs: Vec<String> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_owned()).collect();
    names.sort();
    assert_eq!(dirs, names);
    for name in &names {
        let harness = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(harness.is_file(), "{} is missing", harness.display());
    }
}

#[test]
fn frame_decoder() {
    replay("frame_decoder");
}

#[test]
fn envelope() {
    replay("envelope");
}

#[test]
fn control() {
    replay("control");
}

#[test]
fn invitation() {
    replay("invitation");
}

#[test]
fn settings() {
    replay("settings");
}

#[test]
fn mailbox_file() {
    replay("mailbox_file");
}

#[test]
fn subscription() {
    replay("subscription");
}

#[test]
fn deposit_stream() {
    replay("deposit_stream");
}
