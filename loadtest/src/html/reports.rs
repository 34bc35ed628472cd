//! Each kind of saved report as a section of a page: its configuration, machine and command
//! line, its figures, and its charts.

use super::Page;
use super::charts::{self, Axes, BarGroup, ChartError, Series};
use crate::chaos::ChaosReport;
use crate::compare::CompareReport;
use crate::report::{Machine, Report, ms};
use crate::speed::SpeedReport;
use crate::sweep::SweepReport;
use std::path::Path;

/// What can go wrong rendering saved reports.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not JSON, or not a report this program writes.
    #[error(
        "{path} is not a sealpost-loadtest report ({detail}); give JSON written by run, baseline, compare, sweep, speed or chaos with --json"
    )]
    NotAReport {
        /// The file.
        path: String,
        /// What did not fit.
        detail: String,
    },
    /// A chart failed.
    #[error(transparent)]
    Chart(#[from] ChartError),
}

/// A saved report of any kind.
#[derive(Debug, Clone)]
pub enum Saved {
    /// `run` or `baseline`.
    Run(Box<Report>),
    /// `compare`.
    Compare(Box<CompareReport>),
    /// `sweep`.
    Sweep(Box<SweepReport>),
    /// `speed`.
    Speed(Box<SpeedReport>),
    /// `chaos`.
    Chaos(Box<ChaosReport>),
}

impl Saved {
    /// Reads a report file, recognising its kind by its fields.
    pub fn read(path: &Path) -> Result<Self, RenderError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RenderError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&name, &text)
    }

    /// Parses a report's JSON text; `name` says where it came from in errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, RenderError> {
        let bad = |detail: String| RenderError::NotAReport {
            path: name.to_owned(),
            detail,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let has = |k: &str| v.get(k).is_some();
        let typed = |what: &str| format!("a {what} report whose fields do not match");
        Ok(if has("curves") {
            Self::Sweep(
                serde_json::from_value(v).map_err(|e| bad(format!("{}: {e}", typed("sweep"))))?,
            )
        } else if has("ratios") && has("runs") {
            Self::Compare(
                serde_json::from_value(v).map_err(|e| bad(format!("{}: {e}", typed("compare"))))?,
            )
        } else if has("rows") && has("kernels") {
            Self::Speed(
                serde_json::from_value(v).map_err(|e| bad(format!("{}: {e}", typed("speed"))))?,
            )
        } else if has("per_cycle") && has("verdict") {
            Self::Chaos(
                serde_json::from_value(v).map_err(|e| bad(format!("{}: {e}", typed("chaos"))))?,
            )
        } else if has("timeline") && has("latency_us") {
            Self::Run(serde_json::from_value(v).map_err(|e| bad(format!("{}: {e}", typed("run"))))?)
        } else {
            return Err(bad("no fields of a known report".to_owned()));
        })
    }
}

/// A page rendering `reports` (named, e.g. by file), several runs overlaid in one section.
pub fn page(title: &str, reports: &[(String, Saved)]) -> Result<Page, RenderError> {
    let mut page = Page::new(title);
    let runs: Vec<(String, &Report)> = reports
        .iter()
        .filter_map(|(n, s)| match s {
            Saved::Run(r) => Some((n.clone(), r.as_ref())),
            _ => None,
        })
        .collect();
    if !runs.is_empty() {
        runs_section(&mut page, &runs)?;
    }
    for (name, s) in reports {
        match s {
            Saved::Run(_) => {}
            Saved::Compare(c) => compare_section(&mut page, name, c)?,
            Saved::Sweep(s) => sweep_section(&mut page, name, s)?,
            Saved::Speed(s) => speed_section(&mut page, name, s)?,
            Saved::Chaos(c) => super::chaos::section(&mut page, name, c)?,
        }
    }
    Ok(page)
}

pub(super) fn machine_rows(m: &Machine) -> Vec<(&'static str, String)> {
    vec![
        ("cpu", m.cpu_model.clone()),
        ("cores", m.cores.to_string()),
        ("os", m.os.clone()),
    ]
}

pub(super) fn command_of(page: &mut Page, command: Option<&str>) {
    match command {
        Some(c) => page.code(c),
        None => page.paragraph("(command line not recorded: run from code or an older file)"),
    }
}

/// The percentile curve of a run, (quantile, ms), from its saved histogram; for a report saved
/// before histograms were kept, its four summary percentiles.
fn percentile_points(r: &Report) -> Vec<(f64, f64)> {
    let table = &r.latency_histogram.percentiles;
    if table.is_empty() {
        let l = &r.latency_us;
        return [(0.5, l.p50), (0.99, l.p99), (0.999, l.p999), (1.0, l.max)]
            .into_iter()
            .filter(|_| r.delivered > 0)
            .map(|(q, v)| (q, v as f64 / 1000.0))
            .collect();
    }
    table
        .iter()
        .map(|p| (p.quantile, p.latency_us as f64 / 1000.0))
        .collect()
}

fn timeline_series(
    runs: &[(String, &Report)],
    f: fn(&crate::report::Second) -> f64,
) -> Vec<Series> {
    runs.iter()
        .map(|(n, r)| Series {
            name: n.clone(),
            points: r.timeline.iter().map(|s| (s.t_s as f64, f(s))).collect(),
            ..Series::default()
        })
        .collect()
}

pub(super) fn seconds(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Percentile, throughput-over-time and p99-over-time charts of runs overlaid.
fn run_charts(page: &mut Page, runs: &[(String, &Report)]) -> Result<(), RenderError> {
    let series: Vec<Series> = runs
        .iter()
        .map(|(n, r)| Series {
            name: n.clone(),
            points: percentile_points(r),
            ..Series::default()
        })
        .collect();
    page.chart(
        &charts::percentiles("Latency by percentile", &series)?,
        "Deposit-to-delivery latency at each percentile, after the warm-up; the x axis is logarithmic in the rarity of the event (90 %, 99 %, 99.9 % …), as HdrHistogram plots it.",
    );
    page.chart(
        &charts::lines(
            &Axes {
                title: "Throughput over time",
                x: "seconds since the load started (warm-up included)",
                y: "deliveries per second",
                x_label: &seconds,
                x_range: None,
                markers: false,
            },
            &timeline_series(runs, |s| s.delivered as f64),
        )?,
        "Distinct verified deliveries in each second.",
    );
    page.chart(
        &charts::lines(
            &Axes {
                title: "p99 latency over time",
                x: "seconds since the load started (warm-up included)",
                y: "p99 latency, ms",
                x_label: &seconds,
                x_range: None,
                markers: false,
            },
            &timeline_series(runs, |s| s.p99_us as f64 / 1000.0),
        )?,
        "99th percentile latency of the deliveries in each second.",
    );
    Ok(())
}

fn runs_section(page: &mut Page, runs: &[(String, &Report)]) -> Result<(), RenderError> {
    page.heading(if runs.len() == 1 {
        "Run"
    } else {
        "Runs, overlaid"
    });
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(n, r)| {
            let l = &r.latency_us;
            vec![
                n.clone(),
                format!("{:.0}", r.deliveries_per_s),
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                format!("{}/{}/{}", r.lost, r.duplicated, r.corrupted),
            ]
        })
        .collect();
    page.table(
        &[
            "run",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost/dup/corr",
        ],
        &rows,
    );
    run_charts(page, runs)?;
    for (n, r) in runs {
        page.heading(&format!("Configuration of {n}"));
        command_of(page, r.command.as_deref());
        let c = &r.config;
        let mut rows: Vec<(&str, String)> = vec![
            ("relay", c.relay.clone()),
            (
                "store",
                c.store.map_or("remote".to_owned(), |s| s.name().to_owned()),
            ),
            ("mailboxes", c.mailboxes.to_string()),
            ("connections", c.connections.to_string()),
            ("body size", format!("{} B", c.size)),
            (
                "load",
                format!("{:.1} s after a {:.1} s warm-up", c.duration_s, c.warmup_s),
            ),
            (
                "loop",
                match c.rate {
                    Some(rate) => format!("open, {rate:.0} envelopes/s"),
                    None => format!("closed, depth {}", c.depth),
                },
            ),
            (
                "end-to-end sealing in the generator",
                format!("{:?}", c.e2e).to_lowercase(),
            ),
            ("subscribe window", c.window.to_string()),
        ];
        rows.extend(machine_rows(&r.machine));
        page.pairs(&rows);
        page.paragraph(&r.latency_note());
    }
    Ok(())
}

fn compare_section(page: &mut Page, name: &str, c: &CompareReport) -> Result<(), RenderError> {
    page.heading(&format!("Comparison: {name}"));
    command_of(page, c.command.as_deref());
    let mut rows: Vec<(&str, String)> = vec![
        ("rounds", c.repeats.to_string()),
        ("body size", format!("{} B", c.size)),
        (
            "end-to-end sealing in the generator",
            format!("{:?}", c.e2e).to_lowercase(),
        ),
    ];
    rows.extend(machine_rows(&c.machine));
    page.pairs(&rows);
    let kinds: Vec<(&str, &crate::compare::Medians)> = [
        ("baseline", Some(&c.baseline)),
        ("memory", Some(&c.memory)),
        ("disk", Some(&c.disk)),
        ("cluster", c.cluster.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, m)| m.map(|m| (k, m)))
    .collect();
    let table: Vec<Vec<String>> = kinds
        .iter()
        .map(|(k, m)| {
            let mut row = vec![(*k).to_owned()];
            row.extend(m.cells());
            row
        })
        .collect();
    page.table(
        &[
            "kind",
            "deliveries/s median [min–max]",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "lost/dup/corr",
        ],
        &table,
    );
    page.paragraph(&format!(
        "relay / baseline deliveries/s: memory {:.2}, disk {:.2}{}",
        c.ratios.memory,
        c.ratios.disk,
        c.ratios
            .cluster
            .map_or(String::new(), |v| format!(", cluster {v:.2}"))
    ));
    page.chart(
        &charts::grouped_bars(
            "Deliveries per second by kind (median, min, max)",
            "deliveries per second",
            &["median".into(), "min".into(), "max".into()],
            &kinds
                .iter()
                .map(|(k, m)| BarGroup {
                    label: (*k).to_owned(),
                    values: vec![
                        m.deliveries_per_s,
                        m.spread.deliveries_per_s[0],
                        m.spread.deliveries_per_s[1],
                    ],
                })
                .collect::<Vec<_>>(),
        )?,
        "Each kind's median throughput over the rounds, beside its smallest and largest.",
    );
    // One run per kind overlaid: the round with the median throughput.
    let mut runs = Vec::new();
    for (k, m) in &kinds {
        let best = c.runs.iter().filter(|r| r.kind == *k).min_by(|a, b| {
            (a.report.deliveries_per_s - m.deliveries_per_s)
                .abs()
                .total_cmp(&(b.report.deliveries_per_s - m.deliveries_per_s).abs())
        });
        if let Some(r) = best {
            runs.push((format!("{} (round {})", r.kind, r.repeat), &r.report));
        }
    }
    run_charts(page, &runs)?;
    if let Some(first) = c.runs.first() {
        page.paragraph(&first.report.latency_note());
    }
    Ok(())
}

fn sweep_section(page: &mut Page, name: &str, s: &SweepReport) -> Result<(), RenderError> {
    page.heading(&format!("Sweep: {name}"));
    command_of(page, s.command.as_deref());
    let mut rows: Vec<(&str, String)> = vec![
        ("relay store", s.store.name().to_owned()),
        ("body size", format!("{} B", s.size)),
        (
            "end-to-end sealing in the generator",
            format!("{:?}", s.e2e).to_lowercase(),
        ),
        ("measured load per step", format!("{:.1} s", s.duration_s)),
        ("p99 target", format!("{} ms", s.p99_target_ms)),
        ("stop once p99 exceeds", format!("{} ms", s.stop_p99_ms)),
    ];
    rows.extend(machine_rows(&s.machine));
    page.pairs(&rows);
    let summary: Vec<Vec<String>> = s
        .curves
        .iter()
        .map(|c| {
            vec![
                c.kind.clone(),
                format!("{:.0}", c.closed_loop_per_s),
                c.best_rate.map_or("none".to_owned(), |b| format!("{b:.0}")),
                c.stopped.clone(),
            ]
        })
        .collect();
    page.table(
        &[
            "target",
            "closed-loop deliveries/s",
            &format!("highest rate with p99 ≤ {} ms", s.p99_target_ms),
            "stopped",
        ],
        &summary,
    );
    // One colour per target: its p99 solid, its p50 dashed.
    let curve = |f: fn(&crate::sweep::SweepPoint) -> u64, what: &str, dashed: bool| {
        s.curves
            .iter()
            .enumerate()
            .map(|(i, c)| Series {
                name: format!("{} {what}", c.kind),
                points: c
                    .points
                    .iter()
                    .map(|p| (p.deliveries_per_s, f(p) as f64 / 1000.0))
                    .collect(),
                colour: Some(i),
                dashed,
            })
            .collect::<Vec<_>>()
    };
    let mut series = curve(|p| p.p99_us, "p99", false);
    series.extend(curve(|p| p.p50_us, "p50", true));
    page.chart(
        &charts::lines(
            &Axes {
                title: "Latency against throughput",
                x: "deliveries per second achieved (open loop)",
                y: "latency, ms",
                x_label: &|v| charts::short(*v),
                x_range: None,
                markers: true,
            },
            &series,
        )?,
        "Each point is one open-loop run at a fixed offered rate; latency counts from each envelope's scheduled send time.",
    );
    // Each target's steps overlaid on the percentile plot: how the whole distribution moves
    // as the load rises.
    for c in &s.curves {
        let series: Vec<Series> = c
            .points
            .iter()
            .map(|p| Series {
                name: format!("{:.0}/s", p.rate),
                points: percentile_points(&p.report),
                ..Series::default()
            })
            .collect();
        page.chart(
            &charts::percentiles(
                &format!("Latency by percentile, {}, each step", c.kind),
                &series,
            )?,
            "One curve per offered rate (open loop).",
        );
    }
    let mut steps = Vec::new();
    for c in &s.curves {
        for p in &c.points {
            steps.push(vec![
                c.kind.clone(),
                format!("{:.0} %", p.fraction * 100.0),
                format!("{:.0}", p.rate),
                format!("{:.0}", p.deliveries_per_s),
                ms(p.p50_us),
                ms(p.p99_us),
                ms(p.p999_us),
                p.errors.to_string(),
                if p.meets { "yes" } else { "no" }.to_owned(),
            ]);
        }
    }
    page.table(
        &[
            "target",
            "of max",
            "offered/s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "meets",
        ],
        &steps,
    );
    Ok(())
}

fn speed_section(page: &mut Page, name: &str, s: &SpeedReport) -> Result<(), RenderError> {
    page.heading(&format!("Crypto speed: {name}"));
    command_of(page, s.command.as_deref());
    let mut rows = machine_rows(&s.machine);
    rows.push((
        "core cycles per TSC tick",
        s.core_cycles_per_tsc_tick
            .map_or("-".to_owned(), |c| format!("{c:.3}")),
    ));
    page.pairs(&rows);
    // One chart per (operation, suite, backend): sizes grouped, ours beside the references.
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for r in &s.rows {
        let k = (
            format!("{:?}", r.op).to_lowercase(),
            r.suite.clone(),
            r.backend.clone(),
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let names: Vec<String> = vec!["ours".into(), "ring".into(), "aws-lc-rs".into()];
    for (op, suite, backend) in &keys {
        let groups: Vec<BarGroup> = s
            .rows
            .iter()
            .filter(|r| {
                format!("{:?}", r.op).to_lowercase() == *op
                    && r.suite == *suite
                    && r.backend == *backend
            })
            .map(|r| BarGroup {
                label: size_label(r.size),
                values: vec![
                    r.bytes_per_s / 1e9,
                    r.ring_bytes_per_s / 1e9,
                    r.aws_lc_bytes_per_s / 1e9,
                ],
            })
            .collect();
        page.chart(
            &charts::grouped_bars(
                &format!("{op} {suite}, ours: {backend}"),
                "GB/s",
                &names,
                &groups,
            )?,
            "Bytes processed per second at each size, ours beside ring and aws-lc-rs, the same work in the same run.",
        );
    }
    let table: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            vec![
                format!("{:?}", r.op).to_lowercase(),
                r.suite.clone(),
                r.backend.clone(),
                size_label(r.size),
                format!("{:.2}", r.bytes_per_s / 1e9),
                format!("{:.2}", r.ring_bytes_per_s / 1e9),
                format!("{:.2}", r.aws_lc_bytes_per_s / 1e9),
                format!("{:.2}", r.ratio),
            ]
        })
        .collect();
    page.table(
        &[
            "op",
            "suite",
            "ours",
            "size",
            "ours GB/s",
            "ring GB/s",
            "aws-lc-rs GB/s",
            "ratio",
        ],
        &table,
    );
    Ok(())
}

fn size_label(b: usize) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}
