//! `speed`: the crypto engine against ring, same work, same run, interleaved, like
//! `openssl speed`. For each operation, suite, size and backend it reports bytes/s and
//! envelopes/s for both, the ratio, and TSC cycles per byte.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use sealpost_core::batch::{OpenJob, SealJob, VerifyJob};
use sealpost_core::engine::{Backend, Engine, tsc_now};
use sealpost_core::{AeadKey, Suite};
use serde::Serialize;
use std::time::{Duration, Instant};

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
}

/// An engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Operation.
    pub op: Op,
    /// Suite name.
    pub suite: &'static str,
    /// Bytes authenticated per envelope.
    pub size: usize,
    /// Envelopes per batch.
    pub batch: usize,
    /// Our backend (`ring-per-envelope` for AES-256-GCM, which the engine hands to ring;
    /// `avx2+ring` for the tuned engine the relay uses).
    pub backend: String,
    /// Ours.
    pub bytes_per_s: f64,
    /// ring, same work.
    pub ring_bytes_per_s: f64,
    /// bytes_per_s / ring_bytes_per_s.
    pub ratio: f64,
    /// Ours.
    pub envelopes_per_s: f64,
    /// ring.
    pub ring_envelopes_per_s: f64,
    /// Ours, TSC cycles per byte (the TSC ticks at a fixed rate, not the core clock).
    pub tsc_cycles_per_byte: Option<f64>,
    /// ring, TSC cycles per byte.
    pub ring_tsc_cycles_per_byte: Option<f64>,
}

struct Data {
    keys: Vec<AeadKey>,
    ring_keys: Vec<LessSafeKey>,
    nonces: Vec<[u8; 12]>,
    aads: Vec<Vec<u8>>,
    msgs: Vec<Vec<u8>>,
    tags: Vec<[u8; 16]>,
    sealed: Vec<Vec<u8>>,
}

fn ring_alg(s: Suite) -> &'static ring::aead::Algorithm {
    match s {
        Suite::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
    }
}

fn make_data(op: Op, suite: Suite, size: usize, batch: usize, rng: &mut StdRng) -> Data {
    let mut d = Data {
        keys: Vec::new(),
        ring_keys: Vec::new(),
        nonces: Vec::new(),
        aads: Vec::new(),
        msgs: Vec::new(),
        tags: Vec::new(),
        sealed: Vec::new(),
    };
    for _ in 0..batch {
        let k: [u8; 32] = rng.random();
        let rk = LessSafeKey::new(UnboundKey::new(ring_alg(suite), &k).expect("32-byte key"));
        let nonce: [u8; 12] = rng.random();
        let (aad, msg) = match op {
            Op::Verify => (vec![0u8; size], Vec::new()),
            Op::Seal | Op::Open => (vec![0u8; 24], vec![0u8; size]),
        };
        let mut aad = aad;
        rng.fill_bytes(&mut aad);
        let mut msg = msg;
        rng.fill_bytes(&mut msg);
        let mut sealed = msg.clone();
        rk.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut sealed,
        )
        .expect("seal");
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&sealed[sealed.len() - 16..]);
        d.keys.push(AeadKey::new(suite, k));
        d.ring_keys.push(rk);
        d.nonces.push(nonce);
        d.aads.push(aad);
        d.msgs.push(msg);
        d.tags.push(tag);
        d.sealed.push(sealed);
    }
    d
}

/// Runs `f` repeatedly for about `slice`, returning (calls, elapsed, tsc ticks).
fn time_slice(slice: Duration, mut f: impl FnMut()) -> (u64, Duration, u64) {
    let t0 = Instant::now();
    let c0 = tsc_now().unwrap_or(0);
    let mut n = 0;
    while t0.elapsed() < slice {
        f();
        n += 1;
    }
    (n, t0.elapsed(), tsc_now().unwrap_or(0).wrapping_sub(c0))
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

fn theirs(op: Op, d: &Data, outs: &mut [Vec<u8>], results: &mut [bool]) {
    for i in 0..d.keys.len() {
        let nonce = Nonce::assume_unique_for_key(d.nonces[i]);
        let k = &d.ring_keys[i];
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
                let tag = ring::aead::Tag::try_from(&d.sealed[i][n..]).expect("16 bytes");
                results[i] = k
                    .open_in_place_separate_tag(nonce, Aad::from(&d.aads[i]), tag, body, 0..)
                    .is_ok();
            }
        }
    }
}

/// Measures one cell: ours and ring alternate in short slices until each has `seconds`.
fn measure(
    engine: Option<&Engine>,
    op: Op,
    suite: Suite,
    size: usize,
    opts: &SpeedOptions,
    rng: &mut StdRng,
) -> Row {
    let d = make_data(op, suite, size, opts.batch, rng);
    let mut outs: Vec<Vec<u8>> = d.msgs.iter().map(|m| vec![0u8; m.len() + 16]).collect();
    let mut results = vec![false; opts.batch];
    let fallback = Engine::active();
    let engine = engine.unwrap_or(&fallback);
    // Correctness before speed: both sides must accept everything.
    ours(engine, op, &d, &mut outs, &mut results);
    assert!(
        op == Op::Seal || results.iter().all(|r| *r),
        "engine rejected a valid envelope"
    );
    let slice = Duration::from_millis(20);
    let target = Duration::from_secs_f64(opts.seconds);
    let (mut a_calls, mut a_time, mut a_tsc) = (0u64, Duration::ZERO, 0u64);
    let (mut b_calls, mut b_time, mut b_tsc) = (0u64, Duration::ZERO, 0u64);
    while a_time < target || b_time < target {
        let (n, t, c) = time_slice(slice, || ours(engine, op, &d, &mut outs, &mut results));
        a_calls += n;
        a_time += t;
        a_tsc += c;
        let (n, t, c) = time_slice(slice, || theirs(op, &d, &mut outs, &mut results));
        b_calls += n;
        b_time += t;
        b_tsc += c;
    }
    let per_call = (size * opts.batch) as f64;
    let bps = a_calls as f64 * per_call / a_time.as_secs_f64();
    let rbps = b_calls as f64 * per_call / b_time.as_secs_f64();
    let has_tsc = tsc_now().is_some();
    Row {
        op,
        suite: suite.name(),
        size,
        batch: opts.batch,
        backend: if suite == Suite::Aes256Gcm {
            "ring-per-envelope".to_owned()
        } else {
            engine.describe()
        },
        bytes_per_s: bps,
        ring_bytes_per_s: rbps,
        ratio: bps / rbps,
        envelopes_per_s: bps / size.max(1) as f64,
        ring_envelopes_per_s: rbps / size.max(1) as f64,
        tsc_cycles_per_byte: has_tsc.then(|| a_tsc as f64 / (a_calls as f64 * per_call)),
        ring_tsc_cycles_per_byte: has_tsc.then(|| b_tsc as f64 / (b_calls as f64 * per_call)),
    }
}

/// Runs the whole matrix, calling `each` with every row as it is measured.
pub fn run(opts: &SpeedOptions, mut each: impl FnMut(&Row)) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(0x5ea1_905d);
    let mut rows = Vec::new();
    // SEALPOST_BACKEND narrows the run to one backend; otherwise every supported one runs.
    let chosen = match sealpost_core::engine::backend_from_env() {
        Ok(Some(b)) => vec![b],
        _ => Backend::supported(),
    };
    let mut backends: Vec<Engine> = chosen.iter().filter_map(|b| Engine::new(*b).ok()).collect();
    // Also the tuned engine the relay runs with (the best backend plus ring where ring wins).
    if let Ok(t) = Engine::tuned(Backend::best()) {
        if t.uses_ring() && chosen.contains(&Backend::best()) {
            backends.push(t);
        }
    }
    for &op in &opts.ops {
        for &suite in &opts.suites {
            for &size in &opts.sizes {
                let engines: Vec<Option<&Engine>> = match suite {
                    Suite::ChaCha20Poly1305 => backends.iter().map(Some).collect(),
                    Suite::Aes256Gcm => vec![None],
                };
                for e in engines {
                    let row = measure(e, op, suite, size, opts, &mut rng);
                    each(&row);
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Prints the table header.
pub fn print_header() {
    println!(
        "{:<6} {:<16} {:>6} {:<18} {:>11} {:>11} {:>7} {:>9} {:>9}",
        "op", "suite", "size", "backend", "ours MB/s", "ring MB/s", "ratio", "ours c/B", "ring c/B"
    );
}

/// Prints one row.
pub fn print_row(r: &Row) {
    let cpb = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.3}"));
    println!(
        "{:<6} {:<16} {:>6} {:<18} {:>11.1} {:>11.1} {:>7.2} {:>9} {:>9}",
        format!("{:?}", r.op).to_lowercase(),
        r.suite,
        r.size,
        r.backend,
        r.bytes_per_s / 1e6,
        r.ring_bytes_per_s / 1e6,
        r.ratio,
        cpb(r.tsc_cycles_per_byte),
        cpb(r.ring_tsc_cycles_per_byte)
    );
}
