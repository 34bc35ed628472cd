//! The `sealpost-relay` binary run as a child process, and a look through a data directory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

/// A command for the relay binary.
pub fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealpost-relay"))
}

/// A running `serve`, with the address it printed on standard error and the pin it printed on
/// standard output.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    pub pin: String,
    /// The admin listener's address.
    pub admin: String,
    stderr: BufReader<ChildStderr>,
    /// Standard error read so far.
    pub log: String,
}

impl Serve {
    /// Starts `serve` on a free loopback port with `extra` arguments and `SEALPOST_LOG=log`.
    pub fn start(data: &Path, extra: &[&str], log: &str) -> Self {
        Self::start_on(data, "127.0.0.1:0", extra, log)
    }

    /// [`Serve::start`] on a given QUIC address.
    pub fn start_on(data: &Path, listen: &str, extra: &[&str], log: &str) -> Self {
        let mut child = cli()
            .args([
                "serve",
                "--listen",
                listen,
                "--admin",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .env("SEALPOST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut text = String::new();
        let addr = word_after(&mut stderr, &mut text, "listening on ");
        let mut pin = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut pin)
            .unwrap();
        let pin = pin.trim().rsplit(' ').next().unwrap().to_owned();
        assert_eq!(pin.len(), 64, "{pin}");
        let admin = word_after(&mut stderr, &mut text, "admin HTTP on http://");
        Self {
            child,
            addr,
            pin,
            admin,
            stderr,
            log: text,
        }
    }

    /// Reads the relay's standard error up to a line containing `marker` and returns that
    /// line. A relay that has not written it within `within` is killed, which ends the read,
    /// and the test fails.
    pub fn wait_for_log(&mut self, marker: &str, within: std::time::Duration) -> String {
        let pid = self.child.id().to_string();
        let (found, wait) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if wait.recv_timeout(within).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "no log line with {marker:?} within {within:?}: {}",
                self.log
            );
            self.log.push_str(&line);
            if line.contains(marker) {
                let _ = found.send(());
                watchdog.join().unwrap();
                return line;
            }
        }
    }

    /// Kills the relay and returns everything it wrote on standard error.
    pub fn stop(mut self) -> String {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.stderr.read_to_string(&mut self.log).unwrap();
        self.log
    }
}

/// Reads the relay's standard error (keeping it in `text`) up to a line containing `marker`,
/// and returns the word that follows the marker.
fn word_after(stderr: &mut BufReader<ChildStderr>, text: &mut String, marker: &str) -> String {
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "relay exited early: {text}"
        );
        text.push_str(&line);
        if let Some(rest) = line.split(marker).nth(1) {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
    }
}

/// Sends `sig` (`-TERM`, `-HUP`, `-STOP`, `-KILL`, ...) to a running `serve`.
pub fn signal(serve: &Serve, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &serve.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// `mailbox create` through the CLI against `addr` with `pin`, writing the mailbox file to
/// `out`; returns the invitation it printed.
pub fn create_mailbox(addr: &str, pin: &str, out: &Path) -> String {
    let done = cli()
        .args(["mailbox", "create", "--relay", addr, "--pin", pin, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    String::from_utf8(done.stdout).unwrap().trim().to_owned()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found
}

/// Files under `dir` (recursively) called `name`.
pub fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                // The store deletes files in the background (compaction, old journals).
                let bytes = match std::fs::read(&p) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("reading {}: {e}", p.display()),
                };
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// A plain HTTP/1.1 GET against the admin listener: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// Runs `serve` with `args` (and no SEALPOST_LOG or NO_COLOR) until it has started, stops it
/// with SIGTERM, checks that it exited 0, and returns (standard output, standard error).
pub fn start_and_stop(data: &std::path::Path, args: &[&str]) -> (String, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = cli()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .args(args)
        .env_remove("SEALPOST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut err = String::new();
    // The admin line is the last of start-up.
    while !err.contains("admin HTTP on") {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "serve exited early: {err}");
        err.push_str(&line);
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    stderr.read_to_string(&mut err).expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "serve failed: {err}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    (out, err)
}
