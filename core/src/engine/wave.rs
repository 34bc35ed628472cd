//! Backend-independent batch logic. Jobs are taken in *waves* of as many jobs as the backend
//! has lanes, one job per lane, and every step of a wave runs on all lanes at once:
//!
//! 1. ChaCha20 block 0 of every lane, which becomes that lane's one-time Poly1305 key without
//!    leaving vector registers (`Kernel::mac_init`);
//! 2. for seal and open, the keystream from block 1 on, XORed into each lane's data
//!    (`Kernel::xor`);
//! 3. Poly1305 over each lane's `aad ‖ pad ‖ ct ‖ pad ‖ lengths`, as a few calls that absorb
//!    whole blocks straight from the callers' buffers (`Kernel::mac_blocks`), plus one block per
//!    lane for each padded tail and one for the lengths, assembled here;
//! 4. the tags, finished and compared in vector registers (`Kernel::mac_verify`,
//!    `Kernel::mac_tags`).
//!
//! Nothing is allocated per call, and nothing is written per job except the tail and length
//! blocks. Lanes whose job has less to absorb in a step than the others are masked for it, so
//! jobs of different lengths share a wave correctly (a wave of equal shapes, which is what a
//! relay sees, runs with no masking at all). A partial last wave repeats its first job in the
//! idle lanes and discards their results. Scheduling depends only on lengths, never on keys,
//! data or tags.

use super::BLOCK;
use crate::batch::VerifyJob;
use crate::suite::TAG_LEN;
use arrayvec::ArrayVec;

/// Most lanes any backend has.
pub(crate) const MAX_LANES: usize = 16;

/// One value per lane.
pub(crate) type Lanes<T> = [T; MAX_LANES];

/// Where keystream goes.
pub(crate) enum Data<'a> {
    /// `dst = src ^ keystream`.
    Copy { src: &'a [u8], dst: &'a mut [u8] },
    /// `buf ^= keystream`.
    InPlace(&'a mut [u8]),
    /// Nothing (a job whose tag failed, in open).
    Skip,
}

impl Data<'_> {
    /// Bytes of keystream this lane takes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Data::Copy { src, .. } => src.len(),
            Data::InPlace(b) => b.len(),
            Data::Skip => 0,
        }
    }

    /// The bytes before the keystream is applied.
    fn input(&self) -> &[u8] {
        match self {
            Data::Copy { src, .. } => src,
            Data::InPlace(b) => b,
            Data::Skip => &[],
        }
    }

    /// The bytes after the keystream is applied.
    fn output(&self) -> &[u8] {
        match self {
            Data::Copy { dst, .. } => dst,
            Data::InPlace(b) => b,
            Data::Skip => &[],
        }
    }

    fn output_mut(&mut self) -> &mut [u8] {
        match self {
            Data::Copy { dst, .. } => dst,
            Data::InPlace(b) => b,
            Data::Skip => &mut [],
        }
    }

    /// The window of keystream block `block` (64 bytes, fewer at the end of the message), if
    /// the lane's data reaches it: `(Some(src), dst)` means `dst = src ^ ks`, `(None, buf)`
    /// means `buf ^= ks` (read `buf` before writing it).
    #[inline(always)]
    pub(crate) fn window(&mut self, block: usize) -> Option<(Option<&[u8]>, &mut [u8])> {
        let at = block * BLOCK;
        match self {
            Data::Copy { src, dst } if at < src.len() => {
                let end = (at + BLOCK).min(src.len());
                Some((Some(&src[at..end]), &mut dst[at..end]))
            }
            Data::InPlace(b) if at < b.len() => {
                let end = (at + BLOCK).min(b.len());
                Some((None, &mut b[at..end]))
            }
            _ => None,
        }
    }
}

/// What one backend computes for a wave of up to `LANES` jobs.
///
/// Every lane array has [`MAX_LANES`] entries; a backend reads the first `LANES`. Lanes past the
/// wave's last job repeat its first job.
pub(crate) trait Kernel: Copy {
    /// Jobs per wave.
    const LANES: usize;
    /// Poly1305 state of a wave: every lane's one-time key and accumulator. Wiped when dropped.
    type Mac;

    /// A fresh (all-zero) state.
    fn new_mac(self) -> Self::Mac;
    /// ChaCha20 block 0 of each lane's key and nonce becomes its one-time key; accumulators
    /// start at zero.
    fn mac_init(self, mac: &mut Self::Mac, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>);
    /// Absorbs `n` whole 16-byte blocks of `inputs[l]` (which has at least `16 * n` bytes)
    /// into lane `l` for every bit `l` set in `active`; other lanes keep their state.
    fn mac_blocks(self, mac: &mut Self::Mac, n: usize, inputs: &Lanes<&[u8]>, active: u32);
    /// Finishes every lane; bit `l` of the result is set when lane `l`'s tag equals
    /// `expected[l]`. The comparison is constant time; only the verdicts are branched on.
    fn mac_verify(self, mac: &mut Self::Mac, expected: &Lanes<&[u8; TAG_LEN]>) -> u32;
    /// Finishes every lane into `out`.
    fn mac_tags(self, mac: &mut Self::Mac, out: &mut Lanes<[u8; TAG_LEN]>);
    /// XORs ChaCha20 keystream from block 1 on into each job's data.
    fn xor(self, jobs: &mut [Work<'_>]);
}

/// The keys and nonces of a wave's jobs, lane by lane; lanes past the last job repeat the
/// first. `jobs` must not be empty.
#[inline(always)]
pub(crate) fn lane_keys<'a>(jobs: &[Work<'a>]) -> (Lanes<&'a [u8; 32]>, Lanes<&'a [u8; 12]>) {
    let mut keys = [jobs[0].key; MAX_LANES];
    let mut nonces = [jobs[0].nonce; MAX_LANES];
    for (l, job) in jobs.iter().enumerate().take(MAX_LANES) {
        keys[l] = job.key;
        nonces[l] = job.nonce;
    }
    (keys, nonces)
}

/// The tag of a seal (written) or an open (checked).
pub(crate) enum Tag<'a> {
    Out(&'a mut [u8]),
    In(&'a [u8]),
}

/// One seal or open.
pub(crate) struct Work<'a> {
    pub key: &'a [u8; 32],
    pub nonce: &'a [u8; 12],
    pub aad: &'a [u8],
    pub data: Data<'a>,
    pub tag: Tag<'a>,
}

/// The blocks of a lane's Poly1305 input that are not whole blocks of a caller's buffer,
/// assembled as whole blocks: `head` holds a short AAD entirely (up to 32 bytes) or the padded
/// tail of a longer one when a ciphertext follows; `end` holds the last partial block (of the
/// ciphertext, or of a long AAD when there is no ciphertext) followed by the length block.
/// With them, every lane's input is at most four runs of whole blocks, in order:
/// `aad[..] ‖ head ‖ ct[..] ‖ end`. Written once per wave, before the whole blocks are absorbed,
/// so the stores have long left the store buffer when the kernel reads them.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Scratch {
    head: [u8; 32],
    end: [u8; 32],
}

/// Copied AADs up to this size go wholly into the scratch head (seal and open use 24 bytes).
const SHORT_AAD: usize = 32;

/// The last `len % 16` bytes of `seg`, zero-padded to a block.
#[inline(always)]
fn pad_tail(seg: &[u8]) -> [u8; 16] {
    let t = seg.len() % 16;
    if t == 0 {
        return [0; 16];
    }
    match seg.len().checked_sub(16) {
        // One 16-byte load and a shift instead of a variable-length copy.
        Some(start) => {
            let last: [u8; 16] = seg[start..].try_into().expect("16 bytes");
            (u128::from_le_bytes(last) >> (8 * (16 - t))).to_le_bytes()
        }
        None => {
            let mut b = [0u8; 16];
            b[..t].copy_from_slice(seg);
            b
        }
    }
}

/// Up to 16 bytes, zero-padded to a block.
#[inline(always)]
fn pad_block(seg: &[u8]) -> [u8; 16] {
    match <[u8; 16]>::try_from(seg) {
        Ok(whole) => whole,
        Err(_) => pad_tail(seg),
    }
}

/// Fills `s` for a lane with this AAD and ciphertext and returns the four runs of whole
/// blocks the lane absorbs.
#[inline(always)]
fn runs<'a>(s: &'a mut Scratch, aad: &'a [u8], ct: &'a [u8]) -> [&'a [u8]; 4] {
    let (a, c) = (aad.len(), ct.len());
    let lens = (a as u128 | ((c as u128) << 64)).to_le_bytes();
    let short = a <= SHORT_AAD;
    let head_len = if short {
        let (first, second) = aad.split_at(a.min(16));
        s.head[..16].copy_from_slice(&pad_block(first));
        s.head[16..].copy_from_slice(&pad_block(second));
        a.div_ceil(16) * 16
    } else if c > 0 && a % 16 != 0 {
        s.head[..16].copy_from_slice(&pad_tail(aad));
        16
    } else {
        0
    };
    // The partial block before the lengths: the ciphertext's, or a long AAD's without one.
    let last = if c > 0 {
        ct
    } else if short {
        &[]
    } else {
        aad
    };
    let end_len = if last.len() % 16 != 0 {
        s.end[..16].copy_from_slice(&pad_tail(last));
        s.end[16..].copy_from_slice(&lens);
        32
    } else {
        s.end[..16].copy_from_slice(&lens);
        16
    };
    let whole_aad = if short { &aad[..0] } else { &aad[..a - a % 16] };
    [
        whole_aad,
        &s.head[..head_len],
        &ct[..c - c % 16],
        &s.end[..end_len],
    ]
}

/// Absorbs `segs[l]` (whole blocks) into every lane, in as few kernel calls as the lengths
/// allow: one when every lane has as many blocks (the common case), else one per distinct
/// count, with the lanes that are done masked.
#[inline(always)]
fn absorb_run<K: Kernel>(k: K, mac: &mut K::Mac, segs: &Lanes<&[u8]>) {
    let mut off = [0usize; MAX_LANES];
    loop {
        let mut n = usize::MAX;
        let mut active = 0u32;
        let mut first = usize::MAX;
        for l in 0..K::LANES {
            let rem = segs[l].len() / 16 - off[l];
            if rem > 0 {
                n = n.min(rem);
                active |= 1 << l;
                first = first.min(l);
            }
        }
        if active == 0 {
            return;
        }
        // Masked lanes read the first active lane's blocks (any readable bytes will do).
        let mut inputs: Lanes<&[u8]> = [&[]; MAX_LANES];
        for (l, input) in inputs.iter_mut().enumerate().take(K::LANES) {
            let src = if active >> l & 1 == 1 { l } else { first };
            *input = &segs[src][16 * off[src]..];
        }
        k.mac_blocks(mac, n, &inputs, active);
        for (l, o) in off.iter_mut().enumerate().take(K::LANES) {
            if active >> l & 1 == 1 {
                *o += n;
            }
        }
    }
}

/// Poly1305 over `aad ‖ pad ‖ ct ‖ pad ‖ le64(|aad|) ‖ le64(|ct|)` for every lane, after
/// `mac_init`.
#[inline(always)]
fn absorb<K: Kernel>(
    k: K,
    mac: &mut K::Mac,
    scratch: &mut Lanes<Scratch>,
    aad: &Lanes<&[u8]>,
    ct: &Lanes<&[u8]>,
) {
    let (a, c) = (aad[0].len(), ct[0].len());
    let mut uniform = true;
    for l in 1..K::LANES {
        uniform &= aad[l].len() == a && ct[l].len() == c;
    }
    if uniform {
        absorb_uniform(k, mac, scratch, aad, ct);
        return;
    }
    let mut run: [Lanes<&[u8]>; 4] = [[&[]; MAX_LANES]; 4];
    for (l, s) in scratch.iter_mut().enumerate().take(K::LANES) {
        let r = runs(s, aad[l], ct[l]);
        for (i, seg) in r.into_iter().enumerate() {
            run[i][l] = seg;
        }
    }
    for segs in &run {
        absorb_run(k, mac, segs);
    }
}

/// [`absorb`] when every lane has the same AAD and ciphertext lengths (a relay's batches of
/// one size class): one kernel call per run for all lanes, straight from the callers' buffers,
/// and per-lane scratch only for the partial blocks there are.
#[inline(always)]
fn absorb_uniform<K: Kernel>(
    k: K,
    mac: &mut K::Mac,
    scratch: &mut Lanes<Scratch>,
    aad: &Lanes<&[u8]>,
    ct: &Lanes<&[u8]>,
) {
    let (a, c) = (aad[0].len(), ct[0].len());
    let all = if K::LANES >= 32 {
        u32::MAX
    } else {
        (1u32 << K::LANES) - 1
    };
    let short = a <= SHORT_AAD;
    if !short && a >= 16 {
        k.mac_blocks(mac, a / 16, aad, all);
    }
    // The head: a short AAD whole, or a long one's tail when a ciphertext follows.
    let head_blocks = if short {
        a.div_ceil(16)
    } else {
        usize::from(c > 0 && a % 16 != 0)
    };
    if head_blocks > 0 {
        let mut heads: Lanes<&[u8]> = [&[]; MAX_LANES];
        for ((h, s), x) in heads
            .iter_mut()
            .zip(scratch.iter_mut())
            .zip(aad)
            .take(K::LANES)
        {
            if short {
                let (first, second) = x.split_at(a.min(16));
                s.head[..16].copy_from_slice(&pad_block(first));
                s.head[16..].copy_from_slice(&pad_block(second));
            } else {
                s.head[..16].copy_from_slice(&pad_tail(x));
            }
            *h = &s.head;
        }
        k.mac_blocks(mac, head_blocks, &heads, all);
    }
    if c >= 16 {
        k.mac_blocks(mac, c / 16, ct, all);
    }
    // The end: the last partial block (the ciphertext's, or a long AAD's without one), then
    // the lengths, which every lane shares.
    let lens = (a as u128 | ((c as u128) << 64)).to_le_bytes();
    let last = if c > 0 {
        Some(ct)
    } else if !short {
        Some(aad)
    } else {
        None
    };
    match last {
        Some(segs) if segs[0].len() % 16 != 0 => {
            let mut ends: Lanes<&[u8]> = [&[]; MAX_LANES];
            for ((e, s), x) in ends
                .iter_mut()
                .zip(scratch.iter_mut())
                .zip(segs)
                .take(K::LANES)
            {
                s.end[..16].copy_from_slice(&pad_tail(x));
                s.end[16..].copy_from_slice(&lens);
                *e = &s.end;
            }
            k.mac_blocks(mac, 2, &ends, all);
        }
        _ => k.mac_blocks(mac, 1, &[&lens[..]; MAX_LANES], all),
    }
}

/// What the MAC of one job reads.
trait MacSide<'a> {
    fn key(&self) -> &'a [u8; 32];
    fn nonce(&self) -> &'a [u8; 12];
    fn aad(&self) -> &'a [u8];
    /// The ciphertext the tag covers.
    fn ct(&self) -> &[u8];
    /// The tag to check (zeros where there is none).
    fn expected(&self) -> &[u8; TAG_LEN];
}

impl<'a> MacSide<'a> for &VerifyJob<'a> {
    fn key(&self) -> &'a [u8; 32] {
        self.key.expose()
    }
    fn nonce(&self) -> &'a [u8; 12] {
        self.nonce
    }
    fn aad(&self) -> &'a [u8] {
        self.aad
    }
    fn ct(&self) -> &[u8] {
        &[]
    }
    fn expected(&self) -> &[u8; TAG_LEN] {
        self.tag
    }
}

impl<'a> MacSide<'a> for Work<'a> {
    fn key(&self) -> &'a [u8; 32] {
        self.key
    }
    fn nonce(&self) -> &'a [u8; 12] {
        self.nonce
    }
    fn aad(&self) -> &'a [u8] {
        self.aad
    }
    fn ct(&self) -> &[u8] {
        // A seal's tag covers its output; an open's its input.
        match self.tag {
            Tag::Out(_) => self.data.output(),
            Tag::In(_) => self.data.input(),
        }
    }
    fn expected(&self) -> &[u8; TAG_LEN] {
        match self.tag {
            Tag::In(t) => t.try_into().unwrap_or(&[0; TAG_LEN]),
            Tag::Out(_) => &[0; TAG_LEN],
        }
    }
}

/// Runs ChaCha20 block 0 and Poly1305 for a wave (lanes past its end repeat its first job) and
/// returns the lane mask of tags equal to the expected ones, or writes the tags to `tags`.
#[inline(always)]
fn mac_wave<'a, K: Kernel, J: MacSide<'a>>(
    k: K,
    mac: &mut K::Mac,
    scratch: &mut Lanes<Scratch>,
    wave: &[J],
    tags: Option<&mut Lanes<[u8; TAG_LEN]>>,
) -> u32 {
    let first = &wave[0];
    let mut keys = [first.key(); MAX_LANES];
    let mut nonces = [first.nonce(); MAX_LANES];
    let mut aad = [first.aad(); MAX_LANES];
    let mut ct = [first.ct(); MAX_LANES];
    let mut expected = [first.expected(); MAX_LANES];
    for (l, job) in wave.iter().enumerate().skip(1) {
        keys[l] = job.key();
        nonces[l] = job.nonce();
        aad[l] = job.aad();
        ct[l] = job.ct();
        expected[l] = job.expected();
    }
    k.mac_init(mac, &keys, &nonces);
    absorb(k, mac, scratch, &aad, &ct);
    match tags {
        Some(out) => {
            k.mac_tags(mac, out);
            0
        }
        None => k.mac_verify(mac, &expected),
    }
}

/// Fresh scratch for a call.
fn new_scratch() -> Lanes<Scratch> {
    [Scratch {
        head: [0; 32],
        end: [0; 32],
    }; MAX_LANES]
}

/// Verifies the jobs `mine` picks; `results[i]` gets job `i`'s verdict (the others' are left).
pub(crate) fn verify<K: Kernel>(
    k: K,
    jobs: &[VerifyJob<'_>],
    mine: impl Fn(&VerifyJob<'_>) -> bool,
    results: &mut [bool],
) {
    let mut mac = k.new_mac();
    let mut scratch = new_scratch();
    let mut index = [0usize; MAX_LANES];
    let mut n = 0;
    let mut run = |index: &[usize]| {
        let mut wave: [&VerifyJob<'_>; MAX_LANES] = [&jobs[index[0]]; MAX_LANES];
        for (w, i) in wave.iter_mut().zip(index) {
            *w = &jobs[*i];
        }
        let ok = mac_wave(k, &mut mac, &mut scratch, &wave[..index.len()], None);
        for (l, i) in index.iter().enumerate() {
            results[*i] = ok >> l & 1 == 1;
        }
    };
    for (i, job) in jobs.iter().enumerate() {
        if mine(job) {
            index[n] = i;
            n += 1;
            if n == K::LANES {
                run(&index[..n]);
                n = 0;
            }
        }
    }
    if n > 0 {
        run(&index[..n]);
    }
}

/// Seals every work item: keystream into its data, then its tag.
pub(crate) fn seal<'a, K: Kernel>(k: K, works: impl Iterator<Item = Work<'a>>) {
    let mut mac = k.new_mac();
    let mut scratch = new_scratch();
    let mut tags = [[0u8; TAG_LEN]; MAX_LANES];
    let mut wave: ArrayVec<Work<'a>, MAX_LANES> = ArrayVec::new();
    let mut run = |wave: &mut ArrayVec<Work<'a>, MAX_LANES>| {
        k.xor(wave);
        mac_wave(k, &mut mac, &mut scratch, wave, Some(&mut tags));
        for (w, t) in wave.iter_mut().zip(&tags) {
            if let Tag::Out(out) = &mut w.tag {
                out.copy_from_slice(t);
            }
        }
        wave.clear();
    };
    for w in works {
        wave.push(w);
        if wave.len() == K::LANES {
            run(&mut wave);
        }
    }
    if !wave.is_empty() {
        run(&mut wave);
    }
}

/// Opens every work item; `results[i]` gets the verdict of the item given with index `i`. An
/// item whose tag fails gets no keystream: its output is zeroed instead.
pub(crate) fn open<'a, K: Kernel>(
    k: K,
    works: impl Iterator<Item = (usize, Work<'a>)>,
    results: &mut [bool],
) {
    let mut mac = k.new_mac();
    let mut scratch = new_scratch();
    let mut wave: ArrayVec<Work<'a>, MAX_LANES> = ArrayVec::new();
    let mut index: ArrayVec<usize, MAX_LANES> = ArrayVec::new();
    let mut run = |wave: &mut ArrayVec<Work<'a>, MAX_LANES>,
                   index: &mut ArrayVec<usize, MAX_LANES>| {
        let ok = mac_wave(k, &mut mac, &mut scratch, wave, None);
        // Whether a tag verified is public (it is the result), so skipping the keystream of
        // forgeries leaks nothing and spares the work an attacker could otherwise make us do.
        let mut any = false;
        for (l, (w, i)) in wave.iter_mut().zip(index.iter()).enumerate() {
            let good = ok >> l & 1 == 1;
            results[*i] = good;
            if good {
                any = true;
            } else {
                w.data.output_mut().fill(0);
                w.data = Data::Skip;
            }
        }
        if any {
            k.xor(wave);
        }
        wave.clear();
        index.clear();
    };
    for (i, w) in works {
        wave.push(w);
        index.push(i);
        if wave.len() == K::LANES {
            run(&mut wave, &mut index);
        }
    }
    if !wave.is_empty() {
        run(&mut wave, &mut index);
    }
}
