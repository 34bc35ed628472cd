//! What operators rely on: the admin listener, settings files, graceful shutdown on SIGTERM
//! and certificate reload on SIGHUP, all against the real binary.

mod common;

use common::process::{Serve, cli, create_mailbox, http_get, signal};
use sealpost_client::Client;
use sealpost_core::Suite;
use sealpost_core::status::DepositStatus;
use std::io::Read;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "memory"], "warn");
    assert_eq!(http_get(&serve.admin, "/healthz").0, 200);
    assert_eq!(http_get(&serve.admin, "/readyz").0, 200);
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let c = Client::connect_pinned(&serve.addr, pin).await.unwrap();
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = sealpost_core::e2e::seal_for_invitation(
        &sealpost_core::engine::Engine::ring(),
        &mb.invitation(),
        &mb.sizes,
        b"hi",
    )
    .unwrap();
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    // Gauges are sampled once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = http_get(&serve.admin, "/metrics");
    assert_eq!(code, 200);
    for want in [
        "sealpost_deposits_total{status=\"ok\"} 1",
        "sealpost_connections_accepted_total",
        "sealpost_mailboxes 1",
        "sealpost_batch_verify_seconds_bucket",
        "sealpost_store_commit_seconds_bucket",
        "sealpost_build_info{",
        "sealpost_ready 1",
    ] {
        assert!(body.contains(want), "{want} missing from /metrics:\n{body}");
    }
    // Nothing in the output identifies a mailbox.
    assert!(!body.contains(&hex::encode(mb.deposit_id)));
    assert_eq!(http_get(&serve.admin, "/nope").0, 404);
    serve.stop();
}

#[test]
fn check_config_names_bad_keys_and_prints_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "max_streams = 128\nstore = \"memory\"\n").unwrap();
    let out = cli()
        .args(["check-config"])
        .arg(&good)
        .env("SEALPOST_MAX_WINDOW", "77")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("max_streams = 128"), "{text}");
    assert!(
        text.contains("max_window = 77"),
        "environment over file: {text}"
    );
    assert!(
        text.contains("listen = \"127.0.0.1:4433\""),
        "defaults filled in: {text}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max_strems = 128\n").unwrap();
    let out = cli().args(["check-config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_strems"), "{err}");

    std::fs::write(&bad, "idle_timeout_secs = 0\n").unwrap();
    let out = cli().args(["check-config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("idle_timeout_secs") && err.contains("between 1 and 600"),
        "{err}"
    );

    // Flags win over the file.
    let out = cli()
        .args(["check-config", "--max-streams", "9"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_streams = 9"));
}

#[test]
fn serve_without_a_reachable_cluster_says_so_and_opens_no_disk_store() {
    // Never a silent fall-back to the disk store.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let out = cli()
        .args([
            "serve",
            "--store",
            "cluster",
            "--cluster-nodes",
            "127.0.0.1:1",
        ])
        .arg("--master-key-file")
        .arg(&key)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(
        !dir.path().join("store").exists(),
        "no disk store was opened"
    );
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sealpost.toml");
    let out = cli().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM under load: every deposit the relay answered OK is there after a restart, the
/// client sees a shutdown it can tell apart, reconnects, and the process exits in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_it_read_flushes_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "disk"], "warn");
    let addr = serve.addr.clone();
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let c = Client::connect_pinned(&addr, pin).await.unwrap();
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let (mut tx, mut rx) = c.open_deposit().await.unwrap();
    let sizes = mb.sizes.clone();
    let inv = mb.invitation();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for i in 0..100_000u64 {
            let env = sealpost_core::e2e::seal_for_invitation(
                &sealpost_core::engine::Engine::ring(),
                &inv,
                &sizes,
                &i.to_be_bytes(),
            )
            .unwrap();
            if tx.send(&env).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut oks = 0u64;
    let mut shutdown_seen = false;
    let t0 = Instant::now();
    let mut signalled = false;
    let mut serve = Some(serve);
    loop {
        if !signalled && oks >= 200 {
            signal(serve.as_ref().unwrap(), "-TERM");
            signalled = true;
        }
        match tokio::time::timeout(Duration::from_secs(15), rx.next()).await {
            Ok(Ok(Some(batch))) => oks += batch.iter().filter(|s| s.is_success()).count() as u64,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                shutdown_seen = e.is_relay_shutdown();
                break;
            }
            Err(_) => panic!("no answer within 15 s"),
        }
    }
    assert!(signalled, "the relay answered fewer than 200 deposits");
    assert!(shutdown_seen, "the client did not see a relay shutdown");
    let _ = sender.await;
    let mut s = serve.take().unwrap();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "relay did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");

    // Back on the same port and directory: everything answered OK is there.
    let again = Serve::start_on(dir.path(), &addr, &["--store", "disk"], "warn");
    let c2 = c.reconnect(Duration::from_secs(10)).await.unwrap();
    let mut sub = c2.subscribe(&mb.access(), 1024).await.unwrap();
    assert!(
        sub.pending_at_start() >= oks,
        "{} stored, {oks} acknowledged",
        sub.pending_at_start()
    );
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(&mb.open(&d).unwrap()[..], &0u64.to_be_bytes());
    again.stop();
}

fn write_cert(dir: &std::path::Path, name: &str) -> [u8; 32] {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
    sealpost_client::tls::pin_of(ck.cert.der())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path(), "a");
    std::fs::copy(dir.path().join("a.pem"), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(dir.path().join("a.key"), dir.path().join("key.pem")).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let serve = Serve::start(
        dir.path(),
        &[
            "--store",
            "memory",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        "info",
    );
    let old = Client::connect_pinned(&serve.addr, first).await.unwrap();
    let second = write_cert(dir.path(), "b");
    std::fs::copy(dir.path().join("b.pem"), &cert).unwrap();
    std::fs::copy(dir.path().join("b.key"), &key).unwrap();
    signal(&serve, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Client::connect_pinned(&serve.addr, second).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate not in use");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Client::connect_pinned(&serve.addr, first).await.is_err());
    // The connection made before the reload keeps working.
    old.info().await.unwrap();

    // A key that is not the certificate's: refused, logged, and the pair in use stays.
    let mut serve = serve;
    std::fs::copy(dir.path().join("a.pem"), &cert).unwrap();
    signal(&serve, "-HUP");
    let line = serve.wait_for_log("certificate reload failed", Duration::from_secs(20));
    assert!(line.contains("is not the private key"), "{line}");
    Client::connect_pinned(&serve.addr, second)
        .await
        .expect("the previous pair is still served");
    serve.stop();
}

/// Every metric the Grafana dashboard and the alert rules query is one the relay exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dashboard =
        std::fs::read_to_string(format!("{root}/grafana/dashboards/sealpost.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for p in json["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs.push(std::fs::read_to_string(format!("{root}/prometheus/alerts.yml")).unwrap());
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("sealpost_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    // Traffic, so that histograms have samples.
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "memory"], "warn");
    let pin = sealpost_client::tls::parse_pin(&serve.pin).unwrap();
    let c = Client::connect_pinned(&serve.addr, pin).await.unwrap();
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let env = sealpost_core::e2e::seal_for_invitation(
        &sealpost_core::engine::Engine::ring(),
        &mb.invitation(),
        &mb.sizes,
        b"m",
    )
    .unwrap();
    assert_eq!(c.deposit(env).await.unwrap(), DepositStatus::Ok);
    let mut sub = c.subscribe(&mb.access(), 4).await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    sub.ack(d.seq).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, body) = http_get(&serve.admin, "/metrics");
    let exported: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for n in &names {
        assert!(
            exported.contains(n.as_str()),
            "{n} is queried but not exported; exported: {exported:?}"
        );
    }
    serve.stop();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) =
        common::process::start_and_stop(dir.path(), &["--store", "memory", "--log-format", "json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .chain(err.lines())
        .map(|l| serde_json::from_str(l).expect("each log line is a JSON object"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "UDP socket ready"),
        "{err}"
    );
    // No client address or mailbox id without the debug option (nothing connected here, but
    // the relay's own address appears only in the start-up announcement).
    let addr = err
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the listening line");
    assert!(
        lines
            .iter()
            .filter(|v| v["target"] != "sealpost_relay::announce")
            .all(|v| !v.to_string().contains(addr))
    );
}

/// `recv --follow` rides through a relay restart: it sees the shutdown close, reconnects to
/// the relay when it is back, and keeps printing messages, none twice.
#[test]
fn recv_follow_reconnects_after_a_restart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--store", "disk"], "warn");
    let addr = serve.addr.clone();
    let mb = dir.path().join("mb.json");
    let invitation = create_mailbox(&addr, &serve.pin, &mb);
    let send = |msg: &str| {
        let out = cli().args(["send", &invitation, msg]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut recv = cli()
        .args(["recv", "--follow"])
        .arg(&mb)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut recv_err = recv.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(recv.stdout.take().unwrap()).lines();
    send("before the restart");
    assert_eq!(lines.next().unwrap().unwrap(), "before the restart");
    signal(&serve, "-TERM");
    let mut child = serve.child;
    let _ = child.wait();
    let again = Serve::start_on(dir.path(), &addr, &["--store", "disk"], "warn");
    send("after the restart");
    let line = lines.next().map(|l| l.unwrap());
    if line.as_deref() != Some("after the restart") {
        let mut err = String::new();
        let _ = recv_err.read_to_string(&mut err);
        panic!("recv printed {line:?}; its log: {err}");
    }
    let _ = recv.kill();
    let _ = recv.wait();
    again.stop();
}

/// The admin listener answers `/healthz` while the relay starts (`/servingz` and `/readyz`
/// 503 until it is up); `/servingz` and `/readyz` answer 503 from the moment a shutdown
/// begins, while the process still serves HTTP (so an orchestrator stops sending clients
/// before connections close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_start_and_the_shutdown() {
    let prom = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let readiness = sealpost_relay::admin::Readiness::starting();
    let (admin, _task) =
        sealpost_relay::admin::serve("127.0.0.1:0".parse().unwrap(), prom, readiness.clone())
            .await
            .unwrap();
    let admin = admin.to_string();
    let get = |path: &'static str| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || http_get(&admin, path).0)
    };
    assert_eq!(get("/healthz").await.unwrap(), 200, "alive while starting");
    assert_eq!(get("/servingz").await.unwrap(), 503);
    assert_eq!(get("/readyz").await.unwrap(), 503);
    let r = common::relay().await;
    readiness.started(&r.handle.readiness());
    assert_eq!(get("/servingz").await.unwrap(), 200);
    assert_eq!(get("/readyz").await.unwrap(), 200);
    // A subscription keeps the relay busy for the shutdown's grace period.
    let c = r.client().await;
    let mb = c.create(Suite::ChaCha20Poly1305).await.unwrap();
    let _sub = c.subscribe(&mb.access(), 4).await.unwrap();
    let ready = r.handle.ready();
    let stopping = tokio::spawn(r.handle.shutdown_within(Duration::from_secs(3)));
    let t0 = Instant::now();
    while ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "readiness never dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get("/readyz").await.unwrap(), 503);
    assert_eq!(get("/servingz").await.unwrap(), 503);
    assert_eq!(
        get("/healthz").await.unwrap(),
        200,
        "still alive while stopping"
    );
    stopping.await.unwrap();
}
