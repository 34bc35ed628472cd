//! Differential tests of the batch engine against ring, on every backend this machine
//! supports: random keys, nonces, lengths and AAD lengths; every length 0..=1100 exhaustively;
//! batches of 1..300 mixing lengths and keys; corrupted tags, ciphertexts and AADs at random
//! positions. Accept/reject and every output byte must match ring's.

mod common;
use common::engines;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sealpost_core::batch::{OpenInPlaceJob, OpenJob, SealInPlaceJob, SealJob, VerifyJob};
use sealpost_core::engine::Engine;
use sealpost_core::{AeadKey, Suite};

fn ring_seal(key: &[u8; 32], nonce: [u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut buf = pt.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .unwrap();
    buf
}

fn ring_open(key: &[u8; 32], nonce: [u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut buf = ct.to_vec();
    let n = k
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

struct Job {
    key: AeadKey,
    nonce: [u8; 12],
    aad: Vec<u8>,
    pt: Vec<u8>,
}

fn random_job(rng: &mut StdRng, keys: &[[u8; 32]], len: usize, aad_len: usize) -> Job {
    let k = keys[rng.random_range(0..keys.len())];
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let mut aad = vec![0u8; aad_len];
    rng.fill_bytes(&mut aad);
    let mut pt = vec![0u8; len];
    rng.fill_bytes(&mut pt);
    Job {
        key: AeadKey::new(Suite::ChaCha20Poly1305, k),
        nonce,
        aad,
        pt,
    }
}

/// Seals, corrupts some, opens and verifies `jobs` on `e`, comparing everything with ring.
fn check_batch(e: &Engine, jobs: &[Job], rng: &mut StdRng, corrupt: usize) {
    let b = e.backend();
    // Seal.
    let mut sealed: Vec<Vec<u8>> = jobs.iter().map(|j| vec![0; j.pt.len() + 16]).collect();
    let mut sj: Vec<SealJob> = jobs
        .iter()
        .zip(sealed.iter_mut())
        .map(|(j, o)| SealJob {
            key: &j.key,
            nonce: j.nonce,
            aad: &j.aad,
            plaintext: &j.pt,
            out: o,
        })
        .collect();
    e.seal(&mut sj).unwrap();
    for (i, (j, s)) in jobs.iter().zip(&sealed).enumerate() {
        assert_eq!(
            s,
            &ring_seal(j.key.expose(), j.nonce, &j.aad, &j.pt),
            "{b}: seal job {i} len {}",
            j.pt.len()
        );
    }
    // The in-place variant gives the same bytes.
    let mut bufs: Vec<Vec<u8>> = jobs
        .iter()
        .map(|j| [&j.pt[..], &[0u8; 16]].concat())
        .collect();
    let mut ij: Vec<SealInPlaceJob> = jobs
        .iter()
        .zip(bufs.iter_mut())
        .map(|(j, buf)| SealInPlaceJob {
            key: &j.key,
            nonce: j.nonce,
            aad: &j.aad,
            buf,
        })
        .collect();
    e.seal_in_place(&mut ij).unwrap();
    assert!(bufs == sealed, "{b}: seal_in_place differs from seal");
    // Corrupt a few jobs: a ciphertext/tag bit, or an AAD bit.
    let mut aads: Vec<Vec<u8>> = jobs.iter().map(|j| j.aad.clone()).collect();
    for _ in 0..corrupt {
        let i = rng.random_range(0..jobs.len());
        if rng.random_bool(0.5) || aads[i].is_empty() {
            let p = rng.random_range(0..sealed[i].len());
            sealed[i][p] ^= 1 << rng.random_range(0..8);
        } else {
            let p = rng.random_range(0..aads[i].len());
            aads[i][p] ^= 1 << rng.random_range(0..8);
        }
    }
    // Open.
    let mut opened: Vec<Vec<u8>> = jobs.iter().map(|j| vec![0x55; j.pt.len()]).collect();
    let mut oj: Vec<OpenJob> = jobs
        .iter()
        .zip(&aads)
        .zip(&sealed)
        .zip(opened.iter_mut())
        .map(|(((j, a), s), o)| OpenJob {
            key: &j.key,
            nonce: j.nonce,
            aad: a,
            ciphertext: s,
            out: o,
        })
        .collect();
    let mut ok = vec![false; jobs.len()];
    e.open(&mut oj, &mut ok).unwrap();
    for i in 0..jobs.len() {
        let want = ring_open(jobs[i].key.expose(), jobs[i].nonce, &aads[i], &sealed[i]);
        assert_eq!(ok[i], want.is_some(), "{b}: open job {i} accept/reject");
        match want {
            Some(p) => assert_eq!(opened[i], p, "{b}: open job {i} bytes"),
            None => assert!(
                opened[i].iter().all(|x| *x == 0),
                "{b}: rejected job {i} output not zeroed"
            ),
        }
    }
    let mut bufs = sealed.clone();
    let mut ij: Vec<OpenInPlaceJob> = jobs
        .iter()
        .zip(&aads)
        .zip(bufs.iter_mut())
        .map(|((j, a), buf)| OpenInPlaceJob {
            key: &j.key,
            nonce: j.nonce,
            aad: a,
            buf,
        })
        .collect();
    let mut ok2 = vec![false; jobs.len()];
    e.open_in_place(&mut ij, &mut ok2).unwrap();
    assert_eq!(
        ok, ok2,
        "{b}: open_in_place accept/reject differs from open"
    );
    for i in 0..jobs.len() {
        assert_eq!(
            &bufs[i][..jobs[i].pt.len()],
            &opened[i][..],
            "{b}: open_in_place job {i} bytes"
        );
    }
    // Verify: the empty-plaintext shape with AAD = the job's AAD || plaintext.
    let vaads: Vec<Vec<u8>> = jobs
        .iter()
        .map(|j| [&j.aad[..], &j.pt[..]].concat())
        .collect();
    let mut vtags: Vec<[u8; 16]> = jobs
        .iter()
        .zip(&vaads)
        .map(|(j, a)| {
            ring_seal(j.key.expose(), j.nonce, a, &[])[..]
                .try_into()
                .unwrap()
        })
        .collect();
    let original = vtags.clone();
    for _ in 0..corrupt {
        let i = rng.random_range(0..jobs.len());
        vtags[i][rng.random_range(0..16)] ^= 1 << rng.random_range(0..8);
    }
    // Two flips of the same bit cancel, so compare with the original rather than counting.
    let flipped: Vec<bool> = vtags.iter().zip(&original).map(|(a, b)| a != b).collect();
    let vj: Vec<VerifyJob> = jobs
        .iter()
        .zip(&vaads)
        .zip(&vtags)
        .map(|((j, a), t)| VerifyJob {
            key: &j.key,
            nonce: &j.nonce,
            aad: a,
            tag: t,
        })
        .collect();
    let mut ok = vec![false; jobs.len()];
    e.verify(&vj, &mut ok).unwrap();
    for i in 0..jobs.len() {
        let want = ring_open(jobs[i].key.expose(), jobs[i].nonce, &vaads[i], &vtags[i]).is_some();
        assert_eq!(
            ok[i],
            want,
            "{b}: verify job {i} (aad {} bytes)",
            vaads[i].len()
        );
        assert_eq!(ok[i], !flipped[i], "{b}: verify job {i}");
    }
}

#[test]
fn every_length_up_to_1100_in_one_batch() {
    let mut rng = StdRng::seed_from_u64(1);
    let keys: Vec<[u8; 32]> = (0..7).map(|_| rng.random()).collect();
    let jobs: Vec<Job> = (0..=1100)
        .map(|len| {
            let aad = rng.random_range(0..80);
            random_job(&mut rng, &keys, len, aad)
        })
        .collect();
    for e in engines() {
        check_batch(&e, &jobs, &mut rng, 40);
    }
}

#[test]
fn every_aad_length_up_to_1100_with_empty_plaintext() {
    let mut rng = StdRng::seed_from_u64(2);
    let keys: Vec<[u8; 32]> = (0..3).map(|_| rng.random()).collect();
    let jobs: Vec<Job> = (0..=1100)
        .map(|aad| random_job(&mut rng, &keys, 0, aad))
        .collect();
    for e in engines() {
        check_batch(&e, &jobs, &mut rng, 25);
    }
}

#[test]
fn random_batches_of_mixed_shapes() {
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..60 {
        let size = if round < 10 {
            round + 1
        } else {
            rng.random_range(1..=300)
        };
        let nkeys = rng.random_range(1..=size.min(20));
        let keys: Vec<[u8; 32]> = (0..nkeys).map(|_| rng.random()).collect();
        let jobs: Vec<Job> = (0..size)
            .map(|_| {
                let len = match rng.random_range(0..10) {
                    0 => rng.random_range(0..=70_000),
                    1..=3 => rng.random_range(0..=64),
                    _ => rng.random_range(0..=4200),
                };
                let aad = rng.random_range(0..=300);
                random_job(&mut rng, &keys, len, aad)
            })
            .collect();
        let corrupt = rng.random_range(0..=size.min(8));
        for e in engines() {
            check_batch(&e, &jobs, &mut rng, corrupt);
        }
    }
}

#[test]
fn a_few_large_messages() {
    let mut rng = StdRng::seed_from_u64(4);
    let keys: Vec<[u8; 32]> = vec![rng.random()];
    let jobs: Vec<Job> = [65_536 + 36, 70_000, 1 << 20, 16 * 1024 + 7]
        .iter()
        .map(|&len| random_job(&mut rng, &keys, len, 24))
        .collect();
    for e in engines() {
        check_batch(&e, &jobs, &mut rng, 2);
    }
}

#[test]
fn mixed_suites_in_one_batch() {
    let mut rng = StdRng::seed_from_u64(5);
    let chacha = AeadKey::new(Suite::ChaCha20Poly1305, rng.random());
    let aes = AeadKey::new(Suite::Aes256Gcm, rng.random());
    let msgs: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 31]).collect();
    for e in engines() {
        let keys = |i: usize| if i.is_multiple_of(3) { &aes } else { &chacha };
        let mut outs: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0; m.len() + 16]).collect();
        let mut jobs: Vec<SealJob> = msgs
            .iter()
            .zip(outs.iter_mut())
            .enumerate()
            .map(|(i, (m, o))| SealJob {
                key: keys(i),
                nonce: [i as u8; 12],
                aad: b"ad",
                plaintext: m,
                out: o,
            })
            .collect();
        e.seal(&mut jobs).unwrap();
        for (i, o) in outs.iter().enumerate() {
            let alg = if i % 3 == 0 {
                &ring::aead::AES_256_GCM
            } else {
                &CHACHA20_POLY1305
            };
            let k = LessSafeKey::new(UnboundKey::new(alg, keys(i).expose()).unwrap());
            let mut want = msgs[i].clone();
            k.seal_in_place_append_tag(
                Nonce::assume_unique_for_key([i as u8; 12]),
                Aad::from(b"ad"),
                &mut want,
            )
            .unwrap();
            assert_eq!(o, &want, "{}: job {i}", e.backend());
        }
    }
}

/// Batches whose jobs all have one shape (the relay's case, which the wave driver runs without
/// masking): every plaintext length 0..=300 with the delivery layer's 24-byte AAD, and every
/// AAD length 0..=300 with no plaintext (the deposit-tag shape), 21 jobs each (a full wave of
/// sixteen and a partial one, or several of eight), with a few corrupted.
#[test]
fn batches_of_one_shape_at_every_length() {
    let mut rng = StdRng::seed_from_u64(5);
    let keys: Vec<[u8; 32]> = (0..21).map(|_| rng.random()).collect();
    for len in 0..=300 {
        let sealed: Vec<Job> = (0..21)
            .map(|_| random_job(&mut rng, &keys, len, 24))
            .collect();
        let tagged: Vec<Job> = (0..21)
            .map(|_| random_job(&mut rng, &keys, 0, len))
            .collect();
        for e in engines() {
            check_batch(&e, &sealed, &mut rng, 3);
            check_batch(&e, &tagged, &mut rng, 3);
        }
    }
}
