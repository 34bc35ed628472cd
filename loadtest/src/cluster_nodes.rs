//! The nodes of a Valkey cluster run by `deploy/valkey/cluster.sh`, as `chaos` needs them:
//! which nodes are primaries and which replicas follow them, SIGKILL of a node by the pid in its
//! pidfile, waiting until a replica has taken over, and starting the killed node again with
//! `cluster.sh up` so that it rejoins (as a replica of the promoted node).
//!
//! Everything here blocks (it runs `valkey-cli` and the script); call it off the async threads.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the nodes are asked while waiting for a change of role.
const POLL: Duration = Duration::from_millis(50);

/// How long one `valkey-cli` call may take: a node that does not answer in this time counts as
/// not answering (a killed node's port may hang rather than refuse for a moment).
const CLI_TIMEOUT_S: &str = "3";

/// A `cluster.sh` cluster: its nodes, directory and base port.
#[derive(Debug, Clone)]
pub struct ClusterNodes {
    script: PathBuf,
    dir: PathBuf,
    base: u16,
    nodes: Vec<String>,
}

/// What `INFO replication` says about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A primary, with the addresses of its replicas.
    Primary(Vec<String>),
    /// A replica.
    Replica,
}

impl ClusterNodes {
    /// The cluster in `dir` whose first node listens on `base` (`cluster.sh --dir DIR
    /// --base-port BASE`), with nodes `nodes` (HOST:PORT), managed with `script`.
    pub fn new(script: &Path, dir: &Path, base: u16, nodes: Vec<String>) -> Self {
        Self {
            script: script.to_owned(),
            dir: dir.to_owned(),
            base,
            nodes,
        }
    }

    /// A cluster given by its nodes and its `cluster.sh` directory: the base port is the lowest
    /// node port. Fails when a node has no pidfile there (then it is not that directory).
    pub fn given(script: &Path, dir: &Path, nodes: &[String]) -> anyhow::Result<Self> {
        let mut base = u16::MAX;
        for n in nodes {
            let port = port_of(n)?;
            base = base.min(port);
            let pidfile = dir.join(format!("node-{port}")).join("valkey.pid");
            if !pidfile.exists() {
                bail!(
                    "{} does not exist: --cluster-dir must be the --dir given to deploy/valkey/cluster.sh up for the nodes of --cluster-nodes",
                    pidfile.display()
                );
            }
        }
        Ok(Self::new(script, dir, base, nodes.to_vec()))
    }

    /// The nodes' addresses.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The role of `node`, `None` when it does not answer.
    pub fn role(&self, node: &str) -> Option<Role> {
        let info = cli(node, &["info", "replication"])?;
        parse_role(&info)
    }

    /// The nodes that answer as primaries, with their replicas.
    pub fn primaries(&self) -> Vec<(String, Vec<String>)> {
        self.nodes
            .iter()
            .filter_map(|n| match self.role(n) {
                Some(Role::Primary(replicas)) => Some((n.clone(), replicas)),
                _ => None,
            })
            .collect()
    }

    /// The pid in `node`'s pidfile, if that process is running and is the `valkey-server` of
    /// that port (a stale pidfile whose pid was reused must not get a signal).
    pub fn pid(&self, node: &str) -> anyhow::Result<u32> {
        let port = port_of(node)?;
        let pidfile = self.dir.join(format!("node-{port}")).join("valkey.pid");
        let text = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("reading {}", pidfile.display()))?;
        let pid: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a pid", pidfile.display()))?;
        if !is_node_process(pid, port) {
            bail!(
                "pid {pid} from {} is not a running valkey-server on port {port}",
                pidfile.display()
            );
        }
        Ok(pid)
    }

    /// SIGKILLs `node` and waits until its process is gone.
    pub fn kill(&self, node: &str) -> anyhow::Result<()> {
        let pid = self.pid(node)?;
        let port = port_of(node)?;
        let raw = i32::try_from(pid).context("pid out of range")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("kill -KILL {pid} ({node})"))?;
        // Not our child (the node daemonized): init reaps it; `cluster.sh up` must not see it
        // still running.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_node_process(pid, port) {
            if Instant::now() > deadline {
                bail!("{node} (pid {pid}) still runs 10 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits until one of `replicas` answers as a primary (the cluster promoted it) and
    /// returns it; fails after `within`.
    pub fn wait_promoted(&self, replicas: &[String], within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            for r in replicas {
                if let Some(Role::Primary(_)) = self.role(r) {
                    return Ok(r.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no replica of the killed primary ({}) was promoted within {} s; see the valkey.log files in {}",
                    replicas.join(", "),
                    within.as_secs(),
                    self.dir.display()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `cluster.sh up`: starts the nodes that are not running (they rejoin with their data)
    /// and waits until every node reports `cluster_state:ok` and replication is in sync.
    pub fn up(&self, within: Duration) -> anyhow::Result<()> {
        let out = Command::new(&self.script)
            .arg("up")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--base-port")
            .arg(self.base.to_string())
            .arg("--timeout")
            .arg(within.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "{} up failed ({}): {}",
                self.script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The port of `HOST:PORT`.
fn port_of(node: &str) -> anyhow::Result<u16> {
    node.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("{node:?} is not HOST:PORT"))
}

/// Whether `pid` is a running `valkey-server` serving `port` (Valkey shows its address in its
/// process title).
fn is_node_process(pid: u32, port: u16) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    let suffix = format!(":{port}");
    cmd.contains("valkey-server") && cmd.split_whitespace().any(|w| w.ends_with(&suffix))
}

/// `valkey-cli -h HOST -p PORT ARGS…`'s output, `None` when the node does not answer in time.
fn cli(node: &str, args: &[&str]) -> Option<String> {
    let (host, port) = node.rsplit_once(':')?;
    let out = Command::new("timeout")
        .args([CLI_TIMEOUT_S, "valkey-cli", "-h", host, "-p", port])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.trim().is_empty()).then_some(text)
}

/// The role in an `INFO replication` reply (`role:master` with `slaveN:ip=…,port=…` lines, or
/// `role:slave`).
fn parse_role(info: &str) -> Option<Role> {
    let field = |line: &str, key: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(key))
            .map(str::to_owned)
    };
    let mut role = None;
    let mut replicas = Vec::new();
    for line in info.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("role:") {
            role = Some(r.to_owned());
        } else if line.starts_with("slave")
            && let Some((_, rest)) = line.split_once(':')
            && let (Some(ip), Some(port)) = (field(rest, "ip="), field(rest, "port="))
        {
            replicas.push(format!("{ip}:{port}"));
        }
    }
    match role.as_deref() {
        Some("master") => Some(Role::Primary(replicas)),
        Some("slave") => Some(Role::Replica),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_info_replication() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=22004,state=online,offset=42,lag=0\r\nmaster_failover_state:no-failover\r\n";
        assert_eq!(
            parse_role(primary),
            Some(Role::Primary(vec!["127.0.0.1:22004".into()]))
        );
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:22000\r\nslave_read_repl_offset:5\r\n";
        assert_eq!(parse_role(replica), Some(Role::Replica));
        assert_eq!(parse_role(""), None);
        assert_eq!(port_of("127.0.0.1:22001").unwrap(), 22001);
        assert!(port_of("nowhere").is_err());
    }
}
