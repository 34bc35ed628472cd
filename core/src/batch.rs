//! Batch-shaped AEAD: the API the relay calls once per batch of envelopes.
//!
//! Each job carries its own key, nonce, AAD and data, so one batch may mix suites, keys and
//! lengths. Results are per job: a job that fails to authenticate fails alone. ChaCha20-Poly1305
//! jobs go to the multi-buffer engine ([`crate::engine`]) on its active backend; AES-256-GCM jobs
//! go to ring one at a time.

use crate::engine::driver::{Data, OpenWork, SealWork};
use crate::engine::{Engine, MAX_MESSAGE, OpKind};
use crate::suite::{AeadKey, NONCE_LEN, Suite, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

/// Verify a tag over `aad` with an empty plaintext (the deposit-tag check).
#[derive(Debug, Clone, Copy)]
pub struct VerifyJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the tag was made with.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The authenticated bytes.
    pub aad: &'a [u8],
    /// The tag to check.
    pub tag: &'a [u8; TAG_LEN],
}

/// Encrypt `plaintext` into `out`, which must be `plaintext.len() + TAG_LEN` bytes long: the
/// ciphertext followed by the tag.
#[derive(Debug)]
pub struct SealJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// A nonce never used before with this key.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Bytes to encrypt.
    pub plaintext: &'a [u8],
    /// Destination: ciphertext then tag.
    pub out: &'a mut [u8],
}

/// Decrypt `ciphertext` (ciphertext then tag) into `out`, which must be
/// `ciphertext.len() - TAG_LEN` bytes long. On failure `out` is zeroed.
#[derive(Debug)]
pub struct OpenJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the ciphertext was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Ciphertext followed by its tag.
    pub ciphertext: &'a [u8],
    /// Destination for the plaintext.
    pub out: &'a mut [u8],
}

/// Seal in place: `buf` holds the plaintext followed by [`TAG_LEN`] spare bytes, and ends up
/// holding the ciphertext followed by the tag.
#[derive(Debug)]
pub struct SealInPlaceJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// A nonce never used before with this key.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Plaintext then room for the tag.
    pub buf: &'a mut [u8],
}

/// Open in place: `buf` holds the ciphertext followed by the tag; afterwards its first
/// `buf.len() - TAG_LEN` bytes hold the plaintext (zeroed on failure).
#[derive(Debug)]
pub struct OpenInPlaceJob<'a> {
    /// Key and suite.
    pub key: &'a AeadKey,
    /// The nonce the ciphertext was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data.
    pub aad: &'a [u8],
    /// Ciphertext then tag.
    pub buf: &'a mut [u8],
}

/// A batch call was given buffers of the wrong shape. This is a bug in the caller, never a
/// property of received data, and no job of the batch was processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// `results` does not have one slot per job.
    #[error("results slice has {results} slots for {jobs} jobs")]
    ResultsLen {
        /// Jobs given.
        jobs: usize,
        /// Result slots given.
        results: usize,
    },
    /// A job's output buffer has the wrong length.
    #[error("job {index}: output buffer is {got} bytes, expected {expected}")]
    OutLen {
        /// Which job.
        index: usize,
        /// Its output length.
        got: usize,
        /// The length it needs.
        expected: usize,
    },
    /// A job's message is longer than ChaCha20's 32-bit block counter allows.
    #[error("job {index}: {len} bytes exceed the 256 GiB a ChaCha20-Poly1305 message may have")]
    TooLong {
        /// Which job.
        index: usize,
        /// Its length.
        len: usize,
    },
}

/// Reuses one ring key across consecutive jobs that share a key, so that a batch for one
/// mailbox pays the key schedule once.
struct KeyCache<'k> {
    last: Option<(&'k AeadKey, LessSafeKey)>,
}

impl<'k> KeyCache<'k> {
    fn new() -> Self {
        Self { last: None }
    }

    fn get(&mut self, key: &'k AeadKey) -> &LessSafeKey {
        let hit = matches!(&self.last, Some((k, _)) if std::ptr::eq(*k, key));
        if !hit {
            let unbound = UnboundKey::new(key.suite().ring_alg(), key.expose())
                .expect("32-byte keys suit both sealpost suites");
            self.last = Some((key, LessSafeKey::new(unbound)));
        }
        match &self.last {
            Some((_, k)) => k,
            None => unreachable!("filled above"),
        }
    }
}

/// ring, one job at a time, for any suite.
fn ring_verify(jobs: &[VerifyJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
    if jobs.len() != results.len() {
        return Err(BatchError::ResultsLen {
            jobs: jobs.len(),
            results: results.len(),
        });
    }
    let mut cache = KeyCache::new();
    for (job, ok) in jobs.iter().zip(results.iter_mut()) {
        let key = cache.get(job.key);
        let mut tag = *job.tag;
        *ok = key
            .open_in_place(
                Nonce::assume_unique_for_key(*job.nonce),
                Aad::from(job.aad),
                &mut tag,
            )
            .is_ok();
    }
    Ok(())
}

/// ring, one job at a time, for any suite.
fn ring_seal(jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
    for (index, job) in jobs.iter().enumerate() {
        let expected = job.plaintext.len() + TAG_LEN;
        if job.out.len() != expected {
            return Err(BatchError::OutLen {
                index,
                got: job.out.len(),
                expected,
            });
        }
    }
    let mut cache = KeyCache::new();
    for job in jobs.iter_mut() {
        let key = cache.get(job.key);
        let n = job.plaintext.len();
        let (body, tag_out) = job.out.split_at_mut(n);
        body.copy_from_slice(job.plaintext);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(job.nonce),
                Aad::from(job.aad),
                body,
            )
            .expect("ring seals any length sealpost produces");
        tag_out.copy_from_slice(tag.as_ref());
    }
    Ok(())
}

/// ring, one job at a time, for any suite.
fn ring_open(jobs: &mut [OpenJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
    if jobs.len() != results.len() {
        return Err(BatchError::ResultsLen {
            jobs: jobs.len(),
            results: results.len(),
        });
    }
    for (index, job) in jobs.iter().enumerate() {
        let expected = job.ciphertext.len().saturating_sub(TAG_LEN);
        if job.ciphertext.len() < TAG_LEN || job.out.len() != expected {
            return Err(BatchError::OutLen {
                index,
                got: job.out.len(),
                expected,
            });
        }
    }
    let mut cache = KeyCache::new();
    for (job, ok) in jobs.iter_mut().zip(results.iter_mut()) {
        let key = cache.get(job.key);
        let n = job.out.len();
        let (ct, tag) = job.ciphertext.split_at(n);
        job.out.copy_from_slice(ct);
        let tag = ring::aead::Tag::try_from(tag).expect("split at TAG_LEN from the end");
        *ok = key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(job.nonce),
                Aad::from(job.aad),
                tag,
                job.out,
                0..,
            )
            .is_ok();
        if !*ok {
            job.out.fill(0);
        }
    }
    Ok(())
}

/// Checks every job's tag with the process-wide engine; `results[i]` is set to whether job `i`
/// is authentic.
pub fn verify_batch(jobs: &[VerifyJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
    Engine::active().verify(jobs, results)
}

/// Seals every job into its output buffer with the process-wide engine.
pub fn seal_batch(jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
    Engine::active().seal(jobs)
}

/// Opens every job into its output buffer with the process-wide engine; `results[i]` is
/// whether job `i` was authentic. A failed job's output is zeroed.
pub fn open_batch(jobs: &mut [OpenJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
    Engine::active().open(jobs, results)
}

/// Which engine a job goes to.
fn is_chacha(key: &AeadKey) -> bool {
    key.suite() == Suite::ChaCha20Poly1305
}

impl Engine {
    /// Checks every job's tag; `results[i]` is set to whether job `i` is authentic.
    pub fn verify(&self, jobs: &[VerifyJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
        check_results(jobs.len(), results.len())?;
        let mine =
            |j: &VerifyJob<'_>| is_chacha(j.key) && !self.goes_to_ring(OpKind::Verify, j.aad.len());
        let mut chacha = Vec::with_capacity(jobs.len());
        let mut idx = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            if mine(j) {
                chacha.push(j);
                idx.push(i);
            } else {
                ring_verify(
                    std::slice::from_ref(j),
                    std::slice::from_mut(&mut results[i]),
                )?;
            }
        }
        let mut ok = vec![false; chacha.len()];
        self.chacha_verify(&chacha, &mut ok);
        for (i, r) in idx.into_iter().zip(ok) {
            results[i] = r;
        }
        Ok(())
    }

    /// Seals every job into its output buffer (ciphertext then tag).
    pub fn seal(&self, jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
        for (index, job) in jobs.iter().enumerate() {
            check_len(
                index,
                job.plaintext.len(),
                job.out.len(),
                job.plaintext.len() + TAG_LEN,
            )?;
        }
        let mut works = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            if !is_chacha(job.key) || self.goes_to_ring(OpKind::Seal, job.plaintext.len()) {
                ring_seal(std::slice::from_mut(job))?;
                continue;
            }
            let (ct, tag) = job.out.split_at_mut(job.plaintext.len());
            works.push(SealWork {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::Copy {
                    src: job.plaintext,
                    dst: ct,
                },
                tag,
            });
        }
        self.chacha_seal(works);
        Ok(())
    }

    /// Seals every job in place: `buf` holds the plaintext followed by [`TAG_LEN`] bytes of room
    /// and ends up holding the ciphertext followed by the tag.
    pub fn seal_in_place(&self, jobs: &mut [SealInPlaceJob<'_>]) -> Result<(), BatchError> {
        for (index, job) in jobs.iter().enumerate() {
            let n = job.buf.len().saturating_sub(TAG_LEN);
            check_len(index, n, job.buf.len(), n + TAG_LEN)?;
        }
        let mut works = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let n = job.buf.len() - TAG_LEN;
            if !is_chacha(job.key) || self.goes_to_ring(OpKind::Seal, n) {
                let key = ring_key(job.key);
                let (body, tag_out) = job.buf.split_at_mut(n);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(job.nonce),
                        Aad::from(job.aad),
                        body,
                    )
                    .expect("ring seals any length sealpost produces");
                tag_out.copy_from_slice(tag.as_ref());
                continue;
            }
            let (body, tag) = job.buf.split_at_mut(n);
            works.push(SealWork {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::InPlace(body),
                tag,
            });
        }
        self.chacha_seal(works);
        Ok(())
    }

    /// Opens every job into its output buffer; `results[i]` is whether job `i` was authentic.
    /// A failed job's output is zeroed.
    pub fn open(&self, jobs: &mut [OpenJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
        check_results(jobs.len(), results.len())?;
        for (index, job) in jobs.iter().enumerate() {
            let n = job.ciphertext.len().saturating_sub(TAG_LEN);
            if job.ciphertext.len() < TAG_LEN {
                return Err(BatchError::OutLen {
                    index,
                    got: job.out.len(),
                    expected: 0,
                });
            }
            check_len(index, n, job.out.len(), n)?;
        }
        let mut works = Vec::with_capacity(jobs.len());
        let mut idx = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter_mut().enumerate() {
            if !is_chacha(job.key) || self.goes_to_ring(OpKind::Open, job.out.len()) {
                ring_open(
                    std::slice::from_mut(job),
                    std::slice::from_mut(&mut results[i]),
                )?;
                continue;
            }
            let (ct, tag) = job.ciphertext.split_at(job.out.len());
            works.push(OpenWork {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::Copy {
                    src: ct,
                    dst: &mut job.out[..],
                },
                tag,
            });
            idx.push(i);
        }
        let mut ok = vec![false; works.len()];
        self.chacha_open(works, &mut ok);
        for (i, r) in idx.into_iter().zip(ok) {
            results[i] = r;
        }
        Ok(())
    }

    /// Opens every job in place: `buf` holds the ciphertext followed by the tag; on success
    /// its first `len - TAG_LEN` bytes hold the plaintext, on failure they are zeroed.
    pub fn open_in_place(
        &self,
        jobs: &mut [OpenInPlaceJob<'_>],
        results: &mut [bool],
    ) -> Result<(), BatchError> {
        check_results(jobs.len(), results.len())?;
        for (index, job) in jobs.iter().enumerate() {
            if job.buf.len() < TAG_LEN {
                return Err(BatchError::OutLen {
                    index,
                    got: job.buf.len(),
                    expected: TAG_LEN,
                });
            }
            let n = job.buf.len() - TAG_LEN;
            check_len(index, n, n, n)?;
        }
        let mut works = Vec::with_capacity(jobs.len());
        let mut idx = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter_mut().enumerate() {
            let n = job.buf.len() - TAG_LEN;
            if !is_chacha(job.key) || self.goes_to_ring(OpKind::Open, n) {
                let key = ring_key(job.key);
                let (body, tag) = job.buf.split_at_mut(n);
                let tag = ring::aead::Tag::try_from(&tag[..]).expect("TAG_LEN bytes");
                results[i] = key
                    .open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(job.nonce),
                        Aad::from(job.aad),
                        tag,
                        body,
                        0..,
                    )
                    .is_ok();
                if !results[i] {
                    body.fill(0);
                }
                continue;
            }
            let (body, tag) = job.buf.split_at_mut(n);
            works.push(OpenWork {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::InPlace(body),
                tag,
            });
            idx.push(i);
        }
        let mut ok = vec![false; works.len()];
        self.chacha_open(works, &mut ok);
        for (i, r) in idx.into_iter().zip(ok) {
            results[i] = r;
        }
        Ok(())
    }
}

fn check_results(jobs: usize, results: usize) -> Result<(), BatchError> {
    if jobs != results {
        return Err(BatchError::ResultsLen { jobs, results });
    }
    Ok(())
}

fn check_len(index: usize, message: usize, got: usize, expected: usize) -> Result<(), BatchError> {
    if got != expected {
        return Err(BatchError::OutLen {
            index,
            got,
            expected,
        });
    }
    if message > MAX_MESSAGE {
        return Err(BatchError::TooLong {
            index,
            len: message,
        });
    }
    Ok(())
}

fn ring_key(key: &AeadKey) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(key.suite().ring_alg(), key.expose())
            .expect("32-byte keys suit both sealpost suites"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Suite;

    #[test]
    fn seal_open_verify_mixed_batch() {
        let k1 = AeadKey::new(Suite::ChaCha20Poly1305, [1; 32]);
        let k2 = AeadKey::new(Suite::Aes256Gcm, [2; 32]);
        let msgs: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; i * 37]).collect();
        let mut outs: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0; m.len() + TAG_LEN]).collect();
        let keys = |i: usize| if i % 2 == 0 { &k1 } else { &k2 };
        let mut jobs: Vec<SealJob> = msgs
            .iter()
            .zip(outs.iter_mut())
            .enumerate()
            .map(|(i, (m, o))| SealJob {
                key: keys(i),
                nonce: [i as u8; 12],
                aad: b"aad",
                plaintext: m,
                out: o,
            })
            .collect();
        seal_batch(&mut jobs).unwrap();
        outs[3][0] ^= 1;
        let mut plains: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0; m.len()]).collect();
        let mut jobs: Vec<OpenJob> = outs
            .iter()
            .zip(plains.iter_mut())
            .enumerate()
            .map(|(i, (c, o))| OpenJob {
                key: keys(i),
                nonce: [i as u8; 12],
                aad: b"aad",
                ciphertext: c,
                out: o,
            })
            .collect();
        let mut ok = vec![false; 10];
        open_batch(&mut jobs, &mut ok).unwrap();
        for i in 0..10 {
            assert_eq!(ok[i], i != 3, "job {i}");
            if i != 3 {
                assert_eq!(plains[i], msgs[i]);
            }
        }
    }

    #[test]
    fn shape_errors_are_reported_not_panicked() {
        let k = AeadKey::new(Suite::ChaCha20Poly1305, [1; 32]);
        let mut out = [0u8; 3];
        let mut jobs = [SealJob {
            key: &k,
            nonce: [0; 12],
            aad: &[],
            plaintext: b"abc",
            out: &mut out,
        }];
        assert!(matches!(
            seal_batch(&mut jobs),
            Err(BatchError::OutLen { index: 0, .. })
        ));
        assert!(matches!(
            verify_batch(&[], &mut [false]),
            Err(BatchError::ResultsLen {
                jobs: 0,
                results: 1
            })
        ));
    }
}
