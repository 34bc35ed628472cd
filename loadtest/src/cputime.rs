//! CPU time of other processes (relays, Valkey nodes) from Linux `/proc/PID/stat`, and the
//! Valkey nodes' command counters, read before and after a run.

use std::path::Path;
use std::process::{Command, Stdio};

/// Clock ticks per second of the times in `/proc/PID/stat`.
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        // USER_HZ is 100 on every Linux architecture this runs on.
        _ => 100.0,
    }
}

/// User plus system CPU seconds process `pid` has used so far, `None` if it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// The summed CPU seconds of `pids` (those that cannot be read count nothing).
pub fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// Pids in the `valkey.pid` files of a `cluster.sh` directory's `node-PORT` subdirectories.
pub fn pids_from_pidfiles(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("valkey.pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Pids of the `valkey-server` processes on this machine serving the ports of `nodes`
/// (HOST:PORT; Valkey shows its address in its process title). Nodes on other machines are
/// not found, so their CPU is not counted.
pub fn valkey_pids_by_port(nodes: &[String]) -> Vec<u32> {
    let ports: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.rsplit_once(':').map(|(_, p)| format!(":{p}")))
        .collect();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let serves = cmd.contains("valkey-server")
                && ports
                    .iter()
                    .any(|p| cmd.split_whitespace().any(|w| w.ends_with(p.as_str())));
            serves.then_some(pid)
        })
        .collect()
}

/// Calls of the commands the cluster store's write path issues, summed over some nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommandCalls {
    /// `WAITAOF`: what a group commit (a batch of writes to one primary) waits with until the
    /// primary and a replica have it fsynced; sent in short slices, so one or more per commit.
    pub waitaof: u64,
    /// `FCALL` and `FCALL_RO`: the store's server-side functions.
    pub fcall: u64,
}

impl CommandCalls {
    /// Counters grown between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            waitaof: self.waitaof.saturating_sub(earlier.waitaof),
            fcall: self.fcall.saturating_sub(earlier.fcall),
        }
    }
}

/// The `calls=` of one `cmdstat_NAME:` line of `INFO commandstats`.
fn calls(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("cmdstat_{name}:")))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads `INFO commandstats` of every node with `valkey-cli`; `None` if any node does not
/// answer (or valkey-cli is missing).
pub fn command_calls(nodes: &[String]) -> Option<CommandCalls> {
    let mut total = CommandCalls::default();
    for n in nodes {
        let (host, port) = n.rsplit_once(':')?;
        let out = Command::new("valkey-cli")
            .args(["-h", host, "-p", port, "info", "commandstats"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let info = String::from_utf8_lossy(&out.stdout);
        total.waitaof += calls(&info, "waitaof");
        total.fcall += calls(&info, "fcall") + calls(&info, "fcall_ro");
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        // Work until the kernel has counted a tick of it (a deadline rather than a guess at
        // how much work a tick takes).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let s = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let s = cpu_seconds(std::process::id()).expect("own /proc stat");
            if s > 0.0 || std::time::Instant::now() > deadline {
                break s;
            }
        };
        std::hint::black_box(x);
        assert!(s > 0.0, "{s}");
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn command_counts_are_read_from_info() {
        let info = "# Commandstats\r\ncmdstat_fcall:calls=12,usec=3\r\ncmdstat_waitaof:calls=5,usec=9,usec_per_call=1.8\r\ncmdstat_fcall_ro:calls=2,usec=1\r\n";
        assert_eq!(calls(info, "waitaof"), 5);
        assert_eq!(calls(info, "fcall"), 12);
        assert_eq!(calls(info, "fcall_ro"), 2);
        assert_eq!(calls(info, "get"), 0);
    }
}
