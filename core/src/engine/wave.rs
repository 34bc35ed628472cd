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

/// One verification: a tag over `aad` with an empty message.
#[derive(Clone, Copy)]
pub(crate) struct MacJob<'a> {
    pub key: &'a [u8; 32],
    pub nonce: &'a [u8; 12],
    pub aad: &'a [u8],
    pub tag: &'a [u8; TAG_LEN],
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

/// The blocks a lane absorbs that are not whole blocks of a caller's buffer: the padded tails
/// of its AAD and ciphertext and its length block. Written once per wave, before the whole
/// blocks are absorbed, so that the stores have long left the store buffer when they are read.
#[repr(C, align(64))]
struct Tails {
    aad: Lanes<[u8; 16]>,
    ct: Lanes<[u8; 16]>,
    lens: Lanes<[u8; 16]>,
}

impl Tails {
    fn new() -> Self {
        Self {
            aad: [[0; 16]; MAX_LANES],
            ct: [[0; 16]; MAX_LANES],
            lens: [[0; 16]; MAX_LANES],
        }
    }
}

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

/// A mask with the low `n` bits set.
#[inline(always)]
fn low_bits(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

/// Absorbs the whole blocks of `segs[l]` into every lane, in as few calls as the lengths allow.
#[inline(always)]
fn absorb_whole<K: Kernel>(k: K, mac: &mut K::Mac, segs: &Lanes<&[u8]>) {
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
        let fill = &segs[first][16 * off[first]..16 * (off[first] + n)];
        let inputs: Lanes<&[u8]> = core::array::from_fn(|l| {
            if l < K::LANES && active >> l & 1 == 1 {
                &segs[l][16 * off[l]..16 * (off[l] + n)]
            } else {
                fill
            }
        });
        k.mac_blocks(mac, n, &inputs, active);
        for (l, o) in off.iter_mut().enumerate().take(K::LANES) {
            if active >> l & 1 == 1 {
                *o += n;
            }
        }
    }
}

/// Absorbs one block per lane from `blocks` for the lanes whose segment has a partial tail.
#[inline(always)]
fn absorb_tails<K: Kernel>(k: K, mac: &mut K::Mac, segs: &Lanes<&[u8]>, blocks: &Lanes<[u8; 16]>) {
    let mut active = 0u32;
    for (l, s) in segs.iter().enumerate().take(K::LANES) {
        if s.len() % 16 != 0 {
            active |= 1 << l;
        }
    }
    if active != 0 {
        let inputs: Lanes<&[u8]> = core::array::from_fn(|l| &blocks[l][..]);
        k.mac_blocks(mac, 1, &inputs, active);
    }
}

/// Poly1305 over `aad ‖ pad ‖ ct ‖ pad ‖ le64(|aad|) ‖ le64(|ct|)` for every lane, after
/// `mac_init`.
#[inline(always)]
fn absorb<K: Kernel>(
    k: K,
    mac: &mut K::Mac,
    tails: &mut Tails,
    aad: &Lanes<&[u8]>,
    ct: &Lanes<&[u8]>,
) {
    for l in 0..K::LANES {
        tails.aad[l] = pad_tail(aad[l]);
        tails.ct[l] = pad_tail(ct[l]);
        let lens = aad[l].len() as u128 | ((ct[l].len() as u128) << 64);
        tails.lens[l] = lens.to_le_bytes();
    }
    absorb_whole(k, mac, aad);
    absorb_tails(k, mac, aad, &tails.aad);
    absorb_whole(k, mac, ct);
    absorb_tails(k, mac, ct, &tails.ct);
    let lens: Lanes<&[u8]> = core::array::from_fn(|l| &tails.lens[l][..]);
    k.mac_blocks(mac, 1, &lens, low_bits(K::LANES));
}

/// Lane `l`'s job index in a wave of `n` jobs: idle lanes repeat job 0.
#[inline(always)]
fn lane(l: usize, n: usize) -> usize {
    if l < n { l } else { 0 }
}

/// Verifies every job; `results[i]` gets the verdict of the job given with index `i`.
pub(crate) fn verify<'a, K: Kernel>(
    k: K,
    jobs: impl Iterator<Item = (usize, MacJob<'a>)>,
    results: &mut [bool],
) {
    let mut mac = k.new_mac();
    let mut tails = Tails::new();
    let mut wave: ArrayVec<(usize, MacJob<'a>), MAX_LANES> = ArrayVec::new();
    let mut run = |wave: &mut ArrayVec<(usize, MacJob<'a>), MAX_LANES>| {
        let n = wave.len();
        let job = |l: usize| &wave[lane(l, n)].1;
        let keys = core::array::from_fn(|l| job(l).key);
        let nonces = core::array::from_fn(|l| job(l).nonce);
        k.mac_init(&mut mac, &keys, &nonces);
        let aad = core::array::from_fn(|l| job(l).aad);
        absorb(k, &mut mac, &mut tails, &aad, &[&[]; MAX_LANES]);
        let expected = core::array::from_fn(|l| job(l).tag);
        let ok = k.mac_verify(&mut mac, &expected);
        for (l, (i, _)) in wave.iter().enumerate() {
            results[*i] = ok >> l & 1 == 1;
        }
        wave.clear();
    };
    for job in jobs {
        wave.push(job);
        if wave.len() == K::LANES {
            run(&mut wave);
        }
    }
    if !wave.is_empty() {
        run(&mut wave);
    }
}

/// Seals every work item: keystream into its data, then its tag.
pub(crate) fn seal<'a, K: Kernel>(k: K, works: impl Iterator<Item = Work<'a>>) {
    let mut mac = k.new_mac();
    let mut tails = Tails::new();
    let mut tags = [[0u8; TAG_LEN]; MAX_LANES];
    let mut wave: ArrayVec<Work<'a>, MAX_LANES> = ArrayVec::new();
    let mut run = |wave: &mut ArrayVec<Work<'a>, MAX_LANES>| {
        k.xor(wave);
        let n = wave.len();
        let job = |l: usize| &wave[lane(l, n)];
        let keys = core::array::from_fn(|l| job(l).key);
        let nonces = core::array::from_fn(|l| job(l).nonce);
        k.mac_init(&mut mac, &keys, &nonces);
        let aad = core::array::from_fn(|l| job(l).aad);
        let ct = core::array::from_fn(|l| job(l).data.output());
        absorb(k, &mut mac, &mut tails, &aad, &ct);
        k.mac_tags(&mut mac, &mut tags);
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
    let mut tails = Tails::new();
    let mut wave: ArrayVec<Work<'a>, MAX_LANES> = ArrayVec::new();
    let mut index: ArrayVec<usize, MAX_LANES> = ArrayVec::new();
    let mut run = |wave: &mut ArrayVec<Work<'a>, MAX_LANES>,
                   index: &mut ArrayVec<usize, MAX_LANES>| {
        let n = wave.len();
        let ok = {
            let job = |l: usize| &wave[lane(l, n)];
            let keys = core::array::from_fn(|l| job(l).key);
            let nonces = core::array::from_fn(|l| job(l).nonce);
            k.mac_init(&mut mac, &keys, &nonces);
            let aad = core::array::from_fn(|l| job(l).aad);
            let ct = core::array::from_fn(|l| job(l).data.input());
            absorb(k, &mut mac, &mut tails, &aad, &ct);
            let expected: Lanes<&[u8; TAG_LEN]> = core::array::from_fn(|l| match &job(l).tag {
                Tag::In(t) => <&[u8; TAG_LEN]>::try_from(*t).unwrap_or(&[0; TAG_LEN]),
                Tag::Out(_) => &[0; TAG_LEN],
            });
            k.mac_verify(&mut mac, &expected)
        };
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
