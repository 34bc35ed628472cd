//! Helpers shared by the tests that run the real relay binary.

use std::path::PathBuf;

/// The relay binary cargo built for this workspace (tests run from target/<profile>/deps).
pub fn relay_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("sealpost-relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // Running this crate's tests alone: build the relay first (same target directory).
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "sealpost-relay", "--bin", "sealpost-relay"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building sealpost-relay failed");
    }
    bin
}
