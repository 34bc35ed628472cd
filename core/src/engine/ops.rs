//! The engine's operations: shape checks, then ChaCha20-Poly1305 jobs to the backend's wave
//! driver and everything else (AES-256-GCM, or every job on the ring backend) to ring.

use super::wave::{self, Data, Tag, Work};
use super::{Engine, Imp, ring::KeyCache};
use crate::batch::{
    BatchError, OpenInPlaceJob, OpenJob, SealInPlaceJob, SealJob, VerifyJob, check_len,
    check_results,
};
use crate::suite::{AeadKey, Suite, TAG_LEN};

/// Runs `$body` with `$k` bound to the engine's kernel value; `$ring` when the engine is ring.
macro_rules! with_kernel {
    ($engine:expr, $k:ident => $body:expr, ring => $ring:expr) => {
        match $engine.imp {
            Imp::Ring => $ring,
            Imp::Portable => {
                let $k = super::portable::PortableKernel;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                let $k = super::avx2::Avx2Kernel(t);
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => {
                let $k = super::avx512::NativeKernel(t);
                $body
            }
            Imp::Avx512Emulated => {
                let $k = super::avx512::EmuKernel;
                $body
            }
        }
    };
}

impl Engine {
    /// Whether a job with this key goes to the engine's backend (rather than to ring).
    fn ours(&self, key: &AeadKey) -> bool {
        key.suite() == Suite::ChaCha20Poly1305 && self.imp != Imp::Ring
    }

    /// Checks every job's tag; `results[i]` is set to whether job `i` is authentic.
    pub fn verify(&self, jobs: &[VerifyJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
        check_results(jobs.len(), results.len())?;
        let mine = |j: &VerifyJob<'_>| self.ours(j.key);
        with_kernel!(self, k => wave::verify(k, jobs, mine, results), ring => ());
        let mut ring = KeyCache::new();
        for (job, ok) in jobs.iter().zip(results.iter_mut()) {
            if !self.ours(job.key) {
                *ok = ring.verify(job);
            }
        }
        Ok(())
    }

    /// Seals every job into its output buffer (ciphertext then tag).
    pub fn seal(&self, jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
        for (index, job) in jobs.iter().enumerate() {
            let n = job.plaintext.len();
            check_len(index, job.key.suite(), n, job.out.len(), n + TAG_LEN)?;
        }
        let mine = jobs.iter_mut().filter(|j| self.ours(j.key)).map(|job| {
            let (ct, tag) = job.out.split_at_mut(job.plaintext.len());
            Work {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::Copy {
                    src: job.plaintext,
                    dst: ct,
                },
                tag: Tag::Out(tag),
            }
        });
        with_kernel!(self, k => wave::seal(k, mine), ring => ());
        let mut ring = KeyCache::new();
        for job in jobs.iter_mut().filter(|j| !self.ours(j.key)) {
            ring.seal(job);
        }
        Ok(())
    }

    /// Seals every job in place: `buf` holds the plaintext followed by [`TAG_LEN`] bytes of room
    /// and ends up holding the ciphertext followed by the tag.
    pub fn seal_in_place(&self, jobs: &mut [SealInPlaceJob<'_>]) -> Result<(), BatchError> {
        for (index, job) in jobs.iter().enumerate() {
            check_in_place(index, job.key.suite(), job.buf.len())?;
        }
        let mine = jobs.iter_mut().filter(|j| self.ours(j.key)).map(|job| {
            let n = job.buf.len() - TAG_LEN;
            let (body, tag) = job.buf.split_at_mut(n);
            Work {
                key: job.key.expose(),
                nonce: &job.nonce,
                aad: job.aad,
                data: Data::InPlace(body),
                tag: Tag::Out(tag),
            }
        });
        with_kernel!(self, k => wave::seal(k, mine), ring => ());
        let mut ring = KeyCache::new();
        for job in jobs.iter_mut().filter(|j| !self.ours(j.key)) {
            ring.seal_in_place(job);
        }
        Ok(())
    }

    /// Opens every job into its output buffer; `results[i]` is whether job `i` was authentic.
    /// A failed job's output is zeroed.
    pub fn open(&self, jobs: &mut [OpenJob<'_>], results: &mut [bool]) -> Result<(), BatchError> {
        check_results(jobs.len(), results.len())?;
        for (index, job) in jobs.iter().enumerate() {
            let Some(n) = job.ciphertext.len().checked_sub(TAG_LEN) else {
                return Err(BatchError::ShortCiphertext {
                    index,
                    len: job.ciphertext.len(),
                });
            };
            check_len(index, job.key.suite(), n, job.out.len(), n)?;
        }
        let mine = jobs
            .iter_mut()
            .enumerate()
            .filter(|(_, j)| self.ours(j.key))
            .map(|(i, job)| {
                let (ct, tag) = job.ciphertext.split_at(job.out.len());
                let work = Work {
                    key: job.key.expose(),
                    nonce: &job.nonce,
                    aad: job.aad,
                    data: Data::Copy {
                        src: ct,
                        dst: &mut job.out[..],
                    },
                    tag: Tag::In(tag),
                };
                (i, work)
            });
        with_kernel!(self, k => wave::open(k, mine, results), ring => ());
        let mut ring = KeyCache::new();
        for (job, ok) in jobs.iter_mut().zip(results.iter_mut()) {
            if !self.ours(job.key) {
                *ok = ring.open(job);
            }
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
            check_in_place(index, job.key.suite(), job.buf.len())?;
        }
        let mine = jobs
            .iter_mut()
            .enumerate()
            .filter(|(_, j)| self.ours(j.key))
            .map(|(i, job)| {
                let n = job.buf.len() - TAG_LEN;
                let (body, tag) = job.buf.split_at_mut(n);
                let work = Work {
                    key: job.key.expose(),
                    nonce: &job.nonce,
                    aad: job.aad,
                    data: Data::InPlace(body),
                    tag: Tag::In(tag),
                };
                (i, work)
            });
        with_kernel!(self, k => wave::open(k, mine, results), ring => ());
        let mut ring = KeyCache::new();
        for (job, ok) in jobs.iter_mut().zip(results.iter_mut()) {
            if !self.ours(job.key) {
                *ok = ring.open_in_place(job);
            }
        }
        Ok(())
    }
}

/// An in-place job's buffer must hold at least a tag, and its message must fit the counter.
fn check_in_place(index: usize, suite: Suite, buf_len: usize) -> Result<(), BatchError> {
    let Some(n) = buf_len.checked_sub(TAG_LEN) else {
        return Err(BatchError::OutLen {
            index,
            got: buf_len,
            expected: TAG_LEN,
        });
    };
    check_len(index, suite, n, n, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_verify_mixed_batch() {
        let k1 = AeadKey::new(Suite::ChaCha20Poly1305, [1; 32]);
        let k2 = AeadKey::new(Suite::Aes256Gcm, [2; 32]);
        let msgs: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; i * 37]).collect();
        let keys = |i: usize| if i.is_multiple_of(2) { &k1 } else { &k2 };
        for backend in crate::engine::Backend::supported() {
            let e = Engine::new(backend).unwrap();
            let mut outs: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0; m.len() + TAG_LEN]).collect();
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
            e.seal(&mut jobs).unwrap();
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
            e.open(&mut jobs, &mut ok).unwrap();
            for i in 0..10 {
                assert_eq!(ok[i], i != 3, "{backend}: job {i}");
                if i != 3 {
                    assert_eq!(plains[i], msgs[i], "{backend}: job {i}");
                }
            }
        }
    }

    #[test]
    fn shape_errors_are_reported_not_panicked() {
        let e = Engine::detect();
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
            e.seal(&mut jobs),
            Err(BatchError::OutLen { index: 0, .. })
        ));
        // A ciphertext shorter than a tag is named as such (not an output-length mismatch).
        let mut none = [0u8; 0];
        let mut opens = [OpenJob {
            key: &k,
            nonce: [0; 12],
            aad: &[],
            ciphertext: &[0; 15],
            out: &mut none,
        }];
        let mut ok = [false];
        assert_eq!(
            e.open(&mut opens, &mut ok),
            Err(BatchError::ShortCiphertext { index: 0, len: 15 })
        );
        assert!(matches!(
            e.verify(&[], &mut [false]),
            Err(BatchError::ResultsLen {
                jobs: 0,
                results: 1
            })
        ));
    }
}
