//! `speed`: the crypto engine against ring and aws-lc-rs, same work, same run, interleaved,
//! like `openssl speed`. For each operation, suite, size and backend it reports bytes/s and
//! envelopes/s for all three, the ratio against the faster reference, TSC and core cycles per
//! byte, and how close the operation comes to its backend's kernels alone (the kernel floor).

use crate::report::Machine;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sealpost_core::batch::{OpenJob, SealJob, VerifyJob};
use sealpost_core::engine::{Backend, Engine, KernelCost, core_cycles_per_tsc_tick, tsc_now};
use sealpost_core::{AeadKey, Suite};
use serde::Serialize;
use std::time::{Duration, Instant};

/// AAD bytes of a seal or open job: the delivery layer's `recipient_id ‖ seq`.
pub const DELIVERY_AAD: usize = 24;

/// Options of a speed run.
#[derive(Debug, Clone)]
pub struct SpeedOptions {
    /// Bytes authenticated per envelope: the whole envelope for verify, the plaintext otherwise.
    pub sizes: Vec<usize>,
    /// Envelopes per batch.
    pub batch: usize,
    /// Seconds of measurement per side and cell.
    pub seconds: f64,
    /// Operations to run.
    pub ops: Vec<Op>,
    /// Suites to run.
    pub suites: Vec<Suite>,
    /// Our engines to measure (ChaCha20-Poly1305; AES-256-GCM always goes through ring).
    pub engines: Vec<Engine>,
}

/// An engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Deposit-tag verification: empty plaintext, the envelope as AAD.
    Verify,
    /// Delivery sealing.
    Seal,
    /// Delivery opening.
    Open,
}

impl std::str::FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "verify" => Ok(Self::Verify),
            "seal" => Ok(Self::Seal),
            "open" => Ok(Self::Open),
            _ => Err(format!("unknown op {s:?}: expected verify, seal or open")),
        }
    }
}

impl Op {
    /// The AAD and message lengths of one job of `size` bytes.
    pub fn shape(self, size: usize) -> (usize, usize) {
        match self {
            Op::Verify => (size, 0),
            Op::Seal | Op::Open => (DELIVERY_AAD, size),
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Row {
    /// Operation.
    pub op: Op,
    /// Suite name.
    pub suite: String,
    /// Bytes authenticated per envelope.
    pub size: usize,
    /// Envelopes per batch.
    pub batch: usize,
    /// Our backend (`ring-per-envelope` for AES-256-GCM, which the engine hands to ring).
    pub backend: String,
    /// Ours.
    pub bytes_per_s: f64,
    /// ring, same work.
    pub ring_bytes_per_s: f64,
    /// aws-lc-rs, same work.
    pub aws_lc_bytes_per_s: f64,
    /// bytes_per_s / the faster of ring and aws-lc-rs.
    pub ratio: f64,
    /// bytes_per_s / ring_bytes_per_s.
    pub ratio_ring: f64,
    /// bytes_per_s / aws_lc_bytes_per_s.
    pub ratio_aws_lc: f64,
    /// Ours.
    pub envelopes_per_s: f64,
    /// ring.
    pub ring_envelopes_per_s: f64,
    /// aws-lc-rs.
    pub aws_lc_envelopes_per_s: f64,
    /// Ours, TSC ticks per byte (the TSC ticks at a fixed rate, not the core clock).
    pub tsc_cycles_per_byte: Option<f64>,
    /// ring, TSC ticks per byte.
    pub ring_tsc_cycles_per_byte: Option<f64>,
    /// aws-lc-rs, TSC ticks per byte.
    pub aws_lc_tsc_cycles_per_byte: Option<f64>,
    /// Ours, core cycles per byte (TSC ticks times the measured core cycles per tick).
    pub core_cycles_per_byte: Option<f64>,
    /// ring, core cycles per byte.
    pub ring_core_cycles_per_byte: Option<f64>,
    /// aws-lc-rs, core cycles per byte.
    pub aws_lc_core_cycles_per_byte: Option<f64>,
    /// Ours, core cycles per envelope.
    pub core_cycles_per_envelope: Option<f64>,
    /// What this backend's kernels alone take for one envelope's blocks, in core cycles.
    pub floor_core_cycles_per_envelope: Option<f64>,
    /// floor / ours: the fraction of the kernel floor reached (1 = nothing but kernels).
    pub floor_fraction: Option<f64>,
    /// Ours minus the floor: core cycles per envelope spent outside the kernels.
    pub overhead_core_cycles_per_envelope: Option<f64>,
}

/// A backend's kernel floor as measured in this run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Kernels {
    /// The backend.
    pub backend: String,
    /// Core cycles per 64-byte ChaCha20 block per lane (transposed and XORed in place).
    pub chacha_core_cycles_per_block: Option<f64>,
    /// Core cycles per 16-byte Poly1305 block per lane.
    pub poly_core_cycles_per_block: Option<f64>,
    /// Core cycles per lane for ChaCha20 block 0 made into the Poly1305 key.
    pub key_core_cycles_per_lane: Option<f64>,
    /// Core cycles per lane for finishing and comparing a tag.
    pub finish_core_cycles_per_lane: Option<f64>,
    /// The same two as core cycles per byte.
    pub chacha_core_cycles_per_byte: Option<f64>,
    /// Poly1305, core cycles per byte.
    pub poly_core_cycles_per_byte: Option<f64>,
}

impl Kernels {
    /// `engine`'s kernel costs in core cycles, from TSC ticks and the core cycles per tick.
    pub fn new(engine: &Engine, cost: Option<KernelCost>, clock: Option<f64>) -> Self {
        let c = |t: Option<f64>| t.zip(clock).map(|(t, c)| t * c);
        let chacha = c(cost.map(|k| k.chacha_tsc_per_block));
        let poly = c(cost.map(|k| k.poly_tsc_per_block));
        Kernels {
            backend: engine.describe().to_owned(),
            chacha_core_cycles_per_block: chacha,
            poly_core_cycles_per_block: poly,
            key_core_cycles_per_lane: c(cost.map(|k| k.key_tsc_per_lane)),
            finish_core_cycles_per_lane: c(cost.map(|k| k.finish_tsc_per_lane)),
            chacha_core_cycles_per_byte: chacha.map(|x| x / 64.0),
            poly_core_cycles_per_byte: poly.map(|x| x / 16.0),
        }
    }
}

/// A whole run: the machine, its clock, the kernels, and every cell.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SpeedReport {
    /// Where it ran.
    pub machine: Machine,
    /// CPU flags that decide the backends.
    pub cpu_flags: Vec<String>,
    /// Core clock cycles per TSC tick (median of repeated measurements at the start).
    pub core_cycles_per_tsc_tick: Option<f64>,
    /// Seconds since the Unix epoch when the run began.
    pub started_unix: u64,
    /// The kernel floors.
    pub kernels: Vec<Kernels>,
    /// The cells.
    pub rows: Vec<Row>,
    /// The command line, as typed (`None` when run from code).
    #[serde(default)]
    pub command: Option<String>,
}

/// The inputs of one cell, owned (jobs borrow from them): per envelope a random key (also
/// prepared for ring and aws-lc-rs), nonce, AAD and message, and ring's tag and sealed output.
pub(crate) struct Data {
    pub(crate) keys: Vec<AeadKey>,
    ring_keys: Vec<ring::aead::LessSafeKey>,
    aws_keys: Vec<aws_lc_rs::aead::LessSafeKey>,
    pub(crate) nonces: Vec<[u8; 12]>,
    pub(crate) aads: Vec<Vec<u8>>,
    pub(crate) msgs: Vec<Vec<u8>>,
    pub(crate) tags: Vec<[u8; 16]>,
    /// Ciphertext followed by the tag.
    pub(crate) sealed: Vec<Vec<u8>>,
}

pub(crate) fn make_data(op: Op, suite: Suite, size: usize, batch: usize, rng: &mut StdRng) -> Data {
    let mut d = Data {
        keys: Vec::new(),
        ring_keys: Vec::new(),
        aws_keys: Vec::new(),
        nonces: Vec::new(),
        aads: Vec::new(),
        msgs: Vec::new(),
        tags: Vec::new(),
        sealed: Vec::new(),
    };
    let (ring_alg, aws_alg) = match suite {
        Suite::ChaCha20Poly1305 => (
            &ring::aead::CHACHA20_POLY1305,
            &aws_lc_rs::aead::CHACHA20_POLY1305,
        ),
        Suite::Aes256Gcm => (&ring::aead::AES_256_GCM, &aws_lc_rs::aead::AES_256_GCM),
    };
    for _ in 0..batch {
        let k: [u8; 32] = rng.random();
        let rk = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(ring_alg, &k).expect("32-byte key"),
        );
        let ak = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(aws_alg, &k).expect("32-byte key"),
        );
        let nonce: [u8; 12] = rng.random();
        let (mut aad, mut msg) = match op {
            Op::Verify => (vec![0u8; size], Vec::new()),
            Op::Seal | Op::Open => (vec![0u8; DELIVERY_AAD], vec![0u8; size]),
        };
        rng.fill_bytes(&mut aad);
        rng.fill_bytes(&mut msg);
        let mut sealed = msg.clone();
        rk.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(&aad),
            &mut sealed,
        )
        .expect("seal");
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&sealed[sealed.len() - 16..]);
        d.keys.push(AeadKey::new(suite, k));
        d.ring_keys.push(rk);
        d.aws_keys.push(ak);
        d.nonces.push(nonce);
        d.aads.push(aad);
        d.msgs.push(msg);
        d.tags.push(tag);
        d.sealed.push(sealed);
    }
    d
}

fn ours(engine: &Engine, op: Op, d: &Data, outs: &mut [Vec<u8>], results: &mut [bool]) {
    match op {
        Op::Verify => {
            let jobs: Vec<VerifyJob> = (0..d.keys.len())
                .map(|i| VerifyJob {
                    key: &d.keys[i],
                    nonce: &d.nonces[i],
                    aad: &d.aads[i],
                    tag: &d.tags[i],
                })
                .collect();
            engine.verify(&jobs, results).expect("batch shapes");
        }
        Op::Seal => {
            let mut jobs: Vec<SealJob> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, o)| SealJob {
                    key: &d.keys[i],
                    nonce: d.nonces[i],
                    aad: &d.aads[i],
                    plaintext: &d.msgs[i],
                    out: o,
                })
                .collect();
            engine.seal(&mut jobs).expect("batch shapes");
        }
        Op::Open => {
            let mut jobs: Vec<OpenJob> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, o)| OpenJob {
                    key: &d.keys[i],
                    nonce: d.nonces[i],
                    aad: &d.aads[i],
                    ciphertext: &d.sealed[i],
                    out: &mut o[..d.msgs[i].len()],
                })
                .collect();
            engine.open(&mut jobs, results).expect("batch shapes");
        }
    }
}

/// The same work through ring or aws-lc-rs, whose AEAD APIs are the same shape.
macro_rules! reference {
    ($name:ident, $m:ident, $keys:ident, $open:expr) => {
        fn $name(op: Op, d: &Data, outs: &mut [Vec<u8>], results: &mut [bool]) {
            use $m::aead::{Aad, Nonce};
            for i in 0..d.keys.len() {
                let nonce = Nonce::assume_unique_for_key(d.nonces[i]);
                let k = &d.$keys[i];
                match op {
                    Op::Verify => {
                        let mut tag = d.tags[i];
                        results[i] = k
                            .open_in_place(nonce, Aad::from(&d.aads[i]), &mut tag)
                            .is_ok();
                    }
                    Op::Seal => {
                        let n = d.msgs[i].len();
                        let (body, tag_out) = outs[i].split_at_mut(n);
                        body.copy_from_slice(&d.msgs[i]);
                        let tag = k
                            .seal_in_place_separate_tag(nonce, Aad::from(&d.aads[i]), body)
                            .expect("seal");
                        tag_out.copy_from_slice(tag.as_ref());
                    }
                    Op::Open => {
                        let n = d.msgs[i].len();
                        let body = &mut outs[i][..n];
                        body.copy_from_slice(&d.sealed[i][..n]);
                        let tag = &d.sealed[i][n..];
                        results[i] = $open(k, nonce, Aad::from(&d.aads[i][..]), tag, body);
                    }
                }
            }
        }
    };
}

reference!(
    ring_side,
    ring,
    ring_keys,
    |k: &ring::aead::LessSafeKey, nonce, aad, tag: &[u8], body: &mut [u8]| {
        let tag = ring::aead::Tag::try_from(tag).expect("16 bytes");
        k.open_in_place_separate_tag(nonce, aad, tag, body, 0..)
            .is_ok()
    }
);
reference!(
    aws_lc_side,
    aws_lc_rs,
    aws_keys,
    |k: &aws_lc_rs::aead::LessSafeKey, nonce, aad, tag: &[u8], body: &mut [u8]| {
        k.open_in_place_separate_tag(nonce, aad, tag, body).is_ok()
    }
);

/// Calls, elapsed time and TSC ticks accumulated for one side of a cell.
#[derive(Default, Clone, Copy)]
struct Tally {
    calls: u64,
    time: Duration,
    tsc: u64,
}

impl Tally {
    /// Runs `f` repeatedly for about `slice`.
    fn slice(&mut self, slice: Duration, mut f: impl FnMut()) {
        let t0 = Instant::now();
        let c0 = tsc_now().unwrap_or(0);
        let mut n = 0;
        while n == 0 || t0.elapsed() < slice {
            f();
            n += 1;
        }
        self.calls += n;
        self.time += t0.elapsed();
        self.tsc += tsc_now().unwrap_or(0).wrapping_sub(c0);
    }

    fn bytes_per_s(&self, per_call: f64) -> f64 {
        self.calls as f64 * per_call / self.time.as_secs_f64()
    }

    fn tsc_per_byte(&self, per_call: f64) -> Option<f64> {
        tsc_now().map(|_| self.tsc as f64 / (self.calls as f64 * per_call))
    }
}

/// Measures one cell: ours, ring and aws-lc-rs take turns in short slices until each has had
/// `seconds`.
fn measure(
    engine: &Engine,
    op: Op,
    suite: Suite,
    size: usize,
    opts: &SpeedOptions,
    (clock, floor): (Option<f64>, Option<KernelCost>),
    rng: &mut StdRng,
) -> Row {
    let d = make_data(op, suite, size, opts.batch, rng);
    let mut outs: Vec<Vec<u8>> = d.msgs.iter().map(|m| vec![0u8; m.len() + 16]).collect();
    let mut results = vec![false; opts.batch];
    // Correctness before speed: every side must accept everything and agree on the output.
    for side in 0..3 {
        results.fill(false);
        match side {
            0 => ours(engine, op, &d, &mut outs, &mut results),
            1 => ring_side(op, &d, &mut outs, &mut results),
            _ => aws_lc_side(op, &d, &mut outs, &mut results),
        }
        assert!(
            op == Op::Seal || results.iter().all(|r| *r),
            "side {side} rejected a valid envelope"
        );
        if op == Op::Seal {
            assert!(
                outs.iter().zip(&d.sealed).all(|(o, s)| o == s),
                "side {side} sealed differently"
            );
        }
    }
    let slice = Duration::from_millis(20);
    let target = Duration::from_secs_f64(opts.seconds);
    let (mut a, mut r, mut w) = (Tally::default(), Tally::default(), Tally::default());
    while a.time < target || r.time < target || w.time < target {
        a.slice(slice, || ours(engine, op, &d, &mut outs, &mut results));
        r.slice(slice, || ring_side(op, &d, &mut outs, &mut results));
        w.slice(slice, || aws_lc_side(op, &d, &mut outs, &mut results));
    }
    let per_call = (size * opts.batch) as f64;
    let (bps, rbps, wbps) = (
        a.bytes_per_s(per_call),
        r.bytes_per_s(per_call),
        w.bytes_per_s(per_call),
    );
    let core = |t: Option<f64>| t.zip(clock).map(|(t, c)| t * c);
    let tsc = a.tsc_per_byte(per_call);
    let core_per_env = core(tsc).map(|c| c * size as f64);
    let floor = floor
        .filter(|_| suite == Suite::ChaCha20Poly1305)
        .and_then(|k| {
            let (aad, ct) = op.shape(size);
            core(Some(k.job_tsc(aad, ct)))
        });
    Row {
        op,
        suite: suite.name().to_owned(),
        size,
        batch: opts.batch,
        backend: if suite == Suite::Aes256Gcm {
            "ring-per-envelope".to_owned()
        } else {
            engine.describe().to_owned()
        },
        bytes_per_s: bps,
        ring_bytes_per_s: rbps,
        aws_lc_bytes_per_s: wbps,
        ratio: bps / rbps.max(wbps),
        ratio_ring: bps / rbps,
        ratio_aws_lc: bps / wbps,
        envelopes_per_s: bps / size.max(1) as f64,
        ring_envelopes_per_s: rbps / size.max(1) as f64,
        aws_lc_envelopes_per_s: wbps / size.max(1) as f64,
        tsc_cycles_per_byte: tsc,
        ring_tsc_cycles_per_byte: r.tsc_per_byte(per_call),
        aws_lc_tsc_cycles_per_byte: w.tsc_per_byte(per_call),
        core_cycles_per_byte: core(tsc),
        ring_core_cycles_per_byte: core(r.tsc_per_byte(per_call)),
        aws_lc_core_cycles_per_byte: core(w.tsc_per_byte(per_call)),
        core_cycles_per_envelope: core_per_env,
        floor_core_cycles_per_envelope: floor,
        floor_fraction: floor.zip(core_per_env).map(|(f, c)| f / c),
        overhead_core_cycles_per_envelope: floor.zip(core_per_env).map(|(f, c)| c - f),
    }
}

/// Core cycles per TSC tick: the median of seven measurements.
pub fn clock_ratio() -> Option<f64> {
    let mut v: Vec<f64> = (0..7).filter_map(|_| core_cycles_per_tsc_tick()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The CPU flags that decide which backends run.
pub fn cpu_flags() -> Vec<String> {
    let mut flags: Vec<String> = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default();
    flags.retain(|f| f.starts_with("avx") || f == "vaes" || f == "vpclmulqdq");
    flags.sort();
    flags
}

/// Runs the whole matrix, calling `each` with every row as it is measured.
pub fn run(opts: &SpeedOptions, mut each: impl FnMut(&Row)) -> SpeedReport {
    let mut rng = StdRng::seed_from_u64(0x5ea1_905d);
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = clock_ratio();
    let floors: Vec<(Engine, Option<KernelCost>)> = opts
        .engines
        .iter()
        .map(|e| (*e, e.kernel_cost(Duration::from_millis(200))))
        .collect();
    let kernels = floors
        .iter()
        .map(|(e, k)| Kernels::new(e, *k, clock))
        .collect();
    let mut rows = Vec::new();
    for &op in &opts.ops {
        for &suite in &opts.suites {
            for &size in &opts.sizes {
                let engines: Vec<(Engine, Option<KernelCost>)> = match suite {
                    Suite::ChaCha20Poly1305 => floors.clone(),
                    // AES-256-GCM always goes to ring, whatever the backend: one row.
                    Suite::Aes256Gcm => vec![(Engine::ring(), None)],
                };
                for (e, floor) in engines {
                    let row = measure(&e, op, suite, size, opts, (clock, floor), &mut rng);
                    each(&row);
                    rows.push(row);
                }
            }
        }
    }
    SpeedReport {
        command: None,
        machine: Machine::this(),
        cpu_flags: cpu_flags(),
        core_cycles_per_tsc_tick: clock,
        started_unix,
        kernels,
        rows,
    }
}

/// The engines `speed` measures by default: every backend of ours this machine runs natively,
/// best first (not ring, which is the reference, nor the AVX-512 emulation, which is for tests).
pub fn default_engines() -> Vec<Engine> {
    let mut v: Vec<Engine> = [Backend::Avx512, Backend::Avx2, Backend::Portable]
        .into_iter()
        .filter_map(|b| Engine::new(b).ok())
        .collect();
    v.dedup();
    v
}

/// Prints the table header.
pub fn print_header() {
    println!(
        "{:<6} {:<16} {:>6} {:<16} {:>10} {:>10} {:>10} {:>6} {:>6} {:>6} {:>7} {:>6}",
        "op",
        "suite",
        "size",
        "backend",
        "ours MB/s",
        "ring MB/s",
        "awslc MB/s",
        "ratio",
        "c/B",
        "ring",
        "c/env",
        "floor"
    );
}

/// Prints one row.
pub fn print_row(r: &Row) {
    let f = |c: Option<f64>, p: usize| c.map_or("-".to_owned(), |c| format!("{c:.p$}"));
    println!(
        "{:<6} {:<16} {:>6} {:<16} {:>10.1} {:>10.1} {:>10.1} {:>6.2} {:>6} {:>6} {:>7} {:>6}",
        format!("{:?}", r.op).to_lowercase(),
        r.suite,
        r.size,
        r.backend,
        r.bytes_per_s / 1e6,
        r.ring_bytes_per_s / 1e6,
        r.aws_lc_bytes_per_s / 1e6,
        r.ratio,
        f(r.core_cycles_per_byte, 3),
        f(r.ring_core_cycles_per_byte, 3),
        f(r.core_cycles_per_envelope, 0),
        f(r.floor_fraction, 2),
    );
}
