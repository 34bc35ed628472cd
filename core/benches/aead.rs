//! The batch engine (every backend this machine supports) against ring and RustCrypto's
//! chacha20poly1305, same work: batches of 64 envelopes, each with its own key.
//!
//! `cargo bench -p sealpost-core --bench aead`. The figures in docs/BENCHMARKS.md come from
//! `sealpost-loadtest speed`, which interleaves ours and ring in one run; these benches are the
//! criterion record of the same matrix, plus RustCrypto.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sealpost_core::batch::{SealJob, VerifyJob};
use sealpost_core::engine::{Backend, Engine};
use sealpost_core::{AeadKey, Suite};
use std::hint::black_box;

const BATCH: usize = 64;

/// Our backends on this CPU's own instructions (not ring, which is measured as itself, nor the
/// AVX-512 emulation, which is for tests).
fn ours() -> Vec<Backend> {
    Backend::supported()
        .into_iter()
        .filter(|b| matches!(b, Backend::Portable) || b.is_simd())
        .collect()
}
const SIZES: [usize; 4] = [64, 256, 1024, 16384];

struct Set {
    aead_keys: Vec<AeadKey>,
    ring_keys: Vec<LessSafeKey>,
    rc_keys: Vec<chacha20poly1305::ChaCha20Poly1305>,
    nonces: Vec<[u8; 12]>,
    data: Vec<Vec<u8>>,
    tags: Vec<[u8; 16]>,
}

fn set(size: usize) -> Set {
    let mut s = Set {
        aead_keys: vec![],
        ring_keys: vec![],
        rc_keys: vec![],
        nonces: vec![],
        data: vec![],
        tags: vec![],
    };
    for i in 0..BATCH {
        let mut k = [0u8; 32];
        k[0] = i as u8;
        k[31] = 0x5a;
        let nonce = [i as u8; 12];
        let data: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
        let rk = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).unwrap());
        let tag = rk
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&data),
                &mut [],
            )
            .unwrap();
        s.tags.push(tag.as_ref().try_into().unwrap());
        s.aead_keys.push(AeadKey::new(Suite::ChaCha20Poly1305, k));
        s.ring_keys.push(rk);
        s.rc_keys
            .push(chacha20poly1305::ChaCha20Poly1305::new(&k.into()));
        s.nonces.push(nonce);
        s.data.push(data);
    }
    s
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for size in SIZES {
        let s = set(size);
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        for b in ours() {
            let e = Engine::new(b).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("sealpost-{b}"), size),
                &s,
                |bch, s| {
                    let jobs: Vec<VerifyJob> = (0..BATCH)
                        .map(|i| VerifyJob {
                            key: &s.aead_keys[i],
                            nonce: &s.nonces[i],
                            aad: &s.data[i],
                            tag: &s.tags[i],
                        })
                        .collect();
                    let mut ok = vec![false; BATCH];
                    bch.iter(|| {
                        e.verify(black_box(&jobs), &mut ok).unwrap();
                        assert!(ok.iter().all(|x| *x));
                    })
                },
            );
        }
        g.bench_with_input(BenchmarkId::new("ring", size), &s, |bch, s| {
            bch.iter(|| {
                for i in 0..BATCH {
                    let mut tag = s.tags[i];
                    let r = s.ring_keys[i].open_in_place(
                        Nonce::assume_unique_for_key(s.nonces[i]),
                        Aad::from(&s.data[i]),
                        &mut tag,
                    );
                    assert!(r.is_ok());
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("rustcrypto", size), &s, |bch, s| {
            bch.iter(|| {
                for i in 0..BATCH {
                    let r = s.rc_keys[i].decrypt_in_place_detached(
                        (&s.nonces[i]).into(),
                        &s.data[i],
                        &mut [],
                        (&s.tags[i]).into(),
                    );
                    assert!(r.is_ok());
                }
            })
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for size in SIZES {
        let s = set(size);
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        let aad = [7u8; 24];
        for b in ours() {
            let e = Engine::new(b).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("sealpost-{b}"), size),
                &s,
                |bch, s| {
                    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size + 16]).collect();
                    bch.iter(|| {
                        let mut jobs: Vec<SealJob> = outs
                            .iter_mut()
                            .enumerate()
                            .map(|(i, o)| SealJob {
                                key: &s.aead_keys[i],
                                nonce: s.nonces[i],
                                aad: &aad,
                                plaintext: &s.data[i],
                                out: o,
                            })
                            .collect();
                        e.seal(black_box(&mut jobs)).unwrap();
                    })
                },
            );
        }
        g.bench_with_input(BenchmarkId::new("ring", size), &s, |bch, s| {
            let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
            bch.iter(|| {
                for (i, o) in outs.iter_mut().enumerate() {
                    o.copy_from_slice(&s.data[i]);
                    let t = s.ring_keys[i]
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(s.nonces[i]),
                            Aad::from(&aad),
                            o,
                        )
                        .unwrap();
                    let _ = black_box(t);
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("rustcrypto", size), &s, |bch, s| {
            let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
            bch.iter(|| {
                for (i, o) in outs.iter_mut().enumerate() {
                    o.copy_from_slice(&s.data[i]);
                    let t = s.rc_keys[i]
                        .encrypt_in_place_detached((&s.nonces[i]).into(), &aad, o)
                        .unwrap();
                    let _ = black_box(t);
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = verify, seal
}
criterion_main!(benches);
