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

/// Whether `valkey-server` is installed. Without it: panics under CI (`CI=true`), and
/// elsewhere says loudly, past the test harness's capture, that `test` did not run.
#[allow(dead_code)] // Not every test binary runs a cluster.
pub fn valkey_or_skip(test: &str) -> bool {
    use std::io::Write;
    let installed = std::process::Command::new("valkey-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "valkey-server is required under CI (test {test}): install it with deploy/valkey/install.sh"
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n********************************************************************\n\
         * NOT RUN: {test}\n\
         * needs valkey-server (Valkey 8), which is not on PATH.\n\
         * Install it: deploy/valkey/install.sh (Debian 12, from bookworm-backports).\n\
         ********************************************************************"
    );
    false
}
