//! ring, one job at a time: AES-256-GCM always, and ChaCha20-Poly1305 on CPUs without AVX2
//! (where ring's own code beats the portable backend). Shapes are checked by the caller.

use crate::batch::{OpenInPlaceJob, OpenJob, SealInPlaceJob, SealJob, VerifyJob};
use crate::suite::AeadKey;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// Reuses one ring key across consecutive jobs that share a key, so that a batch for one
/// mailbox pays the key schedule once. ring's key types cannot be wiped, so nothing is kept
/// between calls.
pub(crate) struct KeyCache<'k> {
    last: Option<(&'k AeadKey, LessSafeKey)>,
}

impl<'k> KeyCache<'k> {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn verify(&mut self, job: &VerifyJob<'k>) -> bool {
        let mut tag = *job.tag;
        self.get(job.key)
            .open_in_place(
                Nonce::assume_unique_for_key(*job.nonce),
                Aad::from(job.aad),
                &mut tag,
            )
            .is_ok()
    }

    /// Seals `body` in place and writes its tag to `tag_out`.
    fn seal_body(
        &mut self,
        key: &'k AeadKey,
        nonce: [u8; 12],
        aad: &[u8],
        body: &mut [u8],
        tag_out: &mut [u8],
    ) {
        let tag = self
            .get(key)
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            // The batch calls refuse messages over the suite's limit (`batch::max_message`, which
            // is ring's own limit for AES-256-GCM) before any job reaches here.
            .expect("lengths are checked against the suite's limit first");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Opens `body` in place against `tag`; a body that fails is zeroed.
    fn open_body(
        &mut self,
        key: &'k AeadKey,
        nonce: [u8; 12],
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let tag = Tag::try_from(tag).expect("TAG_LEN bytes");
        let ok = self
            .get(key)
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                tag,
                body,
                0..,
            )
            .is_ok();
        if !ok {
            body.fill(0);
        }
        ok
    }

    pub(crate) fn seal(&mut self, job: &mut SealJob<'k>) {
        let (body, tag_out) = job.out.split_at_mut(job.plaintext.len());
        body.copy_from_slice(job.plaintext);
        self.seal_body(job.key, job.nonce, job.aad, body, tag_out);
    }

    pub(crate) fn seal_in_place(&mut self, job: &mut SealInPlaceJob<'k>) {
        let (body, tag_out) = job.buf.split_at_mut(job.buf.len() - crate::suite::TAG_LEN);
        self.seal_body(job.key, job.nonce, job.aad, body, tag_out);
    }

    pub(crate) fn open(&mut self, job: &mut OpenJob<'k>) -> bool {
        let (ct, tag) = job.ciphertext.split_at(job.out.len());
        job.out.copy_from_slice(ct);
        self.open_body(job.key, job.nonce, job.aad, job.out, tag)
    }

    pub(crate) fn open_in_place(&mut self, job: &mut OpenInPlaceJob<'k>) -> bool {
        let (body, tag) = job.buf.split_at_mut(job.buf.len() - crate::suite::TAG_LEN);
        self.open_body(job.key, job.nonce, job.aad, body, tag)
    }
}
