//! Reports as pages: a sweep (relay and baseline), its runs, a comparison made of them, a
//! crypto speed matrix and a chaos run render to one self-contained HTML file with a chart for
//! each plot; saved JSON reads back; and a real browser (headless Chromium) draws the charts.

use sealpost_loadtest::chaos::{ChaosReport, ChaosSecond, CycleRecord, KillKind, OutcomeCounts};
use sealpost_loadtest::compare::{CompareReport, CompareRun, Medians, Ratios};
use sealpost_loadtest::html::reports::{Saved, page};
use sealpost_loadtest::report::Report;
use sealpost_loadtest::run::{E2eMode, RunOptions, StoreKind, Target, run};
use sealpost_loadtest::sweep::{SweepOptions, sweep};
use std::time::Duration;

fn options(target: Target) -> RunOptions {
    RunOptions {
        target,
        mailboxes: 4,
        connections: 2,
        size: 256,
        duration: Duration::from_millis(1200),
        rate: None,
        warmup: Duration::from_millis(200),
        depth: 16,
        window: 16,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        store: StoreKind::Memory,
        backlog: false,
        e2e: E2eMode::Fast,
        live_delivered: None,
        via: None,
        label: String::new(),
    }
}

/// Saves a report as JSON and reads it back as the `report` subcommand does.
fn round_trip(name: &str, v: &impl serde::Serialize) -> Saved {
    let text = serde_json::to_string_pretty(v).expect("serializes");
    Saved::parse(name, &text).expect("reads back")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_a_comparison_and_a_speed_matrix_render_with_their_charts() {
    let mut seen = Vec::new();
    let s = sweep(
        SweepOptions {
            template: options(Target::Spawn),
            fractions: vec![0.3, 0.6],
            p99_target_ms: 1000.0,
            stop_p99_ms: 5000.0,
        },
        |kind, f, _| seen.push((kind.to_owned(), f)),
    )
    .await
    .expect("sweep");
    // The closed-loop maxima first, then the steps interleaved.
    assert_eq!(
        seen,
        [
            ("relay".to_owned(), None),
            ("baseline".to_owned(), None),
            ("relay".to_owned(), Some(0.3)),
            ("baseline".to_owned(), Some(0.3)),
            ("relay".to_owned(), Some(0.6)),
            ("baseline".to_owned(), Some(0.6)),
        ]
    );
    for c in &s.curves {
        assert!(c.closed_loop_per_s > 0.0, "{c:?}");
        assert_eq!(c.points.len(), 2);
        let offered: Vec<f64> = c.points.iter().map(|p| p.rate).collect();
        assert!(offered[0] < offered[1], "{offered:?}");
        assert!(
            c.points
                .iter()
                .all(|p| p.errors == 0 && p.report.config.mode == "open")
        );
        // Best rate is the highest step that met the (generous) target.
        let met = c
            .points
            .iter()
            .filter(|p| p.meets)
            .map(|p| p.rate)
            .fold(None, |b: Option<f64>, r| Some(b.map_or(r, |b| b.max(r))));
        assert_eq!(c.best_rate, met);
    }

    // A comparison built from the sweep's steps, as compare would save it.
    let runs: Vec<CompareRun> = s
        .curves
        .iter()
        .flat_map(|c| c.points.iter().enumerate().map(move |(i, p)| (c, i, p)))
        .map(|(c, i, p)| CompareRun {
            kind: if c.kind == "relay" {
                "memory".into()
            } else {
                "baseline".into()
            },
            repeat: i + 1,
            report: p.report.clone(),
        })
        .collect();
    let cmp = CompareReport {
        size: 256,
        e2e: E2eMode::Fast,
        command: Some("sealpost-loadtest compare --repeat 2".into()),
        repeats: 2,
        machine: s.machine.clone(),
        baseline: Medians::default(),
        memory: Medians::default(),
        disk: Medians::default(),
        cluster: None,
        cluster_vs_disk: None,
        ratios: Ratios::default(),
        runs,
    };

    let speed = sealpost_loadtest::speed::run(
        &sealpost_loadtest::speed::SpeedOptions {
            sizes: vec![64, 1024],
            batch: 8,
            seconds: 0.01,
            ops: vec![sealpost_loadtest::speed::Op::Verify],
            suites: vec![sealpost_core::Suite::ChaCha20Poly1305],
            engines: vec![
                sealpost_core::engine::Engine::new(sealpost_core::engine::Backend::Portable)
                    .expect("the portable backend runs anywhere"),
            ],
        },
        |_| {},
    );
    let reports = vec![
        (
            "relay-30".to_owned(),
            round_trip("r", &s.curves[0].points[0].report),
        ),
        (
            "baseline-30".to_owned(),
            round_trip("b", &s.curves[1].points[0].report),
        ),
        ("sweep".to_owned(), round_trip("s", &s)),
        ("compare".to_owned(), round_trip("c", &cmp)),
        ("speed".to_owned(), round_trip("p", &speed)),
    ];
    assert!(matches!(reports[0].1, Saved::Run(_)));
    assert!(matches!(reports[2].1, Saved::Sweep(_)));
    assert!(matches!(reports[3].1, Saved::Compare(_)));
    assert!(matches!(reports[4].1, Saved::Speed(_)));
    let p = page("test report", &reports).expect("renders");
    // Runs: percentile, throughput and p99 over time; sweep: the curve and a percentile plot
    // per target; compare: bars and its three run charts; speed: one bar chart per (op,
    // suite, backend).
    assert_eq!(p.chart_count(), 3 + 3 + 4 + 1, "charts");
    let html = p.render();
    assert_eq!(html.matches("<svg").count(), p.chart_count());
    for text in [
        "Latency by percentile",
        "Throughput over time",
        "p99 latency over time",
        "Latency against throughput",
        "relay-30",
        "baseline-30",
        "99.9%",
        "sealpost-loadtest compare --repeat 2",
        &s.machine.cpu_model,
    ] {
        assert!(html.contains(text), "{text} missing from the page");
    }
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src=\""));
    // Curves are drawn, not just axes: a polyline per series of each line chart.
    assert!(
        html.matches("<polyline").count() >= 2 * 3 + 4,
        "{}",
        html.matches("<polyline").count()
    );
}

#[test]
fn reports_saved_before_histograms_were_kept_still_render() {
    // A compare file as written before this version: runs without a histogram, relays or
    // p50 per second.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/compare-2026-12-01-after-limits.json"
    );
    let saved = Saved::read(std::path::Path::new(path)).expect("an older compare file reads");
    let p = page("old", &[("old".to_owned(), saved)]).expect("renders");
    assert!(p.chart_count() >= 4);
    // Its percentile plot falls back on the summary percentiles: a line per kind.
    let svg = &p.svg_files()[1].1;
    assert!(svg.contains("Latency by percentile"), "{svg}");
    assert!(svg.matches("<polyline").count() >= 3, "{svg}");
}

#[test]
fn a_file_that_is_no_report_is_a_clear_error() {
    let e = Saved::parse("x.json", "{\"hello\": 1}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.json is not a sealpost-loadtest report"),
        "{e}"
    );
    let e = Saved::parse("y.json", "not json").unwrap_err().to_string();
    assert!(e.contains("y.json"), "{e}");
    let e = Saved::parse("z.json", "{\"timeline\": [], \"latency_us\": 3}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("a run report whose fields do not match"), "{e}");
}

/// A chaos report as `chaos --json` writes it, for two cycles (a relay and a primary kill);
/// made by hand, since a chaos run takes relay processes and a Valkey cluster.
fn chaos_report() -> ChaosReport {
    let cycle = |n: usize, kind: KillKind, kill_s: f64| CycleRecord {
        cycle: n,
        kind,
        target: format!("target-{n}"),
        kill_s,
        acked_at_kill: 500 * n as u64,
        promoted_s: (kind == KillKind::Primary).then_some(kill_s + 2.4),
        promoted: (kind == KillKind::Primary).then(|| "127.0.0.1:7004".to_owned()),
        restarted_s: Some(kill_s + 3.5),
        first_ack_after_kill_s: Some(kill_s + 0.3),
        acked_at_restart: 500 * n as u64 + 200,
        window: OutcomeCounts {
            ok: 150,
            unavailable: 4,
            ..OutcomeCounts::default()
        },
        window_acked_lost: 0,
        error: None,
    };
    let mut r = ChaosReport {
        command: Some("sealpost-loadtest chaos --store cluster --cycles 1".into()),
        machine: sealpost_loadtest::report::Machine::this(),
        store: "cluster".into(),
        relays: 2,
        kinds: vec![KillKind::Relay, KillKind::Primary],
        planned_per_kind: 1,
        cycles: 2,
        relay_kills: 1,
        primary_kills: 1,
        duration_s: 12.0,
        acked: 1500,
        delivered: 1500,
        per_cycle: vec![
            cycle(1, KillKind::Relay, 1.5),
            cycle(2, KillKind::Primary, 6.0),
        ],
        timeline: (0..12)
            .map(|t| ChaosSecond {
                t_s: t,
                acked: if t == 6 { 20 } else { 130 },
                failed: u64::from(t == 6) * 4,
                delivered: 125,
            })
            .collect(),
        ..ChaosReport::default()
    };
    r.judge();
    r
}

#[test]
fn a_saved_chaos_run_renders_its_cycles_on_a_timeline() {
    let saved = round_trip("chaos.json", &chaos_report());
    let Saved::Chaos(c) = &saved else {
        panic!("read back as another kind: {saved:?}");
    };
    assert_eq!((c.per_cycle.len(), c.timeline.len()), (2, 12));
    assert_eq!(c.per_cycle[1].kind, KillKind::Primary);
    let p = page("chaos", &[("chaos".to_owned(), saved)]).expect("renders");
    assert_eq!(p.chart_count(), 1);
    let html = p.render();
    for text in [
        "PASS: 2 kill cycles",
        "sealpost-loadtest chaos --store cluster --cycles 1",
        "Chaos cycles on a timeline",
        "relay killed",
        "primary killed",
        "replica promoted",
        "back (restarted / rejoined)",
        "first ack after the kill",
        "target-2",
        "+2.40s",
        "150/0/4/0/0",
    ] {
        assert!(html.contains(text), "{text} missing from the page");
    }
    // A file written before the timeline was recorded still reads, and says why it has no chart.
    let mut old = serde_json::to_value(chaos_report()).unwrap();
    for field in ["timeline", "command", "machine"] {
        old.as_object_mut().unwrap().remove(field);
    }
    let saved = Saved::parse("old.json", &old.to_string()).expect("an older chaos file reads");
    let p = page("old", &[("old".to_owned(), saved)]).expect("renders");
    assert_eq!(p.chart_count(), 0);
    assert!(p.render().contains("written before chaos recorded one"));
}

#[test]
fn the_chaos_run_in_the_readme_renders() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/chaos-2026-12-01-disk.json"
    );
    let saved = Saved::read(std::path::Path::new(path)).expect("the README's chaos file reads");
    let Saved::Chaos(c) = &saved else {
        panic!("read back as another kind: {saved:?}");
    };
    assert!(c.passed() && c.per_cycle.len() == 4 && !c.timeline.is_empty());
    let p = page("readme", &[("chaos".to_owned(), saved)]).expect("renders");
    let svg = &p.svg_files()[0].1;
    assert!(svg.contains("relay killed") && svg.matches("<polyline").count() >= 3 + 4);
}

/// Renders a page from one real run and a chaos report, for the browser check.
async fn browser_page() -> String {
    let r: Report = run(options(Target::Baseline)).await.expect("baseline run");
    page(
        "browser check",
        &[
            ("baseline".to_owned(), Saved::Run(Box::new(r))),
            ("chaos".to_owned(), Saved::Chaos(Box::new(chaos_report()))),
        ],
    )
    .expect("renders")
    .render()
}

/// Headless Chromium, if installed (Debian's `chromium`).
fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(n))
                    .find(|f| f.is_file())
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_draws_the_charts() {
    let Some(browser) = chromium() else {
        let msg = "chromium_draws_the_charts DID NOT RUN: no chromium on PATH; install it with \
                   `apt-get install chromium` (Debian) to check the HTML reports in a real browser";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: the check is required)");
        }
        // Straight to standard error, past the test harness's capture, so it is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, browser_page().await).unwrap();
    let url = format!("file://{}", file.display());
    let headless = |extra: &[&str]| {
        let out = std::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium starts");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // The DOM as the browser built it: the run's three charts and the chaos timeline, each
    // an <svg> with drawn lines (the chaos chart: three series and a line per event).
    let dom = String::from_utf8(headless(&["--dump-dom"]).stdout).unwrap();
    assert_eq!(dom.matches("<svg").count(), 4, "svg elements in the DOM");
    assert!(
        dom.matches("<polyline").count() >= 3 + 3 + 7,
        "lines in the DOM"
    );
    assert!(dom.contains("Latency by percentile"));
    assert!(dom.contains("Chaos cycles on a timeline") && dom.contains("primary killed"));
    // And pixels: a screenshot of the page is far from blank.
    let shot = dir.path().join("shot.png");
    headless(&[
        "--window-size=1000,2400",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[1..4], b"PNG");
    assert!(
        png.len() > 30_000,
        "screenshot of {} bytes looks blank",
        png.len()
    );
}
