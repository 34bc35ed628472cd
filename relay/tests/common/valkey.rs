//! A Valkey cluster for the cluster-store tests (issue 12), found or started the same way as
//! everywhere else: by `deploy/valkey/cluster.sh`.
//!
//! [`cluster`] uses the cluster named by `SEALPOST_TEST_VALKEY_NODES` (CI starts one for the
//! whole run); otherwise it starts a private one in a temporary directory on free ports and
//! stops it when the handle is dropped. Without `valkey-server` the test fails under CI and,
//! elsewhere, says loudly that it did not run.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// The master key of every test on a cluster: under CI one cluster serves every test binary,
/// and the cluster's deposit-id key is sealed with the master key of the first store to open
/// it, so a test with another key would be refused.
pub const MASTER_KEY: [u8; 32] = [0x5e; 32];

/// Writes [`MASTER_KEY`] as a key file (`--master-key-file`) at `path`.
pub fn write_master_key(path: &std::path::Path) {
    let hex: String = MASTER_KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex).expect("write the master key file");
}

/// The variable naming a running cluster's nodes, `HOST:PORT,...` (what `cluster.sh up` prints).
pub const NODES_VAR: &str = "SEALPOST_TEST_VALKEY_NODES";

/// Nodes in a `cluster.sh` cluster: 3 primaries and 3 replicas on consecutive ports.
const NODES: u16 = 6;
/// `cluster.sh` puts each node's cluster bus this far above its port.
const BUS_OFFSET: u16 = 10_000;
/// `cluster.sh up`'s exit status when one of its ports is taken.
const EXIT_PORT_TAKEN: i32 = 3;

/// A cluster's node addresses; a cluster this process started is stopped on drop.
pub struct ValkeyCluster {
    nodes: Vec<String>,
    started: Option<Started>,
}

/// A cluster started here: its directory (removed after the nodes stop) and base port.
struct Started {
    dir: tempfile::TempDir,
    base: u16,
}

impl ValkeyCluster {
    /// The nodes' `HOST:PORT` addresses.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Stops every node and starts them again with their data (`cluster.sh down` then `up`),
    /// waiting until the cluster is ok again. Only for a cluster this process started.
    pub fn restart(&self) {
        self.run(&["down", "up"]);
    }

    /// Stops every node (`cluster.sh down`), keeping their data for [`ValkeyCluster::up`].
    /// Only for a cluster this process started.
    pub fn down(&self) {
        self.run(&["down"]);
    }

    /// Starts the nodes that are not running (`cluster.sh up`): a killed node comes back with
    /// its data and rejoins. Only for a cluster this process started.
    pub fn up(&self) {
        self.run(&["up"]);
    }

    /// SIGKILLs the node listening on `port`. Only for a cluster this process started.
    pub fn kill_node(&self, port: u16) {
        let started = self
            .started
            .as_ref()
            .expect("kill_node() is for a cluster this test started");
        let pidfile = started
            .dir
            .path()
            .join(format!("node-{port}"))
            .join("valkey.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        let out = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .output()
            .expect("run kill");
        assert!(out.status.success(), "kill -KILL {pid}: {out:?}");
    }

    fn run(&self, verbs: &[&str]) {
        let started = self
            .started
            .as_ref()
            .expect("for a cluster this test started");
        for verb in verbs {
            let out = script()
                .arg(verb)
                .arg("--dir")
                .arg(started.dir.path())
                .args(["--base-port", &started.base.to_string()])
                .output()
                .expect("run deploy/valkey/cluster.sh");
            assert!(
                out.status.success(),
                "cluster.sh {verb} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The nodes' directories (data, AOF, logs), when this process started the cluster.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.started.as_ref().map(|s| s.dir.path())
    }
}

impl Drop for ValkeyCluster {
    fn drop(&mut self) {
        if let Some(started) = &self.started {
            let out = script()
                .arg("down")
                .arg("--dir")
                .arg(started.dir.path())
                .args(["--base-port", &started.base.to_string()])
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cluster.sh down failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cluster.sh down could not run: {e}"),
            }
        }
    }
}

/// A cluster of this test's own (never the shared one of `SEALPOST_TEST_VALKEY_NODES`), for
/// tests that stop or restart nodes; `None` (said loudly) without valkey-server.
pub fn private_cluster(test: &str) -> Option<ValkeyCluster> {
    installed(test).then(start)
}

/// The cluster for test `test`: `SEALPOST_TEST_VALKEY_NODES` if set, else a new one if
/// `valkey-server` is installed. Without it: panics under CI (`CI=true`), and elsewhere prints
/// past the test harness's capture that `test` did not run and how to install Valkey, and
/// returns `None` (the caller returns early).
pub fn cluster(test: &str) -> Option<ValkeyCluster> {
    if let Ok(nodes) = std::env::var(NODES_VAR)
        && !nodes.trim().is_empty()
    {
        let nodes = nodes.split(',').map(|n| n.trim().to_owned()).collect();
        return Some(ValkeyCluster {
            nodes,
            started: None,
        });
    }
    if !installed(test) {
        return None;
    }
    Some(start())
}

/// Whether `valkey-server` is on PATH; without it: panics under CI, and elsewhere says loudly
/// that `test` did not run.
fn installed(test: &str) -> bool {
    if Command::new("valkey-server")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "valkey-server is required under CI (test {test}): install it with \
                 deploy/valkey/install.sh, or set {NODES_VAR} to a running cluster"
            );
        }
        // Written to the process's stderr directly: the harness captures eprintln! of passing
        // tests, and a test that did not run must not look like one that passed.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n********************************************************************\n\
             * NOT RUN: {test}\n\
             * needs valkey-server (Valkey 8), which is not on PATH.\n\
             * Install it: deploy/valkey/install.sh (Debian 12, from bookworm-backports),\n\
             * or set {NODES_VAR} to a running cluster (deploy/valkey/cluster.sh up).\n\
             ********************************************************************"
        );
        return false;
    }
    true
}

/// One cluster-enabled node serving no slots yet and writing its AOF with `appendfsync`, for
/// tests of what the store refuses; killed on drop.
pub struct SingleNode {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its directory (AOF files in `appendonlydir/`).
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a [`SingleNode`] for test `test`; `None` (said loudly) without valkey-server.
pub fn single_node(test: &str, appendfsync: &str) -> Option<SingleNode> {
    if !installed(test) {
        return None;
    }
    let port = loop {
        let port = rand::random_range(10_000..(32_768 - BUS_OFFSET));
        if [port, port + BUS_OFFSET]
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            break port;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory for the Valkey node");
    let d = dir.path().display().to_string();
    let child = Command::new("valkey-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("{d}/nodes.conf")])
        .args(["--dir", &d, "--logfile", &format!("{d}/valkey.log")])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start valkey-server");
    Some(SingleNode {
        addr: format!("127.0.0.1:{port}"),
        dir,
        child,
    })
}

/// `deploy/valkey/cluster.sh`.
fn script() -> Command {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "deploy",
        "valkey",
        "cluster.sh",
    ]
    .iter()
    .collect();
    Command::new(path)
}

/// Starts a cluster in a new temporary directory on ports nothing listens on, trying other
/// ports when another process takes one between the check and the start.
fn start() -> ValkeyCluster {
    const ATTEMPTS: usize = 10;
    for _ in 0..ATTEMPTS {
        let base = free_base_port();
        let dir = tempfile::tempdir().expect("temporary directory for the Valkey cluster");
        let out = script()
            .arg("up")
            .arg("--dir")
            .arg(dir.path())
            .args(["--base-port", &base.to_string()])
            .output()
            .expect("run deploy/valkey/cluster.sh");
        // From here on the handle stops whatever the script started, even if `up` failed
        // half-way through.
        let mut cluster = ValkeyCluster {
            nodes: Vec::new(),
            started: Some(Started { dir, base }),
        };
        if out.status.code() == Some(EXIT_PORT_TAKEN) {
            continue;
        }
        assert!(
            out.status.success(),
            "deploy/valkey/cluster.sh up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        cluster.nodes = stdout.trim().split(',').map(str::to_owned).collect();
        assert_eq!(cluster.nodes.len(), usize::from(NODES), "{stdout}");
        return cluster;
    }
    panic!("no free ports for a Valkey cluster after {ATTEMPTS} attempts");
}

/// A base port whose node and bus ports are all free on loopback right now, below Linux's
/// ephemeral range (32768 and up) so outgoing connections do not take them meanwhile.
fn free_base_port() -> u16 {
    loop {
        let base = rand::random_range(10_000..(32_768 - BUS_OFFSET - NODES));
        let free = (0..NODES)
            .flat_map(|i| [base + i, base + i + BUS_OFFSET])
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
}
