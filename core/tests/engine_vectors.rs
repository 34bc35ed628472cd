//! Known-answer tests for the batch engine on every backend this machine supports: RFC 8439's
//! AEAD vector and all of Project Wycheproof's ChaCha20-Poly1305 and AES-256-GCM (12-byte nonce)
//! vectors, one at a time and all in one mixed batch.

mod common;
use common::engines;

use sealpost_core::batch::{OpenJob, SealJob, VerifyJob};
use sealpost_core::engine::Engine;
use sealpost_core::{AeadKey, Suite};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn rfc8439_aead_vector() {
    // RFC 8439 §2.8.2.
    let key = AeadKey::new(
        Suite::ChaCha20Poly1305,
        h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap(),
    );
    let nonce: [u8; 12] = h("070000004041424344454647").try_into().unwrap();
    let aad = h("50515253c0c1c2c3c4c5c6c7");
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let want = h(concat!(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
        "3ff4def08e4b7a9de576d26586cec64b6116",
        "1ae10b594f09e26a7e902ecbd0600691"
    ));
    for e in engines() {
        let mut out = vec![0u8; pt.len() + 16];
        e.seal(&mut [SealJob {
            key: &key,
            nonce,
            aad: &aad,
            plaintext: pt,
            out: &mut out,
        }])
        .unwrap();
        assert_eq!(out, want, "{}", e.backend());
        let mut back = vec![0u8; pt.len()];
        let mut ok = [false];
        e.open(
            &mut [OpenJob {
                key: &key,
                nonce,
                aad: &aad,
                ciphertext: &out,
                out: &mut back,
            }],
            &mut ok,
        )
        .unwrap();
        assert!(ok[0]);
        assert_eq!(&back[..], &pt[..]);
    }
}

struct Case {
    id: usize,
    key: AeadKey,
    nonce: [u8; 12],
    aad: Vec<u8>,
    pt: Vec<u8>,
    ct_tag: Vec<u8>,
    valid: bool,
}

fn load(name: TestName, suite: Suite) -> (Vec<Case>, usize) {
    let set = TestSet::load(name).unwrap();
    let mut cases = Vec::new();
    let mut skipped = 0;
    for g in &set.test_groups {
        for t in &g.tests {
            // sealpost uses 32-byte keys, 12-byte nonces and 16-byte tags only.
            if g.key_size != 256 || g.nonce_size != 96 || g.tag_size != 128 {
                skipped += 1;
                continue;
            }
            let mut ct_tag = t.ct.to_vec();
            ct_tag.extend_from_slice(&t.tag);
            cases.push(Case {
                id: t.tc_id,
                key: AeadKey::new(suite, t.key[..].try_into().unwrap()),
                nonce: t.nonce[..].try_into().unwrap(),
                aad: t.aad.to_vec(),
                pt: t.pt.to_vec(),
                ct_tag,
                valid: !matches!(t.result, TestResult::Invalid),
            });
        }
    }
    (cases, skipped)
}

fn check_cases(e: &Engine, cases: &[Case]) {
    // Open, all in one batch.
    let mut outs: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| vec![0xAA; c.ct_tag.len() - 16])
        .collect();
    let mut jobs: Vec<OpenJob> = cases
        .iter()
        .zip(outs.iter_mut())
        .map(|(c, o)| OpenJob {
            key: &c.key,
            nonce: c.nonce,
            aad: &c.aad,
            ciphertext: &c.ct_tag,
            out: o,
        })
        .collect();
    let mut ok = vec![false; cases.len()];
    e.open(&mut jobs, &mut ok).unwrap();
    for ((c, r), o) in cases.iter().zip(&ok).zip(&outs) {
        assert_eq!(*r, c.valid, "{} tcId {} open", e.backend(), c.id);
        if c.valid {
            assert_eq!(o, &c.pt, "{} tcId {} plaintext", e.backend(), c.id);
        } else {
            assert!(
                o.iter().all(|b| *b == 0),
                "{} tcId {}: failed open must zero its output",
                e.backend(),
                c.id
            );
        }
    }
    // Seal the valid ones, all in one batch.
    let valid: Vec<&Case> = cases.iter().filter(|c| c.valid).collect();
    let mut outs: Vec<Vec<u8>> = valid.iter().map(|c| vec![0; c.pt.len() + 16]).collect();
    let mut jobs: Vec<SealJob> = valid
        .iter()
        .zip(outs.iter_mut())
        .map(|(c, o)| SealJob {
            key: &c.key,
            nonce: c.nonce,
            aad: &c.aad,
            plaintext: &c.pt,
            out: o,
        })
        .collect();
    e.seal(&mut jobs).unwrap();
    for (c, o) in valid.iter().zip(&outs) {
        assert_eq!(o, &c.ct_tag, "{} tcId {} seal", e.backend(), c.id);
    }
    // The verify operation on cases with an empty message (the deposit-tag shape).
    let empty: Vec<&Case> = cases
        .iter()
        .filter(|c| c.pt.is_empty() && c.ct_tag.len() == 16)
        .collect();
    let tags: Vec<[u8; 16]> = empty
        .iter()
        .map(|c| c.ct_tag[..].try_into().unwrap())
        .collect();
    let jobs: Vec<VerifyJob> = empty
        .iter()
        .zip(&tags)
        .map(|(c, t)| VerifyJob {
            key: &c.key,
            nonce: &c.nonce,
            aad: &c.aad,
            tag: t,
        })
        .collect();
    let mut ok = vec![false; jobs.len()];
    e.verify(&jobs, &mut ok).unwrap();
    for (c, r) in empty.iter().zip(ok) {
        assert_eq!(r, c.valid, "{} tcId {} verify", e.backend(), c.id);
    }
    // And one at a time, so single-lane batches are covered too.
    for c in cases {
        let mut out = vec![0; c.ct_tag.len() - 16];
        let mut ok = [false];
        e.open(
            &mut [OpenJob {
                key: &c.key,
                nonce: c.nonce,
                aad: &c.aad,
                ciphertext: &c.ct_tag,
                out: &mut out,
            }],
            &mut ok,
        )
        .unwrap();
        assert_eq!(ok[0], c.valid, "{} tcId {} single open", e.backend(), c.id);
    }
}

#[test]
fn wycheproof_chacha20_poly1305_all_vectors() {
    let (cases, skipped) = load(TestName::ChaCha20Poly1305, Suite::ChaCha20Poly1305);
    eprintln!(
        "{} ChaCha20-Poly1305 vectors, {} with other nonce or tag sizes skipped",
        cases.len(),
        skipped
    );
    assert!(
        cases.len() > 250,
        "expected Wycheproof's full ChaCha20-Poly1305 set, got {}",
        cases.len()
    );
    assert!(cases.iter().any(|c| !c.valid) && cases.iter().any(|c| c.valid));
    for e in engines() {
        check_cases(&e, &cases);
    }
}

#[test]
fn wycheproof_aes256gcm_12_byte_nonce_vectors() {
    let (cases, skipped) = load(TestName::AesGcm, Suite::Aes256Gcm);
    eprintln!(
        "{} AES-256-GCM vectors (12-byte nonce, 16-byte tag), {} others skipped",
        cases.len(),
        skipped
    );
    assert!(cases.len() > 50, "got {}", cases.len());
    for e in engines() {
        check_cases(&e, &cases);
    }
}
