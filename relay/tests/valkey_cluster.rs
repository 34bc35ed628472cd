//! The Valkey cluster the cluster store will run on (issue 12), as `deploy/valkey/cluster.sh`
//! starts it: every slot served, 3 primaries with a replica each, every primary writing an
//! fsynced append-only file and refusing to evict, and WAITAOF confirming a write is fsynced on
//! its primary and a replica. The store's promise (acknowledged = fsynced on two nodes) rests
//! on exactly these.
//!
//! The nodes are spoken to over RESP directly, in a few lines below, so that this test does not
//! settle which Rust client the store will use (issue 12 asks for a comparison first).

mod common;

use common::valkey;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn cluster_is_ok_durable_and_confirms_fsync_on_a_replica() {
    let Some(cluster) =
        valkey::cluster("valkey_cluster::cluster_is_ok_durable_and_confirms_fsync_on_a_replica")
    else {
        return;
    };

    for node in cluster.nodes() {
        let info = Node::connect(node).text(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{node}: {info}");
    }

    // The whole topology, from any one node.
    let seed = &cluster.nodes()[0];
    let topology = Node::connect(seed).text(&["CLUSTER", "NODES"]);
    let primaries: Vec<String> = nodes_with_flag(&topology, "master");
    let replicas = nodes_with_flag(&topology, "slave");
    assert_eq!(primaries.len(), 3, "{topology}");
    assert_eq!(replicas.len(), 3, "{topology}");

    for primary in &primaries {
        let mut node = Node::connect(primary);
        assert_eq!(node.config("appendonly"), "yes", "{primary}");
        assert_eq!(node.config("appendfsync"), "always", "{primary}");
        assert_eq!(node.config("maxmemory-policy"), "noeviction", "{primary}");

        // A key this primary serves: a key served elsewhere is answered with MOVED.
        let key = (0..)
            .map(|i| format!("sealpost-test-waitaof-{i}"))
            .find(|key| match node.command(&["SET", key, "durable"]) {
                Reply::Simple(ok) => ok == "OK",
                Reply::Error(e) if e.starts_with("MOVED ") => false,
                other => panic!("{primary}: SET answered {other:?}"),
            })
            .expect("some key is served by every primary");
        // WAITAOF numlocal numreplicas timeout: [local fsyncs, replicas that fsynced].
        match node.command(&["WAITAOF", "1", "1", "1000"]) {
            Reply::Array(counts) => match counts.as_slice() {
                [Reply::Int(1), Reply::Int(replicas)] if *replicas >= 1 => {}
                other => panic!("{primary}: WAITAOF 1 1 1000 answered {other:?}"),
            },
            other => panic!("{primary}: WAITAOF 1 1 1000 answered {other:?}"),
        }
        assert!(matches!(node.command(&["DEL", &key]), Reply::Int(1)));
    }
}

/// The `HOST:PORT` of every node in CLUSTER NODES output whose flags include `flag`.
fn nodes_with_flag(topology: &str, flag: &str) -> Vec<String> {
    topology
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            flags.split(',').any(|f| f == flag).then(|| {
                // ip:port@busport[,hostname]
                addr.split('@').next().unwrap_or(addr).to_owned()
            })
        })
        .collect()
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

/// One connection to one node (no redirects followed: a test wants to know which node answers).
struct Node {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl Node {
    fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        // A node that stops answering fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            addr: addr.to_owned(),
            reader: BufReader::new(stream),
        }
    }

    fn command(&mut self, args: &[&str]) -> Reply {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        self.reader
            .get_mut()
            .write_all(out.as_bytes())
            .unwrap_or_else(|e| panic!("{}: send {args:?}: {e}", self.addr));
        self.read()
    }

    /// A command answered with a bulk string.
    fn text(&mut self, args: &[&str]) -> String {
        match self.command(args) {
            Reply::Bulk(Some(text)) => text,
            other => panic!("{}: {args:?} answered {other:?}", self.addr),
        }
    }

    /// A setting's value (CONFIG GET answers [name, value]).
    fn config(&mut self, name: &str) -> String {
        match self.command(&["CONFIG", "GET", name]) {
            Reply::Array(pair) => match pair.as_slice() {
                [_, Reply::Bulk(Some(value))] => value.clone(),
                other => panic!("{}: CONFIG GET {name} answered {other:?}", self.addr),
            },
            other => panic!("{}: CONFIG GET {name} answered {other:?}", self.addr),
        }
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{}: no reply: {e}", self.addr));
        let line = line
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("{}: truncated reply {line:?}", self.addr));
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let Ok(len) = usize::try_from(rest.parse::<i64>().unwrap()) else {
                    return Reply::Bulk(None);
                };
                let mut body = vec![0; len + 2];
                self.reader
                    .read_exact(&mut body)
                    .unwrap_or_else(|e| panic!("{}: truncated reply: {e}", self.addr));
                body.truncate(len);
                Reply::Bulk(Some(String::from_utf8(body).unwrap()))
            }
            "*" => {
                let len: i64 = rest.parse().unwrap();
                Reply::Array((0..len.max(0)).map(|_| self.read()).collect())
            }
            _ => panic!("{}: unexpected reply {line:?}", self.addr),
        }
    }
}
