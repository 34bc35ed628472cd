//! `ct-check`: a dudect-style timing test of the engine (Reparaz, Balasch, Verbauwhede,
//! "Dude, is my code constant time?", 2017). Two classes of inputs — one fixed, one random —
//! are timed in random order with the TSC, the slowest tail is cropped, and Welch's t-test
//! compares the two timing distributions. |t| above 4.5 means the timings tell the classes
//! apart, i.e. a leak; below it, none was detected at this sample size (evidence, not proof).

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sealpost_core::batch::{SealJob, VerifyJob};
use sealpost_core::engine::{Backend, Engine, tsc_now};
use sealpost_core::{AeadKey, Suite};
use serde::Serialize;

/// The |t| threshold dudect uses.
pub const THRESHOLD: f64 = 4.5;

/// One backend and operation's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CtResult {
    /// Backend.
    pub backend: &'static str,
    /// `verify` (fixed key and valid tag vs random key and random tag) or `seal` (fixed vs
    /// random key and plaintext).
    pub op: &'static str,
    /// Samples per class after cropping.
    pub samples: usize,
    /// Welch's t statistic.
    pub t: f64,
    /// |t| < THRESHOLD.
    pub pass: bool,
}

struct Inputs {
    keys: Vec<AeadKey>,
    nonces: Vec<[u8; 12]>,
    data: Vec<Vec<u8>>,
    tags: Vec<[u8; 16]>,
}

fn inputs(rng: &mut StdRng, fixed: bool, batch: usize, size: usize, valid_tags: bool) -> Inputs {
    let mut inp = Inputs {
        keys: vec![],
        nonces: vec![],
        data: vec![],
        tags: vec![],
    };
    for _ in 0..batch {
        let key: [u8; 32] = if fixed { [0x11; 32] } else { rng.random() };
        let mut data = vec![0x22u8; size];
        if !fixed {
            rng.fill_bytes(&mut data);
        }
        let nonce = [0x33u8; 12];
        let k = AeadKey::new(Suite::ChaCha20Poly1305, key);
        let tag = if valid_tags {
            let mut t = [0u8; 16];
            let mut jobs = [SealJob {
                key: &k,
                nonce,
                aad: &data,
                plaintext: &[],
                out: &mut t,
            }];
            Engine::new(Backend::Portable)
                .expect("portable")
                .seal(&mut jobs)
                .expect("shapes");
            t
        } else {
            rng.random()
        };
        inp.keys.push(k);
        inp.nonces.push(nonce);
        inp.data.push(data);
        inp.tags.push(tag);
    }
    inp
}

fn welch(a: &[f64], b: &[f64]) -> f64 {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64], m: f64| {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0)
    };
    let (ma, mb) = (mean(a), mean(b));
    let (va, vb) = (var(a, ma), var(b, mb));
    (ma - mb) / (va / a.len() as f64 + vb / b.len() as f64).sqrt()
}

/// Keeps the samples below the `p` quantile of the pooled distribution (drops interrupts and
/// other noise far in the tail, as dudect does).
fn crop(a: &mut Vec<f64>, b: &mut Vec<f64>, p: f64) {
    let mut all: Vec<f64> = a.iter().chain(b.iter()).copied().collect();
    all.sort_by(|x, y| x.total_cmp(y));
    let cut = all[((all.len() as f64 - 1.0) * p) as usize];
    a.retain(|x| *x <= cut);
    b.retain(|x| *x <= cut);
}

/// Runs the test for every supported backend, `samples` timings per class.
pub fn run(samples: usize) -> Vec<CtResult> {
    let mut out = Vec::new();
    if tsc_now().is_none() {
        return out;
    }
    let mut rng = StdRng::seed_from_u64(0xdd_0c7);
    const BATCH: usize = 8;
    const SIZE: usize = 256;
    // Our own backends on this CPU's instructions (the emulation's timing says nothing about
    // the hardware, and ring is not ours to check).
    for b in Backend::supported()
        .into_iter()
        .filter(|b| matches!(b, Backend::Portable) || b.is_simd())
    {
        let Ok(e) = Engine::new(b) else { continue };
        for op in ["verify", "seal"] {
            let fixed = inputs(&mut rng, true, BATCH, SIZE, true);
            let randoms: Vec<Inputs> = (0..64)
                .map(|_| inputs(&mut rng, false, BATCH, SIZE, false))
                .collect();
            let mut times = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
            let mut outs = vec![vec![0u8; SIZE + 16]; BATCH];
            let mut ok = vec![false; BATCH];
            // Both classes are copied into the same working buffers before each measurement, so
            // that caches treat them alike and only the values differ.
            let mut work = inputs(&mut rng, true, BATCH, SIZE, true);
            let mut i = 0usize;
            while times[0].len() < samples || times[1].len() < samples {
                let class = rng.random_range(0..2usize);
                let src = if class == 0 {
                    &fixed
                } else {
                    &randoms[i % randoms.len()]
                };
                i += 1;
                for j in 0..BATCH {
                    work.keys[j] = src.keys[j].clone();
                    work.data[j].copy_from_slice(&src.data[j]);
                    work.tags[j] = src.tags[j];
                }
                let inp = &work;
                let t0 = tsc_now().unwrap_or(0);
                match op {
                    "verify" => {
                        let jobs: Vec<VerifyJob> = (0..BATCH)
                            .map(|j| VerifyJob {
                                key: &inp.keys[j],
                                nonce: &inp.nonces[j],
                                aad: &inp.data[j],
                                tag: &inp.tags[j],
                            })
                            .collect();
                        e.verify(&jobs, &mut ok).expect("shapes");
                    }
                    _ => {
                        let mut jobs: Vec<SealJob> = outs
                            .iter_mut()
                            .enumerate()
                            .map(|(j, o)| SealJob {
                                key: &inp.keys[j],
                                nonce: inp.nonces[j],
                                aad: &[],
                                plaintext: &inp.data[j],
                                out: o,
                            })
                            .collect();
                        e.seal(&mut jobs).expect("shapes");
                    }
                }
                let dt = tsc_now().unwrap_or(0).wrapping_sub(t0) as f64;
                if times[class].len() < samples {
                    times[class].push(dt);
                }
            }
            let [mut a, mut c] = times;
            crop(&mut a, &mut c, 0.90);
            let t = welch(&a, &c);
            out.push(CtResult {
                backend: b.name(),
                op,
                samples: a.len().min(c.len()),
                t,
                pass: t.abs() < THRESHOLD,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_separates_shifted_distributions_and_not_equal_ones() {
        let a: Vec<f64> = (0..1000).map(|i| (i % 10) as f64).collect();
        let b: Vec<f64> = (0..1000).map(|i| (i % 10) as f64 + 3.0).collect();
        // Means 3 apart, variance 8.25 each, 1000 samples: t = 3 / sqrt(2 · 8.25 / 1000) ≈ 23.4.
        let t = welch(&a, &b);
        assert!((t.abs() - 23.35).abs() < 0.1, "{t}");
        assert!(welch(&a, &a.clone()).abs() < 1e-9);
    }
}
