//! The real `sealpost-relay serve` as a child process, for the runs that must kill or
//! measure the relay from outside (chaos, many mailboxes, abuse).

use anyhow::Context;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A relay child process, ready: it has printed its certificate pin.
pub struct RelayProcess {
    /// The process.
    pub child: Child,
    /// Its certificate pin.
    pub pin: [u8; 32],
}

/// Starts `bin serve` on the disk store at `dir`, listening on `addr`, and waits until it
/// prints its pin (it does so once it accepts connections).
pub fn start(bin: &Path, addr: &str, dir: &Path) -> anyhow::Result<RelayProcess> {
    let mut args: Vec<OsString> = [
        "--store",
        "disk",
        "--admin",
        "127.0.0.1:0",
        "--listen",
        addr,
        // A few mailboxes take the load of many and all connections come from one
        // address: the abuse limits are off, as in the in-process relay of `run`.
        "--mailbox-deposits-per-sec",
        "0",
        "--source-connections-per-sec",
        "0",
        "--max-connections-per-source",
        "0",
        "--connection-streams-per-sec",
        "0",
        "--source-creates-per-sec",
        "0",
        "--source-streams-per-sec",
        "0",
        "--source-faults-per-sec",
        "0",
        "--data-dir",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(dir.into());
    start_serve(bin, &args, Stdio::null())
}

/// Starts `bin serve ARGS…` with its log at `warn` going to `stderr`, and waits until it prints
/// its pin.
pub fn start_serve(bin: &Path, args: &[OsString], stderr: Stdio) -> anyhow::Result<RelayProcess> {
    let mut child = Command::new(bin)
        .arg("serve")
        .args(args)
        .env("SEALPOST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the relay's pin")?;
    let hex_pin = line.trim().rsplit(' ').next().unwrap_or_default();
    match sealpost_client::tls::parse_pin(hex_pin) {
        Ok(pin) => Ok(RelayProcess { child, pin }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the relay did not come up (printed {line:?} instead of its pin)")
        }
    }
}

/// The `sealpost-relay` binary: the one given, or the one next to this executable.
pub fn relay_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("locating this executable's directory")?
            .join(format!("sealpost-relay{}", std::env::consts::EXE_SUFFIX)),
    };
    if !bin.exists() {
        anyhow::bail!(
            "relay binary {} not found: build it (cargo build --release -p sealpost-relay) or pass --relay-bin",
            bin.display()
        );
    }
    Ok(bin)
}
