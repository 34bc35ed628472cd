//! Two-hop forwarding (issue 15): a sender deposits through a forwarding relay into a
//! destination relay, with relays and clients on distinct loopback addresses (sender
//! 127.0.0.4, forwarding relay 127.0.0.2, destination 127.0.0.3, recipient 127.0.0.5).

mod common;

use bytes::{Bytes, BytesMut};
use common::process::{Serve, cli};
use sealpost_client::tls::Trust;
use sealpost_client::{Client, ClientError, ForwardTarget, Mailbox};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::forward::{self, Forward, ResponseKey};
use sealpost_core::frame::{self, FrameType};
use sealpost_core::invitation::Invitation;
use sealpost_core::msg::ErrorMsg;
use sealpost_core::padding::SizeClasses;
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_relay::forward::ForwardKey;
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{Rate, RelayConfig, RelayHandle, RelayLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const FORWARDER: &str = "127.0.0.2";
const DESTINATION: &str = "127.0.0.3";
const SENDER: &str = "127.0.0.4";
const RECIPIENT: &str = "127.0.0.5";

struct Node {
    handle: RelayHandle,
    addr: String,
    _dir: tempfile::TempDir,
}

/// A relay over the memory store on `ip`, with `edit` applied to its configuration.
async fn relay_on(ip: &str, edit: impl FnOnce(&mut RelayConfig)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RelayConfig::new(format!("{ip}:0").parse().unwrap(), dir.path().to_owned());
    edit(&mut cfg);
    let store = Arc::new(MemoryStore::new(cfg.limits.quotas()));
    let handle = sealpost_relay::start(cfg, store).await.unwrap();
    let addr = handle.local_addr().to_string();
    Node {
        handle,
        addr,
        _dir: dir,
    }
}

fn forwarding(cfg: &mut RelayConfig) {
    cfg.forward.enabled = true;
    // Every relay of these tests is on the loopback.
    cfg.forward.private_destinations = true;
    cfg.forward.timeout = Duration::from_secs(2);
}

fn local(ip: &str) -> Option<SocketAddr> {
    Some(format!("{ip}:0").parse().unwrap())
}

async fn client_from(ip: &str, node: &Node) -> Client {
    client_of(ip, &node.handle).await
}

/// A client of the relay `h`, from `ip`.
async fn client_of(ip: &str, h: &RelayHandle) -> Client {
    Client::connect_from(
        &h.local_addr().to_string(),
        Trust::KeyPin(h.key_pin().unwrap()),
        local(ip),
    )
    .await
    .unwrap()
}

/// A mailbox on `dest`, created from the recipient's address, with the forwarding key.
async fn mailbox_on(dest: &Node) -> (Client, Mailbox) {
    let c = client_from(RECIPIENT, dest).await;
    let mut mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    mb.forward_key = c.forward_key().await.unwrap();
    assert_eq!(mb.forward_key, Some(dest.handle.forward_key()));
    (c, mb)
}

fn seal(inv: &Invitation, sizes: &SizeClasses, content: &[u8]) -> Bytes {
    e2e::seal_for_invitation(&Engine::ring(), inv, sizes, content).unwrap()
}

fn relay_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Relay(m) => m.known_code().unwrap(),
        other => panic!("expected an ERROR, got {other}"),
    }
}

/// A forwarded deposit is stored once and delivered; a resend is DUPLICATE; a forgery, an
/// unknown mailbox and a bad size keep their statuses through the extra hop; the invitation
/// goes through version 4 and an older one still deposits directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_deposit_is_stored_once_and_every_status_survives() {
    let dest = relay_on(DESTINATION, |_| {}).await;
    let fwd = relay_on(FORWARDER, forwarding).await;
    let (rc, mb) = mailbox_on(&dest).await;
    let text = mb.invitation().encode().unwrap();
    let inv = Invitation::parse(&text).unwrap();
    assert_eq!(inv.forward_key, Some(dest.handle.forward_key()));

    let sender = client_from(SENDER, &fwd).await;
    let mut target = ForwardTarget::from_invitation(&inv).unwrap();
    assert_eq!(target.destination, dest.addr);
    let info = sender.forward_info(&mut target).await.unwrap();
    assert_eq!(target.max_frame, info.limits.max_frame);

    let env = seal(&inv, &info.limits.sizes, b"through another relay");
    let mut forged = env.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let mut unknown = env.to_vec();
    unknown[8] ^= 1;
    let mut bad_size = env.to_vec();
    bad_size[7] ^= 1;
    let r = sender
        .forward_deposit(
            &target,
            &[
                env.clone(),
                Bytes::from(forged),
                Bytes::from(unknown),
                Bytes::from(bad_size),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        r.statuses,
        [
            DepositStatus::Ok,
            DepositStatus::BadTag,
            DepositStatus::UnknownMailbox,
            DepositStatus::BadSize
        ]
    );
    let again = sender
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap();
    assert_eq!(again.statuses, [DepositStatus::Duplicate]);

    let mut sub = rc.subscribe(&mb.access(), 8).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&mb.open(&d).unwrap()[..], b"through another relay");
    assert_eq!(sub.pending_at_start(), 1, "stored once");

    // An invitation without the key (version 2) cannot be forwarded, and still deposits
    // directly.
    let mut old = inv.clone();
    old.forward_key = None;
    let old = Invitation::parse(&old.encode().unwrap()).unwrap();
    assert!(ForwardTarget::from_invitation(&old).is_err());
    let direct = client_from(SENDER, &dest).await;
    let env2 = seal(&old, &info.limits.sizes, b"directly");
    assert_eq!(direct.deposit(env2).await.unwrap(), DepositStatus::Ok);
}

/// A mailbox over its rate (with the retry hint) and a full mailbox answer through the hop as
/// they do directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_quotas_survive_the_hop() {
    let fwd = relay_on(FORWARDER, forwarding).await;
    let sender = client_from(SENDER, &fwd).await;
    for (limits, want) in [
        (
            RelayLimits {
                mailbox_deposit_rate: Rate::new(1, 1),
                ..RelayLimits::default()
            },
            DepositStatus::RateLimited,
        ),
        (
            RelayLimits {
                max_envelopes: 1,
                ..RelayLimits::default()
            },
            DepositStatus::MailboxFull,
        ),
    ] {
        let dest = relay_on(DESTINATION, |cfg| cfg.limits = limits).await;
        let (_rc, mb) = mailbox_on(&dest).await;
        let target = ForwardTarget::from_invitation(&mb.invitation()).unwrap();
        let envs: Vec<Bytes> = (0..2u8)
            .map(|i| seal(&mb.invitation(), &mb.sizes, &[i]))
            .collect();
        let r = sender.forward_deposit(&target, &envs).await.unwrap();
        assert_eq!(r.statuses, [DepositStatus::Ok, want]);
        assert_eq!(
            r.retry_after.is_some(),
            want == DepositStatus::RateLimited,
            "the hint comes with RATE_LIMITED only"
        );
    }
}

/// What the forwarding relay refuses, and what it passes on: forwarding off, a destination
/// off the allow-list, a source over its forwarding rate, a destination that does not answer
/// (UNREACHABLE, retryable), a request sealed to another key (the destination's BAD_SEAL),
/// and a request that would be forwarded again (refused inside the sealed answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_nothing_is_forwarded_twice() {
    let dest = relay_on(DESTINATION, |_| {}).await;
    let (_rc, mb) = mailbox_on(&dest).await;
    let target = ForwardTarget::from_invitation(&mb.invitation()).unwrap();
    let env = seal(&mb.invitation(), &mb.sizes, b"x");

    let off = relay_on(FORWARDER, |_| {}).await;
    let c = client_from(SENDER, &off).await;
    let e = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::ForwardRefused);

    let listed = relay_on(FORWARDER, |cfg| {
        forwarding(cfg);
        cfg.forward.allow = vec!["127.0.0.9:4433".into()];
    })
    .await;
    let c = client_from(SENDER, &listed).await;
    let e = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::ForwardRefused);

    let slow = relay_on(FORWARDER, |cfg| {
        forwarding(cfg);
        cfg.forward.source_rate = Rate::new(1, 1);
    })
    .await;
    let c = client_from(SENDER, &slow).await;
    let ok = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap();
    assert_eq!(ok.statuses, [DepositStatus::Ok]);
    let e = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::RateLimited);

    let fwd = relay_on(FORWARDER, forwarding).await;
    let c = client_from(SENDER, &fwd).await;
    // Nothing answers QUIC at this address: a UDP socket that never reads.
    let silent = std::net::UdpSocket::bind(format!("{DESTINATION}:0")).unwrap();
    let mut nowhere = target.clone();
    nowhere.destination = silent.local_addr().unwrap().to_string();
    let e = c
        .forward_deposit(&nowhere, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::Unreachable);

    let mut wrong_key = target.clone();
    wrong_key.forward_key = ForwardKey::generate().unwrap().public();
    let e = c
        .forward_deposit(&wrong_key, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::BadSeal);

    // A FORWARD sealed inside a forwarded request: the destination refuses it in the sealed
    // answer, and nothing is forwarded on.
    let inner = frame::encode_to_bytes(FrameType::Forward, b"\x0e127.0.0.9:4433");
    let frames = c.forward_request(&target, &inner).await.unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].ty, FrameType::Error);
    let e = ErrorMsg::decode(&frames[0].payload).unwrap();
    assert_eq!(e.known_code(), Some(ErrorCode::UnexpectedFrame));
    assert!(e.message.contains("never forwarded again"), "{e}");

    // The relay still serves its direct clients.
    let ok = c.forward_deposit(&target, &[env]).await.unwrap();
    assert_eq!(ok.statuses, [DepositStatus::Duplicate]);
}

/// The client's HPKE sender (`sealpost_core::forward`) and the relay's receiver
/// (`sealpost_relay::forward::hpke`, both over the `hpke` crate) interoperate: what the client
/// seals the relay opens, and the key both export seals the answer.
#[test]
fn client_and_relay_hpke_interoperate() {
    let key = ForwardKey::generate().unwrap();
    for len in [0usize, 1, 1020, 1021, 5000, forward::max_request(65_589)] {
        let request: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let sealed =
            forward::seal_request(&key.public(), &request, forward::max_request(65_589)).unwrap();
        assert_eq!(
            sealed.sealed.ciphertext.len(),
            forward::padded_len(len) + forward::TAG_LEN
        );
        let mut ctx = key.context(&sealed.sealed.enc).unwrap();
        let mut ct = sealed.sealed.ciphertext.to_vec();
        let plain = ctx.open(b"", &mut ct).unwrap();
        assert_eq!(unpad(plain), request);
        let relay_side = ResponseKey::from_bytes(ctx.export32(forward::RESPONSE_EXPORT));
        let answer = relay_side.seal(b"the answer").unwrap();
        assert_eq!(sealed.response_key.open(&answer).unwrap(), b"the answer");
    }
}

fn unpad(padded: &[u8]) -> Vec<u8> {
    sealpost_core::padding::unpad(padded).unwrap().to_vec()
}

/// The FORWARD payload shares nothing with the envelope it carries: no deposit id, no nonce,
/// no 16-byte window of the envelope at all; and two different envelopes of one size class
/// give FORWARD frames of one length.
#[test]
fn the_forward_payload_hides_the_envelope() {
    let key = ForwardKey::generate().unwrap();
    let (_, pk) = e2e::generate_keypair();
    let inv = Invitation {
        relays: vec![format!("{DESTINATION}:4433")],
        trust: sealpost_core::invitation::RelayTrust::CaForHost,
        deposit_id: [0x5a; 16],
        deposit_key: sealpost_core::AeadKey::generate(Suite::ChaCha20Poly1305).unwrap(),
        e2e_public: pk,
        forward_key: Some(key.public()),
    };
    let sizes = SizeClasses::default();
    let mut lengths = Vec::new();
    for content in [&b"short"[..], &[7u8; 150][..]] {
        let env = seal(&inv, &sizes, content);
        let mut req = BytesMut::new();
        frame::encode(FrameType::Deposit, &env, &mut req);
        let sealed = forward::seal_request(&key.public(), &req, 70_000).unwrap();
        let fw = Forward {
            destination: inv.relays[0].clone(),
            sealed: sealed.sealed,
        };
        let payload = sealpost_core::msg::frame_with(FrameType::Forward, |b| fw.encode(b));
        let deposit_id = &env[8..24];
        let nonce = &env[24..36];
        assert!(!payload.windows(16).any(|w| w == deposit_id), "deposit_id");
        assert!(!payload.windows(12).any(|w| w == nonce), "nonce");
        for window in env.windows(16) {
            assert!(!payload.windows(16).any(|w| w == window));
        }
        lengths.push(payload.len());
    }
    assert_eq!(lengths[0], lengths[1], "one size class, one length");
}

/// The destination relay (a `serve` process with address logging on) never sees the
/// sender's address: the CLI's `send --via` deposits through the forwarding relay, the
/// message arrives, and the destination's log names only the recipient's and the forwarding
/// relay's addresses. A tcpdump capture of the destination's UDP port shows the same: packets
/// of the forwarding relay, the destination and the recipient, none from either sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_never_sees_the_sender() {
    let data = tempfile::tempdir().unwrap();
    let dest = Serve::start_on(
        data.path(),
        &format!("{DESTINATION}:0"),
        &["--store", "memory", "--log-sensitive-debug"],
        "info",
    );
    let dest_port = dest.addr.rsplit(':').next().unwrap().to_owned();
    // Every UDP packet to or from the destination's port, from before anyone connects.
    let capture = Capture::start(&dest_port);
    let fwd = relay_on(FORWARDER, forwarding).await;
    let pin = sealpost_client::tls::parse_pin(&dest.pin).unwrap();
    let rc = Client::connect_from(&dest.addr, Trust::Pin(pin), local(RECIPIENT))
        .await
        .unwrap();
    let mut mb = rc.create(Suite::ChaCha20Poly1305).await.unwrap();
    mb.forward_key = rc.forward_key().await.unwrap();
    let text = mb.invitation().encode().unwrap();

    // The CLI binds no address of its own: its packets to 127.0.0.2 leave from 127.0.0.1.
    let out = cli()
        .args(["send", "--via", &fwd.addr, "--via-key-pin"])
        .arg(hex::encode(fwd.handle.key_pin().unwrap()))
        .args([&text, "sent through the forwarding relay"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("deposited: OK"), "{err}");

    // And through the library from the sender's address.
    let sender = client_from(SENDER, &fwd).await;
    let mut target = ForwardTarget::from_invitation(&mb.invitation()).unwrap();
    let info = sender.forward_info(&mut target).await.unwrap();
    let env = seal(&mb.invitation(), &info.limits.sizes, b"from 127.0.0.4");
    let r = sender.forward_deposit(&target, &[env]).await.unwrap();
    assert_eq!(r.statuses, [DepositStatus::Ok]);

    let mut sub = rc.subscribe(&mb.access(), 8).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(mb.open(&d).unwrap().to_vec()).unwrap());
        sub.ack(d.seq).await.unwrap();
    }
    got.sort();
    assert_eq!(got, ["from 127.0.0.4", "sent through the forwarding relay"]);
    common::end_subscription(&mut sub).await;

    let log = dest.stop();
    // Every connection the destination accepted, by its logged remote address.
    let mut remotes: Vec<&str> = log
        .split("remote=")
        .skip(1)
        .filter_map(|rest| rest.split(':').next())
        .collect();
    remotes.sort();
    remotes.dedup();
    assert_eq!(
        remotes,
        [FORWARDER, RECIPIENT],
        "the destination saw only the forwarding relay and the recipient: {log}"
    );
    assert!(!log.contains(SENDER), "{log}");

    // What went over the wire on the destination's port: the same three hosts, never a sender.
    let Some(capture) = capture else { return };
    let packets = capture.stop();
    let hosts = packet_hosts(&packets);
    assert!(!packets.is_empty(), "the capture holds no packets");
    assert_eq!(
        hosts,
        [FORWARDER, DESTINATION, RECIPIENT],
        "the destination's port carried packets of the forwarding relay, itself and the \
         recipient only: {packets}"
    );
    for sender in [SENDER, "127.0.0.1"] {
        assert!(
            !hosts.contains(&sender),
            "{sender} in the capture: {packets}"
        );
    }
}

/// A `tcpdump` capture of the loopback interface. tcpdump writes the capture to its standard
/// output (`-w -`), which a thread collects: no file for tcpdump to open after it drops its
/// privileges to its own user, and nothing on disk.
struct Capture {
    child: std::process::Child,
    pcap: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing UDP on `port` of the loopback interface and waits until tcpdump says
    /// it is listening. Without tcpdump, or without the permission to capture: panics under CI
    /// (`CI=true`), and elsewhere says loudly that the check did not run and returns `None`.
    fn start(port: &str) -> Option<Capture> {
        use std::io::{BufRead as _, Read as _};
        use std::process::{Command, Stdio};
        let spawned = Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "--immediate-mode", "-w", "-"])
            .args(["udp", "port", port])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return Self::not_run(&format!("tcpdump could not start ({e})")),
        };
        let mut stdout = child.stdout.take().unwrap();
        let pcap = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        });
        // tcpdump prints "listening on lo, ..." once the capture is open; read standard error
        // on a thread so a tcpdump that neither prints nor exits cannot hang the test.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Drained to the end even after the wait: tcpdump writes its statistics there
            // when it stops, and a closed pipe would kill it.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut said = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => said.push_str(&line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Self::not_run(&format!("tcpdump did not start capturing: {said}"));
                }
            }
        }
        Some(Capture { child, pcap })
    }

    fn not_run(why: &str) -> Option<Capture> {
        let msg = format!(
            "the_destination_never_sees_the_sender's packet capture DID NOT RUN: {why}; install it with \
             `apt-get install tcpdump` (Debian) and run as root (or with CAP_NET_RAW) to check \
             the destination's packets"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: the check is required)");
        }
        // Straight to standard error, past the test harness's capture, so it is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
        None
    }

    /// Stops tcpdump with SIGINT (it flushes the capture and exits) and returns the packets
    /// it captured, one line each, as `tcpdump -n -r` prints them.
    fn stop(mut self) -> String {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let id = self.child.id().to_string();
        let killed = Command::new("kill").args(["-INT", &id]).status().unwrap();
        assert!(killed.success(), "kill -INT {id} failed");
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "tcpdump exited with {exit}");
        let pcap = self.pcap.join().unwrap().unwrap();
        let mut read = Command::new("tcpdump")
            .args(["-n", "-r", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The capture is small (a few dozen packets): written whole before reading the output.
        read.stdin.take().unwrap().write_all(&pcap).unwrap();
        let out = read.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The hosts named as source or destination in `tcpdump -n -r` lines (`... IP 127.0.0.2.5000 >
/// 127.0.0.3.4433: UDP, length 1200`), sorted, each once.
fn packet_hosts(packets: &str) -> Vec<&str> {
    let mut hosts = Vec::new();
    for line in packets.lines() {
        let (_, rest) = line.split_once(" IP ").expect("an IPv4 packet line");
        let (src, rest) = rest.split_once(" > ").expect("source > destination");
        let (dst, _) = rest.split_once(':').expect("destination:");
        for end in [src, dst] {
            // Drop the port: the last dot-separated field.
            hosts.push(end.rsplit_once('.').map_or(end, |(host, _port)| host));
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The forwarding key outlives restarts, is sealed under the master key when the relay has
/// one, and relays of one deployment that name one key file announce one key (what a version
/// 4 invitation naming them all needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarding_key_is_kept_sealed_and_shared() {
    use sealpost_relay::settings::StoreChoice;
    use sealpost_relay::{Relay, StoreOptions};
    let master = zeroize::Zeroizing::new([0x4d; 32]);
    let options = || StoreOptions {
        master_key: Some(master.clone()),
        ..StoreOptions::new(StoreChoice::Memory)
    };
    let config = |dir: &std::path::Path| {
        RelayConfig::new(format!("{DESTINATION}:0").parse().unwrap(), dir.to_owned())
    };
    // What INFO announces.
    async fn announced(relay: &Relay) -> Option<[u8; 32]> {
        let h = relay.handle();
        let c = Client::connect_from(
            &h.local_addr().to_string(),
            Trust::KeyPin(h.key_pin().unwrap()),
            local(RECIPIENT),
        )
        .await
        .unwrap();
        c.forward_key().await.unwrap()
    }

    let first = tempfile::tempdir().unwrap();
    let a = Relay::open_with(config(first.path()), options())
        .await
        .unwrap();
    let key = a.handle().forward_key();
    assert_eq!(announced(&a).await, Some(key));
    a.shutdown(Duration::from_secs(2)).await.unwrap();
    let file = first.path().join(sealpost_relay::forward::key::FILE_NAME);
    let raw = std::fs::read(&file).unwrap();
    assert_eq!(raw[0], 1, "sealed under the master key");
    let again = Relay::open_with(config(first.path()), options())
        .await
        .unwrap();
    assert_eq!(again.handle().forward_key(), key, "kept across a restart");
    again.shutdown(Duration::from_secs(2)).await.unwrap();

    // A second relay of the deployment names a copy of the first one's file.
    let second = tempfile::tempdir().unwrap();
    let shared = second.path().join("shared-forward.key");
    std::fs::copy(&file, &shared).unwrap();
    let mut cfg = config(second.path());
    cfg.forward.key_file = Some(shared);
    let b = Relay::open_with(cfg, options()).await.unwrap();
    assert_eq!(announced(&b).await, Some(key), "one key for the deployment");
    b.shutdown(Duration::from_secs(2)).await.unwrap();
    // A named file that is missing stops the start instead of making another key.
    let mut cfg = config(second.path());
    cfg.forward.key_file = Some(second.path().join("missing.key"));
    let e = Relay::open_with(cfg, options()).await.err().unwrap();
    assert!(e.to_string().contains("missing.key"), "{e}");
}

/// A forwarding relay does not reach inner addresses for its clients unless its operator
/// allows them: a destination on the loopback is refused (FORWARD_REFUSED, saying why, and
/// nothing stored), and forwarded to once named on the allow-list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_destinations_are_refused_unless_allowed() {
    let dest = relay_on(DESTINATION, |_| {}).await;
    let (_rc, mb) = mailbox_on(&dest).await;
    let target = ForwardTarget::from_invitation(&mb.invitation()).unwrap();
    let env = seal(&mb.invitation(), &mb.sizes, b"inner");

    let open = relay_on(FORWARDER, |cfg| cfg.forward.enabled = true).await;
    let c = client_from(SENDER, &open).await;
    let e = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    let said = e.to_string();
    assert_eq!(relay_code(e), ErrorCode::ForwardRefused);
    assert!(
        said.contains("does not resolve to a public address"),
        "{said}"
    );
    // A name is checked by what it resolves to, which the message does not tell.
    let mut by_name = target.clone();
    by_name.destination = format!("localhost:{}", dest.handle.local_addr().port());
    let e = c
        .forward_deposit(&by_name, std::slice::from_ref(&env))
        .await
        .unwrap_err();
    let said = e.to_string();
    assert_eq!(relay_code(e), ErrorCode::ForwardRefused);
    assert!(
        !said.contains("127.0.0.1") && !said.contains("::1"),
        "the message names the address: {said}"
    );

    let named = relay_on(FORWARDER, |cfg| {
        cfg.forward.enabled = true;
        cfg.forward.allow = vec![target.destination.clone()];
    })
    .await;
    let c = client_from(SENDER, &named).await;
    let ok = c
        .forward_deposit(&target, std::slice::from_ref(&env))
        .await
        .unwrap();
    // OK, not DUPLICATE: the refused request stored nothing.
    assert_eq!(ok.statuses, [DepositStatus::Ok]);
}

/// The destination relay over the disk store in `data`, with `master` and the forwarding-key
/// overlap `overlap`: what a restart of one relay gives.
async fn disk_relay(
    data: &std::path::Path,
    master: [u8; 32],
    overlap: Duration,
) -> sealpost_relay::Relay {
    use sealpost_relay::settings::StoreChoice;
    let mut cfg = RelayConfig::new(format!("{DESTINATION}:0").parse().unwrap(), data.to_owned());
    cfg.forward.key_overlap = overlap;
    let options = sealpost_relay::StoreOptions {
        master_key: Some(zeroize::Zeroizing::new(master)),
        ..sealpost_relay::StoreOptions::new(StoreChoice::Disk)
    };
    sealpost_relay::Relay::open_with(cfg, options)
        .await
        .unwrap()
}

/// `rotate-forward-key` with overlap: an invitation made before the rotation still forwards a
/// deposit after it and a restart (stored once, delivered), as does one with the new key;
/// `rotate-master-key` re-seals both keys; once the old key's overlap has passed (here, a
/// relay started with no overlap), the old key gets BAD_SEAL and the new one still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_forwarding_key_forwards_for_its_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (m1, m2) = ([0x4e; 32], [0x4f; 32]);
    let (mf1, mf2) = (tmp.path().join("m1.key"), tmp.path().join("m2.key"));
    std::fs::write(&mf1, hex::encode(m1)).unwrap();
    std::fs::write(&mf2, hex::encode(m2)).unwrap();
    let month = Duration::from_secs(30 * 24 * 3600);

    let a = disk_relay(&data, m1, month).await;
    let rc = client_of(RECIPIENT, a.handle()).await;
    let mut mb = rc.create(Suite::ChaCha20Poly1305).await.unwrap();
    mb.forward_key = rc.forward_key().await.unwrap();
    let old_key = a.handle().forward_key();
    assert_eq!(mb.forward_key, Some(old_key));
    let old_inv = Invitation::parse(&mb.invitation().encode().unwrap()).unwrap();
    drop(rc);
    a.shutdown(Duration::from_secs(2)).await.unwrap();

    // The command, as an operator runs it, with the relay stopped or running.
    let out = cli()
        .arg("rotate-forward-key")
        .arg("--data-dir")
        .arg(&data)
        .arg("--master-key-file")
        .arg(&mf1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("restart the relay"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let new_hex = stdout
        .trim()
        .strip_prefix("new forwarding key: ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let new_key: [u8; 32] = hex::decode(new_hex).unwrap().try_into().unwrap();
    assert_ne!(new_key, old_key);
    assert!(stderr.contains(&hex::encode(old_key)), "{stderr}");

    // After a restart the relay announces the new key and still opens the old one.
    let b = disk_relay(&data, m1, month).await;
    assert_eq!(b.handle().forward_key(), new_key);
    let previous = b.handle().previous_forward_keys();
    assert_eq!(previous.len(), 1);
    assert_eq!(previous[0].0, old_key);
    let rc = client_of(RECIPIENT, b.handle()).await;
    assert_eq!(
        rc.forward_key().await.unwrap(),
        Some(new_key),
        "INFO: the new key only"
    );

    let fwd = relay_on(FORWARDER, forwarding).await;
    let sender = client_from(SENDER, &fwd).await;
    let mut old_target = ForwardTarget::from_invitation(&old_inv).unwrap();
    assert_eq!(old_target.forward_key, old_key);
    // The restarted relay listens on another port; the invitation's key is what matters.
    old_target.destination = b.handle().local_addr().to_string();
    let env = seal(
        &old_inv,
        &mb.sizes,
        b"sealed to the key before the rotation",
    );
    let r = sender
        .forward_deposit(&old_target, std::slice::from_ref(&env))
        .await
        .unwrap();
    assert_eq!(r.statuses, [DepositStatus::Ok]);
    let again = sender
        .forward_deposit(&old_target, std::slice::from_ref(&env))
        .await
        .unwrap();
    assert_eq!(again.statuses, [DepositStatus::Duplicate]);
    let mut new_target = old_target.clone();
    new_target.forward_key = new_key;
    let env2 = seal(&old_inv, &mb.sizes, b"sealed to the new key");
    let r = sender
        .forward_deposit(&new_target, std::slice::from_ref(&env2))
        .await
        .unwrap();
    assert_eq!(r.statuses, [DepositStatus::Ok]);
    let mut sub = rc.subscribe(&mb.access(), 8).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(mb.open(&d).unwrap().to_vec());
    }
    got.sort();
    assert_eq!(
        got,
        [
            b"sealed to the key before the rotation".to_vec(),
            b"sealed to the new key".to_vec()
        ]
    );
    assert_eq!(sub.pending_at_start(), 2, "each stored once");
    drop((sub, rc));
    b.shutdown(Duration::from_secs(2)).await.unwrap();

    // rotate-master-key re-seals the whole file: both keys open under the new master key.
    let out = cli()
        .arg("rotate-master-key")
        .arg("--data-dir")
        .arg(&data)
        .arg("--old-key-file")
        .arg(&mf1)
        .arg("--new-key-file")
        .arg(&mf2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("re-sealed the forwarding key"), "{stderr}");
    let c = disk_relay(&data, m2, month).await;
    assert_eq!(c.handle().forward_key(), new_key);
    assert_eq!(c.handle().previous_forward_keys()[0].0, old_key);
    let env3 = seal(&old_inv, &mb.sizes, b"after the master key rotation");
    old_target.destination = c.handle().local_addr().to_string();
    let r = sender
        .forward_deposit(&old_target, std::slice::from_ref(&env3))
        .await
        .unwrap();
    assert_eq!(r.statuses, [DepositStatus::Ok]);
    c.shutdown(Duration::from_secs(2)).await.unwrap();

    // Past the overlap (a relay started with none), the old key is refused and dropped from
    // the file; the new one works.
    let d = disk_relay(&data, m2, Duration::ZERO).await;
    assert!(d.handle().previous_forward_keys().is_empty());
    let file = data.join(sealpost_relay::forward::key::FILE_NAME);
    assert_eq!(std::fs::read(&file).unwrap()[0], 1, "one sealed key left");
    old_target.destination = d.handle().local_addr().to_string();
    new_target.destination = old_target.destination.clone();
    let env4 = seal(&old_inv, &mb.sizes, b"too late");
    let e = sender
        .forward_deposit(&old_target, std::slice::from_ref(&env4))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::BadSeal);
    let r = sender
        .forward_deposit(&new_target, std::slice::from_ref(&env4))
        .await
        .unwrap();
    assert_eq!(r.statuses, [DepositStatus::Ok]);
    d.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// Runs `rotate-forward-key` with `args` on the key file `file` and returns the key it
/// printed (`new forwarding key: ...` or `staged forwarding key: ...`).
fn rotate_cli(file: &std::path::Path, args: &[&str]) -> [u8; 32] {
    let out = cli()
        .arg("rotate-forward-key")
        .arg("--forward-key-file")
        .arg(file)
        .args(args)
        .env_remove("SEALPOST_MASTER_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (_, key) = stdout.trim().split_once("key: ").unwrap();
    hex::decode(key).unwrap().try_into().unwrap()
}

/// Relays sharing one key file roll a rotation without a window: the key is staged first
/// (every relay accepts it, none announces it), then made current; midway through that roll a
/// relay not yet restarted still opens requests sealed to the new key, and a restarted one
/// those sealed to the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_key_rolls_over_through_a_staged_key() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("forward.key");
    let copy = |name: &str| {
        let to = tmp.path().join(name);
        std::fs::copy(&shared, &to).unwrap();
        to
    };
    let on =
        |file: std::path::PathBuf| move |cfg: &mut RelayConfig| cfg.forward.key_file = Some(file);
    let old = sealpost_relay::forward::ForwardKeys::load_or_create(
        &shared,
        true,
        None,
        Duration::from_secs(3600),
    )
    .unwrap()
    .public();
    let staged = rotate_cli(&shared, &["--stage"]);
    // Every relay gets the file with the staged key and restarts (here: starts).
    let (a, b) = (copy("a.key"), copy("b.key"));
    let relay_a = relay_on(DESTINATION, on(a.clone())).await;
    let relay_b = relay_on(DESTINATION, on(b)).await;
    for r in [&relay_a, &relay_b] {
        assert_eq!(
            r.handle.forward_key(),
            old,
            "the staged key is not announced"
        );
        assert_eq!(r.handle.staged_forward_key(), Some(staged));
    }
    // Then the rotation: relay A has restarted with the rotated file, relay B not yet.
    assert_eq!(
        rotate_cli(&shared, &[]),
        staged,
        "the staged key becomes current"
    );
    std::fs::copy(&shared, &a).unwrap();
    relay_a.handle.shutdown().await;
    let relay_a = relay_on(DESTINATION, on(a)).await;
    assert_eq!(relay_a.handle.forward_key(), staged);
    assert_eq!(relay_b.handle.forward_key(), old);

    let fwd = relay_on(FORWARDER, forwarding).await;
    let sender = client_from(SENDER, &fwd).await;
    let probe = |node: &Node, key: [u8; 32]| ForwardTarget {
        destination: node.addr.clone(),
        forward_key: key,
        max_frame: 65_589,
    };
    for (node, key) in [
        (&relay_a, staged),
        (&relay_a, old),
        (&relay_b, staged),
        (&relay_b, old),
    ] {
        sender.forward_info(&mut probe(node, key)).await.unwrap();
    }
    let stranger = ForwardKey::generate().unwrap().public();
    let e = sender
        .forward_info(&mut probe(&relay_b, stranger))
        .await
        .unwrap_err();
    assert_eq!(relay_code(e), ErrorCode::BadSeal);
}
