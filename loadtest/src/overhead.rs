//! `overhead`: what one engine operation costs per envelope, and how much of that lies outside
//! the backend's kernels.
//!
//! For each backend and batch size the jobs are built once, before anything is timed (every
//! envelope with its own random key, as in `speed`), and the same job list is handed to the
//! engine call after call, so the harness adds nothing per envelope. A measurement is a fixed
//! number of batch calls timed with the TSC (fixed, so that the command can also run under
//! `valgrind --tool=callgrind`, where only the instruction counts mean anything: collect
//! `sealpost_loadtest::overhead::timed_loop`); the reported figure is the median of several
//! measurements, converted to core cycles with the measured core clock. The kernel floor is
//! computed as in `speed`: the backend's kernels alone ([`Engine::kernel_cost`]) times the
//! ChaCha20 and Poly1305 work one envelope takes ([`sealpost_core::engine::KernelCost::job_tsc`]); the overhead is the total
//! minus that floor.

use crate::report::Machine;
use crate::speed::{self, DELIVERY_AAD, Data, Kernels, Op, make_data};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sealpost_core::Suite;
use sealpost_core::batch::{OpenJob, SealJob, VerifyJob};
use sealpost_core::engine::{Backend, Engine, KernelCost, tsc_now};
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Options of an overhead run.
#[derive(Debug, Clone)]
pub struct OverheadOptions {
    /// The operation measured.
    pub op: Op,
    /// Bytes authenticated per envelope: the AAD for verify, the plaintext (with a
    /// [`DELIVERY_AAD`]-byte AAD) for seal and open.
    pub size: usize,
    /// Envelopes per batch call, one row each.
    pub batches: Vec<usize>,
    /// The engines measured, one row per batch size each.
    pub engines: Vec<Engine>,
    /// Batch calls per measurement; `None`: as many as take about `seconds` (found by timing a
    /// short warm-up of each cell).
    pub iterations: Option<u64>,
    /// Seconds one measurement should take when `iterations` is `None`.
    pub seconds: f64,
    /// Measurements per cell; the median is reported.
    pub repeat: usize,
    /// Measure the core clock and the kernel floor (off under valgrind, where neither means
    /// anything and the clock measurement alone takes minutes).
    pub floor: bool,
    /// How long each kernel is timed for the floor (`speed` uses 200 ms).
    pub floor_budget: Duration,
    /// Core cycles per envelope outside the kernels that count as meeting the target.
    pub target: f64,
}

impl Default for OverheadOptions {
    fn default() -> Self {
        Self {
            op: Op::Verify,
            size: 64,
            batches: vec![64, 1000],
            engines: default_engines(),
            iterations: None,
            seconds: 0.5,
            repeat: 7,
            floor: true,
            floor_budget: Duration::from_millis(200),
            target: 60.0,
        }
    }
}

/// The engines measured by default: every SIMD backend this CPU runs natively (AVX-512 and/or
/// AVX2), best first.
pub fn default_engines() -> Vec<Engine> {
    [Backend::Avx512, Backend::Avx2]
        .into_iter()
        .filter_map(|b| Engine::new(b).ok())
        .collect()
}

/// One measurement, reported as it is taken.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Backend.
    pub backend: &'static str,
    /// Envelopes per batch call.
    pub batch: usize,
    /// Which measurement of the cell (0-based).
    pub repeat: usize,
    /// Batch calls timed.
    pub iterations: u64,
    /// TSC ticks per envelope.
    pub tsc_per_envelope: Option<f64>,
    /// Nanoseconds per envelope (wall clock).
    pub ns_per_envelope: f64,
    /// TSC ticks per envelope times the run's core cycles per tick.
    pub core_cycles_per_envelope: Option<f64>,
}

/// One cell: a backend at a batch size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Operation.
    pub op: Op,
    /// Bytes authenticated per envelope.
    pub size: usize,
    /// Envelopes per batch call.
    pub batch: usize,
    /// Backend.
    pub backend: &'static str,
    /// Envelopes per wave of the backend.
    pub lanes: usize,
    /// Batch calls per measurement.
    pub iterations: u64,
    /// Measurements taken.
    pub repeats: usize,
    /// Median TSC ticks per envelope over the measurements.
    pub tsc_per_envelope: Option<f64>,
    /// Fastest measurement, TSC ticks per envelope.
    pub tsc_per_envelope_min: Option<f64>,
    /// Slowest measurement, TSC ticks per envelope.
    pub tsc_per_envelope_max: Option<f64>,
    /// Median nanoseconds per envelope (wall clock).
    pub ns_per_envelope: f64,
    /// Every measurement, TSC ticks per envelope, in the order taken.
    pub tsc_per_envelope_samples: Vec<f64>,
    /// Median core cycles per envelope: the whole operation.
    pub core_cycles_per_envelope: Option<f64>,
    /// AAD bytes per envelope.
    pub aad_len: usize,
    /// Message bytes per envelope.
    pub message_len: usize,
    /// What the kernels alone take for one envelope's blocks, in core cycles.
    pub floor_core_cycles_per_envelope: Option<f64>,
    /// Total minus floor: core cycles per envelope spent outside the kernels.
    pub overhead_core_cycles_per_envelope: Option<f64>,
    /// Floor / total (1 = nothing but kernels).
    pub floor_fraction: Option<f64>,
    /// Whether the overhead is within the target.
    pub target_met: Option<bool>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    /// Where it ran.
    pub machine: Machine,
    /// CPU flags that decide the backends.
    pub cpu_flags: Vec<String>,
    /// Seconds since the Unix epoch when the run began.
    pub started_unix: u64,
    /// Operation.
    pub op: Op,
    /// Bytes authenticated per envelope.
    pub size: usize,
    /// AAD bytes per envelope (the authenticated bytes themselves for verify).
    pub aad_bytes: usize,
    /// Core clock cycles per TSC tick used for every conversion (median of seven measurements
    /// at the start).
    pub core_cycles_per_tsc_tick: Option<f64>,
    /// The same measured again at the end, to show how much the clock moved during the run.
    pub core_cycles_per_tsc_tick_end: Option<f64>,
    /// The overhead target, core cycles per envelope outside the kernels.
    pub target_overhead_core_cycles: f64,
    /// The kernel floors, per backend.
    pub kernels: Vec<Kernels>,
    /// The cells.
    pub rows: Vec<Row>,
}

/// The job list of one batch size, built once and handed to every call.
enum Jobs<'a> {
    Verify(Vec<VerifyJob<'a>>),
    Seal(Vec<SealJob<'a>>),
    Open(Vec<OpenJob<'a>>),
}

fn make_jobs<'a>(op: Op, d: &'a Data, outs: &'a mut [Vec<u8>]) -> Jobs<'a> {
    match op {
        Op::Verify => Jobs::Verify(
            (0..d.keys.len())
                .map(|i| VerifyJob {
                    key: &d.keys[i],
                    nonce: &d.nonces[i],
                    aad: &d.aads[i],
                    tag: &d.tags[i],
                })
                .collect(),
        ),
        Op::Seal => Jobs::Seal(
            outs.iter_mut()
                .enumerate()
                .map(|(i, o)| SealJob {
                    key: &d.keys[i],
                    nonce: d.nonces[i],
                    aad: &d.aads[i],
                    plaintext: &d.msgs[i],
                    out: &mut o[..],
                })
                .collect(),
        ),
        Op::Open => Jobs::Open(
            outs.iter_mut()
                .enumerate()
                .map(|(i, o)| OpenJob {
                    key: &d.keys[i],
                    nonce: d.nonces[i],
                    aad: &d.aads[i],
                    ciphertext: &d.sealed[i],
                    out: &mut o[..d.msgs[i].len()],
                })
                .collect(),
        ),
    }
}

/// One batch call: the only thing inside the timed loop.
#[inline(always)]
fn one_call(engine: &Engine, jobs: &mut Jobs<'_>, results: &mut [bool]) {
    let r = match jobs {
        Jobs::Verify(j) => engine.verify(black_box(&j[..]), results),
        Jobs::Seal(j) => engine.seal(black_box(&mut j[..])),
        Jobs::Open(j) => engine.open(black_box(&mut j[..]), results),
    };
    r.expect("batch shapes");
    black_box(&mut *results);
}

/// The timed loop: `iterations` batch calls between two TSC reads. Under callgrind, collect
/// this function only (`--toggle-collect='sealpost_loadtest::overhead::timed_loop'`).
#[inline(never)]
fn timed_loop(
    engine: &Engine,
    jobs: &mut Jobs<'_>,
    results: &mut [bool],
    iterations: u64,
) -> (Option<u64>, Duration) {
    let t0 = Instant::now();
    let c0 = tsc_now();
    for _ in 0..iterations {
        one_call(engine, jobs, results);
    }
    let ticks = tsc_now().zip(c0).map(|(c1, c0)| c1.wrapping_sub(c0));
    (ticks, t0.elapsed())
}

/// Untimed calls before a measurement (caches, predictors, the clock settle).
#[inline(never)]
fn warm_up(engine: &Engine, jobs: &mut Jobs<'_>, results: &mut [bool], calls: u64) {
    for _ in 0..calls {
        one_call(engine, jobs, results);
    }
}

/// Calls per measurement that take about `seconds`, from a short timed warm-up.
fn calibrate(engine: &Engine, jobs: &mut Jobs<'_>, results: &mut [bool], seconds: f64) -> u64 {
    let probe = Duration::from_secs_f64((seconds / 10.0).clamp(0.001, 0.1));
    let t0 = Instant::now();
    let mut calls = 0u64;
    while calls == 0 || t0.elapsed() < probe {
        one_call(engine, jobs, results);
        calls += 1;
    }
    let per_call = t0.elapsed().as_secs_f64() / calls as f64;
    ((seconds / per_call).round() as u64).max(1)
}

/// Checks that the engine computes what ring does before anything is timed.
fn check(engine: &Engine, op: Op, d: &Data, jobs: &mut Jobs<'_>, results: &mut [bool]) {
    results.fill(false);
    one_call(engine, jobs, results);
    let backend = engine.describe();
    match jobs {
        Jobs::Verify(_) | Jobs::Open(_) => {
            assert!(
                results.iter().all(|r| *r),
                "{backend}: {op:?} rejected a valid envelope"
            );
        }
        Jobs::Seal(_) => {}
    }
    match jobs {
        Jobs::Seal(j) => assert!(
            j.iter().zip(&d.sealed).all(|(o, s)| *o.out == s[..]),
            "{backend}: sealed differently from ring"
        ),
        Jobs::Open(j) => assert!(
            j.iter().zip(&d.msgs).all(|(o, m)| *o.out == m[..]),
            "{backend}: opened differently from ring"
        ),
        Jobs::Verify(_) => {}
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs every cell, calling `each` with every measurement as it is taken. Measurements are
/// interleaved: each repetition measures every cell once, so that a slow drift of the clock
/// spreads over all cells rather than landing on one.
pub fn run(
    opts: &OverheadOptions,
    mut each: impl FnMut(&Sample),
) -> anyhow::Result<OverheadReport> {
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        anyhow::bail!("batch sizes must be positive");
    }
    if opts.engines.is_empty() {
        anyhow::bail!("no engine to measure");
    }
    if opts.repeat == 0 || opts.iterations == Some(0) {
        anyhow::bail!("--repeat and --iterations must be positive");
    }
    if opts.iterations.is_none() && (opts.seconds.is_nan() || opts.seconds <= 0.0) {
        anyhow::bail!("seconds per measurement must be positive");
    }
    let op = opts.op;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = if opts.floor {
        speed::clock_ratio()
    } else {
        None
    };
    let costs: Vec<Option<KernelCost>> = opts
        .engines
        .iter()
        .map(|e| {
            opts.floor
                .then(|| e.kernel_cost(opts.floor_budget))
                .flatten()
        })
        .collect();
    let core = |t: Option<f64>| t.zip(clock).map(|(t, c)| t * c);
    let kernels = opts
        .engines
        .iter()
        .zip(&costs)
        .map(|(e, k)| Kernels::new(e, *k, clock))
        .collect();

    // Inputs and jobs for every batch size, built once; every backend uses the same ones.
    let mut rng = StdRng::seed_from_u64(0x0bad_cafe);
    let inputs: Vec<Data> = opts
        .batches
        .iter()
        .map(|&b| make_data(op, Suite::ChaCha20Poly1305, opts.size, b, &mut rng))
        .collect();
    let mut outs: Vec<Vec<Vec<u8>>> = inputs
        .iter()
        .map(|d| d.msgs.iter().map(|m| vec![0u8; m.len() + 16]).collect())
        .collect();
    let mut jobs: Vec<Jobs<'_>> = inputs
        .iter()
        .zip(outs.iter_mut())
        .map(|(d, o)| make_jobs(op, d, o))
        .collect();
    let mut results: Vec<Vec<bool>> = opts.batches.iter().map(|&b| vec![false; b]).collect();

    // Cells in measuring order: batch sizes, then backends.
    let cells: Vec<(usize, usize)> = (0..opts.batches.len())
        .flat_map(|b| (0..opts.engines.len()).map(move |e| (b, e)))
        .collect();
    let mut iterations = vec![0u64; cells.len()];
    for (c, &(b, e)) in cells.iter().enumerate() {
        let engine = &opts.engines[e];
        check(engine, op, &inputs[b], &mut jobs[b], &mut results[b]);
        iterations[c] = match opts.iterations {
            Some(n) => n,
            None => calibrate(engine, &mut jobs[b], &mut results[b], opts.seconds),
        };
    }
    let mut tsc: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
    for repeat in 0..opts.repeat {
        for (c, &(b, e)) in cells.iter().enumerate() {
            let engine = &opts.engines[e];
            let n = iterations[c];
            warm_up(engine, &mut jobs[b], &mut results[b], n.div_ceil(10));
            let (ticks, time) = timed_loop(engine, &mut jobs[b], &mut results[b], n);
            let envelopes = (n * opts.batches[b] as u64) as f64;
            let t = ticks.map(|t| t as f64 / envelopes);
            let s = Sample {
                backend: engine.describe(),
                batch: opts.batches[b],
                repeat,
                iterations: n,
                tsc_per_envelope: t,
                ns_per_envelope: time.as_secs_f64() * 1e9 / envelopes,
                core_cycles_per_envelope: core(t),
            };
            each(&s);
            if let Some(t) = t {
                tsc[c].push(t);
            }
            ns[c].push(s.ns_per_envelope);
        }
    }
    // The results of the last calls must still be right.
    for (b, r) in results.iter().enumerate() {
        assert!(
            op == Op::Seal || r.iter().all(|x| *x),
            "batch {}: a valid envelope was rejected during the run",
            opts.batches[b]
        );
    }
    let clock_end = if opts.floor {
        speed::clock_ratio()
    } else {
        None
    };

    let (aad, ct) = op.shape(opts.size);
    let rows = cells
        .iter()
        .enumerate()
        .map(|(c, &(b, e))| {
            let engine = &opts.engines[e];
            let samples = &tsc[c];
            let t = (!samples.is_empty()).then(|| median(samples));
            let total = core(t);
            let floor = core(costs[e].map(|k| k.job_tsc(aad, ct)));
            let overhead = total.zip(floor).map(|(t, f)| t - f);
            Row {
                op,
                size: opts.size,
                batch: opts.batches[b],
                backend: engine.describe(),
                lanes: engine.lanes(),
                iterations: iterations[c],
                repeats: opts.repeat,
                tsc_per_envelope: t,
                tsc_per_envelope_min: samples.iter().copied().reduce(f64::min),
                tsc_per_envelope_max: samples.iter().copied().reduce(f64::max),
                ns_per_envelope: median(&ns[c]),
                tsc_per_envelope_samples: samples.clone(),
                core_cycles_per_envelope: total,
                aad_len: aad,
                message_len: ct,
                floor_core_cycles_per_envelope: floor,
                overhead_core_cycles_per_envelope: overhead,
                floor_fraction: total.zip(floor).map(|(t, f)| f / t),
                target_met: overhead.map(|o| o <= opts.target),
            }
        })
        .collect();
    Ok(OverheadReport {
        machine: Machine::this(),
        cpu_flags: speed::cpu_flags(),
        started_unix,
        op,
        size: opts.size,
        aad_bytes: match op {
            Op::Verify => opts.size,
            Op::Seal | Op::Open => DELIVERY_AAD,
        },
        core_cycles_per_tsc_tick: clock,
        core_cycles_per_tsc_tick_end: clock_end,
        target_overhead_core_cycles: opts.target,
        kernels,
        rows,
    })
}

fn opt(v: Option<f64>, p: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.p$}"))
}

/// Prints one measurement as a progress line.
pub fn print_sample(s: &Sample) {
    println!(
        "  {:<8} batch {:>5}  rep {:>2}  {:>8} calls  {:>8} TSC/env  {:>8} core c/env  {:>8.2} ns/env",
        s.backend,
        s.batch,
        s.repeat + 1,
        s.iterations,
        opt(s.tsc_per_envelope, 1),
        opt(s.core_cycles_per_envelope, 1),
        s.ns_per_envelope
    );
}

/// Prints the summary: the clock, the kernels, and one line per cell.
pub fn print_summary(r: &OverheadReport) {
    println!();
    println!(
        "{} {} B ({}), core cycles per TSC tick {} (start) / {} (end)",
        format!("{:?}", r.op).to_lowercase(),
        r.size,
        match r.op {
            Op::Verify => "AAD".to_owned(),
            Op::Seal | Op::Open => format!("plaintext, {} B AAD", r.aad_bytes),
        },
        opt(r.core_cycles_per_tsc_tick, 3),
        opt(r.core_cycles_per_tsc_tick_end, 3)
    );
    for k in &r.kernels {
        println!(
            "kernels alone, {}: ChaCha20 {} core c/block, Poly1305 {} core c/block",
            k.backend,
            opt(k.chacha_core_cycles_per_block, 1),
            opt(k.poly_core_cycles_per_block, 2)
        );
    }
    if let Some(row) = r.rows.first() {
        println!(
            "floor per envelope = the kernels alone for one job of {} AAD bytes and {} message bytes: its ChaCha20 key block, {} keystream block(s), {} Poly1305 block(s) and its tag",
            row.aad_len,
            row.message_len,
            row.message_len.div_ceil(64),
            row.aad_len.div_ceil(16) + row.message_len.div_ceil(16) + 1
        );
    }
    println!(
        "{:<8} {:>5} {:>8} {:>22} {:>10} {:>7} {:>9} {:>6} {:>8}",
        "backend",
        "batch",
        "calls",
        "TSC/env median (range)",
        "core c/env",
        "floor",
        "overhead",
        "floor%",
        format!("<= {:.0}?", r.target_overhead_core_cycles)
    );
    for row in &r.rows {
        let range = match (
            row.tsc_per_envelope,
            row.tsc_per_envelope_min,
            row.tsc_per_envelope_max,
        ) {
            (Some(t), Some(lo), Some(hi)) => format!("{t:.1} ({lo:.1}-{hi:.1})"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<8} {:>5} {:>8} {:>22} {:>10} {:>7} {:>9} {:>6} {:>8}",
            row.backend,
            row.batch,
            row.iterations,
            range,
            opt(row.core_cycles_per_envelope, 1),
            opt(row.floor_core_cycles_per_envelope, 1),
            opt(row.overhead_core_cycles_per_envelope, 1),
            opt(row.floor_fraction.map(|f| 100.0 * f), 0),
            match row.target_met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
        );
    }
    println!(
        "core c/env: whole operation per envelope (median); floor: the kernels alone for the same blocks; overhead = core c/env - floor"
    );
}
