//! Relays as `sealpost-relay serve` child processes for `run --spawn-relay --relays N`: on the
//! disk store (one relay) or on a Valkey cluster (several relays sharing one store), with the
//! cluster either given or started here with `deploy/valkey/cluster.sh` and stopped at the end.
//! Child processes rather than in-process relays so that their CPU time is theirs alone.

use crate::child::{RelayProcess, start_serve};
use crate::cputime;
use crate::load::options::StoreKind;
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Store of every relay: `disk` (then exactly one relay) or `cluster`.
    pub store: StoreKind,
    /// How many relays.
    pub relays: usize,
    /// A running Valkey cluster's nodes, HOST:PORT; `None`: start one for the run.
    pub cluster_nodes: Option<Vec<String>>,
    /// The `sealpost-relay` binary.
    pub relay_bin: PathBuf,
    /// `deploy/valkey/cluster.sh`, to start a cluster when none is given.
    pub cluster_script: PathBuf,
    /// The master key for the cluster store (the cluster keeps secrets sealed under the first
    /// key it saw, so every run on one cluster needs the same); `None`: a new one in a
    /// temporary file, for a cluster that saw none or no other.
    pub master_key_file: Option<PathBuf>,
}

impl FleetOptions {
    /// `store` with `relays` relays, the binary next to this one and the script of this source
    /// tree.
    pub fn new(store: StoreKind, relays: usize) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            relays,
            cluster_nodes: None,
            relay_bin: crate::child::relay_bin(None)?,
            cluster_script: default_cluster_script(),
            master_key_file: None,
        })
    }
}

/// `deploy/valkey/cluster.sh` of the source tree this program was built from.
pub fn default_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/valkey/cluster.sh")
}

/// A Valkey cluster started with `cluster.sh` in a temporary directory; stopped (and its
/// directory removed) on drop.
pub struct OwnCluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    base: u16,
}

impl OwnCluster {
    /// The directory the nodes keep their data, logs and pidfiles in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port of the first node (`--base-port`).
    pub fn base_port(&self) -> u16 {
        self.base
    }

    /// The script that started it.
    pub fn script(&self) -> &Path {
        &self.script
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--base-port")
            .arg(self.base.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The started relays (and cluster); every process is stopped on drop.
pub struct Fleet {
    /// Each relay: its process while it runs (`None` after [`Fleet::kill_relay`]).
    relays: Vec<Option<RelayProcess>>,
    /// How each relay was started, to start it again the same way.
    launches: Vec<Launch>,
    /// Their QUIC addresses, in the order started.
    pub addrs: Vec<String>,
    /// Their common certificate pin.
    pub pin: [u8; 32],
    /// The Valkey nodes used (cluster store).
    pub cluster_nodes: Vec<String>,
    /// Whether this run started the cluster.
    pub cluster_started: bool,
    /// Pids of the Valkey nodes whose CPU time is measured.
    pub valkey_pids: Vec<u32>,
    relay_bin: PathBuf,
    _cluster: Option<OwnCluster>,
    _dir: tempfile::TempDir,
}

/// A relay's command line and log file.
struct Launch {
    args: Vec<OsString>,
    log: PathBuf,
}

impl Launch {
    /// Starts the relay, its log appended to its log file.
    fn start(&self, bin: &Path, i: usize) -> anyhow::Result<RelayProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        start_serve(bin, &self.args, Stdio::from(log)).with_context(|| {
            format!(
                "relay {i}: see {} (kept only while the run lasts)",
                self.log.display()
            )
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in self.relays.iter_mut().flatten() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a cluster with the script in a temporary directory on free ports: a random base port,
/// another one if the script says a port is taken. Returns it with its nodes' addresses.
pub fn start_cluster(script: &Path) -> anyhow::Result<(OwnCluster, Vec<String>)> {
    for _ in 0..5 {
        // Nodes on base..base+5, their buses 10000 above: both under 65536. The handle exists
        // before `up`, so that nodes a failed `up` left running are stopped too.
        let own = OwnCluster {
            script: script.to_owned(),
            dir: tempfile::tempdir().context("temporary directory for the Valkey cluster")?,
            base: rand::random_range(20_000..45_000),
        };
        let out = Command::new(script)
            .arg("up")
            .arg("--dir")
            .arg(own.dir.path())
            .arg("--base-port")
            .arg(own.base.to_string())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        match out.status.code() {
            Some(0) => {
                let nodes: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                return Ok((own, nodes));
            }
            // A port taken (3), or a node that did not come up (on a busy machine another
            // process may take a bus port between the script's check and the node's bind):
            // other ports.
            _ => eprintln!(
                "{} up failed ({}), trying other ports",
                script.display(),
                out.status
            ),
        }
    }
    bail!(
        "{} up failed 5 times (see its messages above); give --cluster-nodes",
        script.display()
    )
}

/// Arguments every load-test relay gets: limits off or generous (one generator stands for many
/// clients from one address), as in the in-process relay of `run`.
fn load_args(addr: &str, dir: &Path, max_streams: u32, window: u32) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--listen".into(),
        addr.into(),
        "--max-streams".into(),
        max_streams.to_string().into(),
        "--max-window".into(),
        window.max(1024).to_string().into(),
        "--max-envelopes".into(),
        "1000000".into(),
        "--max-bytes".into(),
        (8u64 << 30).to_string().into(),
    ];
    for flag in [
        "--mailbox-deposits-per-sec",
        "--source-connections-per-sec",
        "--max-connections-per-source",
        "--connection-streams-per-sec",
        "--source-creates-per-sec",
        "--source-streams-per-sec",
        "--source-faults-per-sec",
    ] {
        args.push(flag.into());
        args.push("0".into());
    }
    args.push("--data-dir".into());
    args.push(dir.into());
    args
}

impl Fleet {
    /// Starts the relays (and the cluster if needed); blocks until each has printed its pin.
    pub fn start(o: &FleetOptions, max_streams: u32, window: u32) -> anyhow::Result<Self> {
        match o.store {
            StoreKind::Disk if o.relays != 1 => bail!(
                "--relays {} on the disk store: each relay would have a store of its own; use 1, or --store cluster",
                o.relays
            ),
            StoreKind::Memory => bail!(
                "relay processes run the disk or the cluster store; the memory store runs in process (no --relays)"
            ),
            _ => {}
        }
        if o.relays == 0 {
            bail!("--relays must be at least 1");
        }
        let dir = tempfile::tempdir().context("temporary directory for the relays")?;
        let (own, nodes) = match (o.store, &o.cluster_nodes) {
            (StoreKind::Cluster, Some(n)) => (None, n.clone()),
            (StoreKind::Cluster, None) => {
                let (c, n) = start_cluster(&o.cluster_script)?;
                (Some(c), n)
            }
            _ => (None, Vec::new()),
        };
        let valkey_pids = match &own {
            Some(c) => cputime::pids_from_pidfiles(c.dir.path()),
            None => cputime::valkey_pids_by_port(&nodes),
        };
        let mut store_args: Vec<OsString> = vec!["--store".into()];
        if o.store == StoreKind::Cluster {
            let key_file = match &o.master_key_file {
                Some(f) => f.clone(),
                None => {
                    let f = dir.path().join("master.key");
                    write_master_key(&f)?;
                    f
                }
            };
            store_args.extend([
                "cluster".into(),
                "--cluster-nodes".into(),
                nodes.join(",").into(),
                "--master-key-file".into(),
                key_file.into(),
            ]);
        } else {
            store_args.push("disk".into());
        }
        let mut fleet = Fleet {
            relays: Vec::new(),
            launches: Vec::new(),
            relay_bin: o.relay_bin.clone(),
            addrs: Vec::new(),
            pin: [0; 32],
            cluster_nodes: nodes,
            cluster_started: own.is_some(),
            valkey_pids,
            _cluster: own,
            _dir: dir,
        };
        for i in 0..o.relays {
            let data = fleet._dir.path().join(format!("relay-{i}"));
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let mut args = store_args.clone();
            args.extend(load_args(&addr, &data, max_streams, window));
            if i > 0 {
                // The first relay generated the certificate: the others serve the same one, so
                // one pin trusts them all.
                let tls = fleet._dir.path().join("relay-0").join("tls");
                args.extend([
                    "--cert".into(),
                    tls.join("cert.pem").into(),
                    "--key".into(),
                    tls.join("key.pem").into(),
                ]);
            }
            let launch = Launch {
                args,
                log: data.join("relay.log"),
            };
            let p = launch.start(&o.relay_bin, i)?;
            if i == 0 {
                fleet.pin = p.pin;
            } else if p.pin != fleet.pin {
                bail!("relay {i} serves another certificate than relay 0");
            }
            fleet.relays.push(Some(p));
            fleet.launches.push(launch);
            fleet.addrs.push(addr);
        }
        Ok(fleet)
    }

    /// Pids of the relay processes.
    pub fn relay_pids(&self) -> Vec<u32> {
        self.relays.iter().flatten().map(|r| r.child.id()).collect()
    }

    /// SIGKILLs relay `i` (no chance to flush or say goodbye) and waits for it to end. A
    /// relay already killed is left as it is.
    pub fn kill_relay(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(slot) = self.relays.get_mut(i) else {
            bail!("no relay {i}: {} were started", self.launches.len());
        };
        if let Some(mut r) = slot.take() {
            r.child
                .kill()
                .with_context(|| format!("killing relay {i}"))?;
            r.child
                .wait()
                .with_context(|| format!("waiting for relay {i} to end"))?;
        }
        Ok(())
    }

    /// Starts relay `i` again as it was first started (same address, data directory and
    /// certificate) after [`Fleet::kill_relay`]; returns once it accepts connections.
    pub fn restart_relay(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(launch) = self.launches.get(i) else {
            bail!("no relay {i}: {} were started", self.launches.len());
        };
        if self.relays[i].is_some() {
            bail!("relay {i} is running: kill it before starting it again");
        }
        let p = launch.start(&self.relay_bin, i)?;
        if p.pin != self.pin {
            bail!("relay {i} came back with another certificate");
        }
        self.relays[i] = Some(p);
        Ok(())
    }

    /// The cluster this fleet started, if it started one.
    pub fn own_cluster(&self) -> Option<&OwnCluster> {
        self._cluster.as_ref()
    }
}

/// Writes a new random master key (64 hex digits) to a new file `path`, readable by its owner
/// only.
pub fn write_master_key(path: &Path) -> anyhow::Result<()> {
    let key =
        zeroize::Zeroizing::new(sealpost_core::random::array::<32>().context("random source")?);
    let hexkey =
        zeroize::Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect::<String>());
    write_private(path, &hexkey)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
