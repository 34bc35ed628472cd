//! `sweep`: open-loop runs at rising rates, relay and baseline alike, until the p99 or the
//! errors pass a bound: the latency-vs-throughput curve, and the highest rate that meets a
//! stated p99 (the figure people quote for a relay).

use crate::load::options::{RunOptions, Target};
use crate::report::{Machine, Report};
use crate::run::run;
use serde::{Deserialize, Serialize};

/// What a sweep is asked to do.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The load of every step (its target and rate are replaced); its store is the relay's.
    pub template: RunOptions,
    /// Rates to try, as fractions of each target's closed-loop maximum, rising.
    pub fractions: Vec<f64>,
    /// The p99 a rate must meet, milliseconds.
    pub p99_target_ms: f64,
    /// A target's sweep stops after a step whose p99 exceeds this, milliseconds.
    pub stop_p99_ms: f64,
}

/// One step of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Fraction of the closed-loop maximum offered.
    pub fraction: f64,
    /// Envelopes per second offered (open loop).
    pub rate: f64,
    /// Deliveries per second achieved.
    pub deliveries_per_s: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Rejected, lost, duplicated and corrupted envelopes.
    pub errors: u64,
    /// Whether the step met the p99 target with no errors and kept up with the offered rate.
    pub meets: bool,
    /// The step's full report (histogram and timeline included).
    pub report: Report,
}

/// One target's curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepCurve {
    /// `relay` or `baseline`.
    pub kind: String,
    /// Deliveries per second of the closed-loop run the rates are fractions of.
    pub closed_loop_per_s: f64,
    /// The steps, in the order they ran.
    pub points: Vec<SweepPoint>,
    /// The highest offered rate that met the p99 target (`None`: not even the first step).
    pub best_rate: Option<f64>,
    /// Why the sweep of this target stopped.
    pub stopped: String,
}

/// The whole sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// Where it ran.
    pub machine: Machine,
    /// The command line, as typed.
    #[serde(default)]
    pub command: Option<String>,
    /// Envelope body size.
    pub size: u32,
    /// End-to-end sealing in the generator.
    pub e2e: crate::load::options::E2eMode,
    /// Store of the relay.
    pub store: crate::load::options::StoreKind,
    /// Seconds of measured load per step.
    pub duration_s: f64,
    /// The p99 target, milliseconds.
    pub p99_target_ms: f64,
    /// The stop bound, milliseconds.
    pub stop_p99_ms: f64,
    /// Relay, then baseline.
    pub curves: Vec<SweepCurve>,
}

/// The errors a run had: anything but a clean delivery.
fn errors(r: &Report) -> u64 {
    r.rejected + r.lost + r.duplicated + r.corrupted
}

/// Runs the sweep. `each` sees every run as it ends: (kind, fraction or `None` for the
/// closed-loop run, its report).
pub async fn sweep(
    opts: SweepOptions,
    mut each: impl FnMut(&str, Option<f64>, &Report),
) -> anyhow::Result<SweepReport> {
    anyhow::ensure!(
        !opts.fractions.is_empty() && opts.fractions.iter().all(|f| f.is_finite() && *f > 0.0),
        "--steps must be positive fractions of the maximum, e.g. 0.1,0.2,…,1.2"
    );
    anyhow::ensure!(
        opts.p99_target_ms > 0.0 && opts.stop_p99_ms >= opts.p99_target_ms,
        "--p99-ms must be positive and --stop-p99-ms at least as large"
    );
    let kinds = [("relay", Target::Spawn), ("baseline", Target::Baseline)];
    let mut curves = Vec::new();
    for (kind, target) in &kinds {
        let mut o = opts.template.clone();
        o.target = target.clone();
        o.rate = None;
        o.label = format!("{kind}, closed-loop maximum");
        let r = run(o).await?;
        each(kind, None, &r);
        curves.push(SweepCurve {
            kind: (*kind).to_owned(),
            closed_loop_per_s: r.deliveries_per_s,
            points: Vec::new(),
            best_rate: None,
            stopped: String::new(),
        });
    }
    // Steps interleaved between the targets, so a shared machine's noise falls on both.
    for (step, &fraction) in opts.fractions.iter().enumerate() {
        for (curve, (kind, target)) in curves.iter_mut().zip(&kinds) {
            if !curve.stopped.is_empty() {
                continue;
            }
            let rate = (fraction * curve.closed_loop_per_s).max(1.0);
            let mut o = opts.template.clone();
            o.target = target.clone();
            o.rate = Some(rate);
            o.label = format!(
                "{kind}, step {} of {}: {:.0} % = {rate:.0}/s",
                step + 1,
                opts.fractions.len(),
                fraction * 100.0
            );
            let r = run(o).await?;
            each(kind, Some(fraction), &r);
            let p99_ms = r.latency_us.p99 as f64 / 1000.0;
            let errs = errors(&r);
            let kept_up = r.deliveries_per_s >= 0.95 * rate;
            let meets = p99_ms <= opts.p99_target_ms && errs == 0 && kept_up;
            if meets {
                curve.best_rate = Some(curve.best_rate.map_or(rate, |b: f64| b.max(rate)));
            }
            if errs > 0 {
                curve.stopped = format!("{errs} errors at {rate:.0}/s");
            } else if p99_ms > opts.stop_p99_ms {
                curve.stopped = format!(
                    "p99 {p99_ms:.1} ms at {rate:.0}/s is over the {} ms bound",
                    opts.stop_p99_ms
                );
            }
            curve.points.push(SweepPoint {
                fraction,
                rate,
                deliveries_per_s: r.deliveries_per_s,
                p50_us: r.latency_us.p50,
                p99_us: r.latency_us.p99,
                p999_us: r.latency_us.p999,
                errors: errs,
                meets,
                report: r,
            });
        }
    }
    for c in &mut curves {
        if c.stopped.is_empty() {
            c.stopped = "every step ran".to_owned();
        }
    }
    let t = &opts.template;
    Ok(SweepReport {
        machine: Machine::this(),
        command: None,
        size: t.size,
        e2e: t.e2e,
        store: t.store,
        duration_s: t.duration.as_secs_f64(),
        p99_target_ms: opts.p99_target_ms,
        stop_p99_ms: opts.stop_p99_ms,
        curves,
    })
}
