//! Backend-independent batch logic: which ChaCha20 blocks and Poly1305 blocks to compute, and
//! in which lanes. Written once over the [`Kernel`] trait, so every backend schedules alike and
//! the SIMD modules hold only arithmetic.

use super::{BLOCK, Kernel, PolyLanes, chacha_state};
use crate::batch::VerifyJob;
use crate::suite::TAG_LEN;
use zeroize::{Zeroize, Zeroizing};

/// The longest message one job may carry: the 32-bit block counter starts at 1.
pub const MAX_MESSAGE: usize = BLOCK * (u32::MAX as usize);

/// Most lanes any backend has; sizes the stack buffers below.
const MAX_LANES: usize = 16;

/// Most blocks handed to the Poly1305 lanes in one call (bounds the zero buffer for idle lanes).
const MAX_STEP: usize = 256;
static ZERO_BLOCKS: [u8; 16 * MAX_STEP] = [0; 16 * MAX_STEP];

/// The one-time Poly1305 key of each (key, nonce): the first 32 bytes of block 0.
fn poly_keys<'a, K: Kernel>(
    pairs: impl ExactSizeIterator<Item = (&'a [u8; 32], &'a [u8; 12])>,
) -> Zeroizing<Vec<[u8; 32]>> {
    let lanes = K::CHACHA_LANES.min(MAX_LANES);
    let mut keys = Zeroizing::new(Vec::with_capacity(pairs.len()));
    let mut states = Zeroizing::new([[0u32; 16]; MAX_LANES]);
    let mut out = Zeroizing::new([[0u8; BLOCK]; MAX_LANES]);
    let mut filled = 0;
    let flush =
        |filled: usize, states: &[[u32; 16]], out: &mut [[u8; BLOCK]], keys: &mut Vec<[u8; 32]>| {
            K::chacha_blocks(&states[..filled], &mut out[..filled]);
            for block in &out[..filled] {
                let mut k = [0u8; 32];
                k.copy_from_slice(&block[..32]);
                keys.push(k);
            }
        };
    for (key, nonce) in pairs {
        states[filled] = chacha_state(key, nonce, 0);
        filled += 1;
        if filled == lanes {
            flush(filled, &states[..], &mut out[..], &mut keys);
            filled = 0;
        }
    }
    if filled > 0 {
        flush(filled, &states[..], &mut out[..], &mut keys);
    }
    keys
}

/// Where keystream goes.
pub(crate) enum Data<'a> {
    /// `dst = src ^ keystream`.
    Copy { src: &'a [u8], dst: &'a mut [u8] },
    /// `buf ^= keystream`.
    InPlace(&'a mut [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Copy { src, .. } => src.len(),
            Data::InPlace(b) => b.len(),
        }
    }

    /// The bytes before the keystream is applied.
    fn input(&self) -> &[u8] {
        match self {
            Data::Copy { src, .. } => src,
            Data::InPlace(b) => b,
        }
    }

    /// The bytes after the keystream is applied (or, before, wherever it will go).
    fn output(&self) -> &[u8] {
        match self {
            Data::Copy { dst, .. } => dst,
            Data::InPlace(b) => b,
        }
    }

    fn output_mut(&mut self) -> &mut [u8] {
        match self {
            Data::Copy { dst, .. } => dst,
            Data::InPlace(b) => b,
        }
    }

    fn xor(&mut self, at: usize, ks: &[u8]) {
        // Whole blocks go through fixed-size arrays, which the compiler turns into wide vector
        // XORs; only a message's last partial block takes the byte loop.
        if let Ok(ks) = <&[u8; BLOCK]>::try_from(ks) {
            match self {
                Data::Copy { src, dst } => {
                    let s: &[u8; BLOCK] = src[at..at + BLOCK].try_into().expect("block in range");
                    let d: &mut [u8; BLOCK] = (&mut dst[at..at + BLOCK])
                        .try_into()
                        .expect("block in range");
                    for i in 0..BLOCK {
                        d[i] = s[i] ^ ks[i];
                    }
                }
                Data::InPlace(b) => {
                    let d: &mut [u8; BLOCK] =
                        (&mut b[at..at + BLOCK]).try_into().expect("block in range");
                    for i in 0..BLOCK {
                        d[i] ^= ks[i];
                    }
                }
            }
            return;
        }
        match self {
            Data::Copy { src, dst } => {
                for ((d, s), k) in dst[at..at + ks.len()]
                    .iter_mut()
                    .zip(&src[at..at + ks.len()])
                    .zip(ks)
                {
                    *d = s ^ k;
                }
            }
            Data::InPlace(b) => {
                for (d, k) in b[at..at + ks.len()].iter_mut().zip(ks) {
                    *d ^= k;
                }
            }
        }
    }
}

/// One message to encrypt or decrypt with ChaCha20 from block counter 1.
pub(crate) struct XorItem<'a> {
    pub key: &'a [u8; 32],
    pub nonce: &'a [u8; 12],
    pub data: Data<'a>,
}

/// Applies the keystream to every item, filling the lanes with (item, block) pairs.
pub(crate) fn chacha_xor<K: Kernel>(items: &mut [XorItem<'_>]) {
    let lanes = K::CHACHA_LANES.min(MAX_LANES);
    let mut states = Zeroizing::new([[0u32; 16]; MAX_LANES]);
    let mut out = Zeroizing::new([[0u8; BLOCK]; MAX_LANES]);
    let mut refs = [(0usize, 0usize); MAX_LANES];
    let mut filled = 0;
    let flush = |filled: usize,
                 states: &[[u32; 16]],
                 out: &mut [[u8; BLOCK]],
                 refs: &[(usize, usize)],
                 items: &mut [XorItem<'_>]| {
        K::chacha_blocks(&states[..filled], &mut out[..filled]);
        for (lane, &(item, block)) in refs[..filled].iter().enumerate() {
            let it = &mut items[item];
            let at = block * BLOCK;
            let n = (it.data.len() - at).min(BLOCK);
            it.data.xor(at, &out[lane][..n]);
        }
    };
    for i in 0..items.len() {
        let mut base = chacha_state(items[i].key, items[i].nonce, 0);
        let blocks = items[i].data.len().div_ceil(BLOCK);
        for b in 0..blocks {
            states[filled] = base;
            // The caller bounds messages by MAX_MESSAGE, so the counter does not wrap.
            states[filled][12] = 1 + b as u32;
            refs[filled] = (i, b);
            filled += 1;
            if filled == lanes {
                flush(filled, &states[..], &mut out[..], &refs, items);
                filled = 0;
            }
        }
        base.zeroize();
    }
    if filled > 0 {
        flush(filled, &states[..], &mut out[..], &refs, items);
    }
}

/// The AEAD's Poly1305 input for one job: `aad || pad || ct || pad || le64(aad) || le64(ct)`.
pub(crate) struct MacInput<'a> {
    pub key: &'a [u8; 32],
    pub aad: &'a [u8],
    pub ct: &'a [u8],
}

/// The parts of one job's Poly1305 input that are not whole blocks in the caller's buffers,
/// copied into whole blocks: a short AAD entirely (or a long one's padded tail), and the end of
/// the input (the ciphertext's padded tail, or the AAD's when there is no ciphertext, followed by
/// the length block). Merging them keeps the number of scheduling steps per job at most four.
#[derive(Clone, Copy)]
struct Scratch {
    head: [u8; 48],
    head_len: usize,
    end: [u8; 32],
    end_len: usize,
}

/// Copied AADs up to this size go wholly into the scratch head (seal and open use 24 bytes).
const SHORT_AAD: usize = 32;

impl Scratch {
    fn new(m: &MacInput<'_>) -> Self {
        let mut s = Scratch {
            head: [0; 48],
            head_len: 0,
            end: [0; 32],
            end_len: 0,
        };
        let (a, c) = (m.aad.len(), m.ct.len());
        let short_aad = a <= SHORT_AAD;
        if short_aad {
            s.head[..a].copy_from_slice(m.aad);
            s.head_len = a.div_ceil(16) * 16;
        } else if c > 0 && a % 16 != 0 {
            s.head[..a % 16].copy_from_slice(&m.aad[a - a % 16..]);
            s.head_len = 16;
        }
        // The block before the lengths: the ciphertext's tail, or a long AAD's tail when there
        // is no ciphertext.
        let tail: &[u8] = if c > 0 {
            &m.ct[c - c % 16..]
        } else if !short_aad {
            &m.aad[a - a % 16..]
        } else {
            &[]
        };
        s.end[..tail.len()].copy_from_slice(tail);
        let lens_at = tail.len().div_ceil(16) * 16;
        s.end[lens_at..lens_at + 8].copy_from_slice(&(a as u64).to_le_bytes());
        s.end[lens_at + 8..lens_at + 16].copy_from_slice(&(c as u64).to_le_bytes());
        s.end_len = lens_at + 16;
        s
    }
}

/// Up to four runs of whole blocks per job, in Poly1305 order.
#[derive(Clone, Copy)]
struct Segments<'a> {
    runs: [&'a [u8]; 4],
}

impl<'a> Segments<'a> {
    fn new(m: &MacInput<'a>, s: &'a Scratch) -> Self {
        let (a, c) = (m.aad.len(), m.ct.len());
        let aad_full: &[u8] = if a <= SHORT_AAD {
            &[]
        } else {
            &m.aad[..a - a % 16]
        };
        Segments {
            runs: [
                aad_full,
                &s.head[..s.head_len],
                &m.ct[..c - c % 16],
                &s.end[..s.end_len],
            ],
        }
    }
}

/// Computes every job's tag, one job per Poly1305 lane, refilling lanes as jobs finish.
pub(crate) fn mac<K: Kernel>(inputs: &[MacInput<'_>], tags: &mut [[u8; 16]]) {
    let lanes = K::Lanes::LANES;
    let scratch: Vec<Scratch> = inputs.iter().map(Scratch::new).collect();
    let segs: Vec<Segments<'_>> = inputs
        .iter()
        .zip(&scratch)
        .map(|(m, s)| Segments::new(m, s))
        .collect();

    let mut state = K::Lanes::default();
    // Per lane: (job, run, offset in blocks within the run), or None when parked.
    let mut lane_job: [Option<(usize, usize, usize)>; MAX_LANES] = [None; MAX_LANES];
    let mut next_job = 0;
    loop {
        for (l, slot) in lane_job.iter_mut().enumerate().take(lanes) {
            if slot.is_none() && next_job < inputs.len() {
                state.set_lane(l, inputs[next_job].key);
                *slot = first_run(&segs[next_job], next_job);
                next_job += 1;
            }
        }
        let mut n = MAX_STEP;
        let mut active = false;
        for (job, run, off) in lane_job.iter().take(lanes).flatten() {
            active = true;
            n = n.min(segs[*job].runs[*run].len() / 16 - off);
        }
        if !active {
            break;
        }
        let mut ins: [&[u8]; MAX_LANES] = [&ZERO_BLOCKS[..]; MAX_LANES];
        for (l, slot) in lane_job.iter().enumerate().take(lanes) {
            if let Some((job, run, off)) = slot {
                ins[l] = &segs[*job].runs[*run][16 * off..16 * (off + n)];
            }
        }
        state.blocks(n, &ins[..lanes]);
        for (l, slot) in lane_job.iter_mut().enumerate().take(lanes) {
            if let Some((job, run, off)) = *slot {
                let off = off + n;
                if off < segs[job].runs[run].len() / 16 {
                    *slot = Some((job, run, off));
                } else if let Some(next) = next_run(&segs[job], job, run) {
                    *slot = Some(next);
                } else {
                    tags[job] = state.finish_lane(l);
                    state.set_lane(l, &[0; 32]);
                    *slot = None;
                }
            }
        }
    }
}

fn first_run(s: &Segments<'_>, job: usize) -> Option<(usize, usize, usize)> {
    (0..4).find(|&r| !s.runs[r].is_empty()).map(|r| (job, r, 0))
}

fn next_run(s: &Segments<'_>, job: usize, run: usize) -> Option<(usize, usize, usize)> {
    (run + 1..4)
        .find(|&r| !s.runs[r].is_empty())
        .map(|r| (job, r, 0))
}

/// Compares tags without an early exit: every byte is XORed and ORed in, and only the final
/// (public) verdict is branched on.
fn tags_equal(a: &[u8; 16], b: &[u8]) -> bool {
    if b.len() != 16 {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub(crate) fn verify<K: Kernel>(jobs: &[&VerifyJob<'_>], results: &mut [bool]) {
    let keys = poly_keys::<K>(jobs.iter().map(|j| (j.key.expose(), j.nonce)));
    let inputs: Vec<MacInput<'_>> = jobs
        .iter()
        .zip(keys.iter())
        .map(|(j, k)| MacInput {
            key: k,
            aad: j.aad,
            ct: &[],
        })
        .collect();
    let mut tags = Zeroizing::new(vec![[0u8; TAG_LEN]; jobs.len()]);
    mac::<K>(&inputs, &mut tags);
    for ((r, t), j) in results.iter_mut().zip(tags.iter()).zip(jobs) {
        *r = tags_equal(t, j.tag);
    }
}

/// One seal, whatever the caller's buffer layout.
pub(crate) struct SealWork<'a> {
    pub key: &'a [u8; 32],
    pub nonce: &'a [u8; 12],
    pub aad: &'a [u8],
    pub data: Data<'a>,
    pub tag: &'a mut [u8],
}

/// One open, whatever the caller's buffer layout.
pub(crate) struct OpenWork<'a> {
    pub key: &'a [u8; 32],
    pub nonce: &'a [u8; 12],
    pub aad: &'a [u8],
    pub data: Data<'a>,
    pub tag: &'a [u8],
}

pub(crate) fn seal<K: Kernel>(works: Vec<SealWork<'_>>) {
    let keys = poly_keys::<K>(works.iter().map(|w| (w.key, w.nonce)));
    let mut items = Vec::with_capacity(works.len());
    let mut tags = Vec::with_capacity(works.len());
    let mut aads = Vec::with_capacity(works.len());
    for w in works {
        items.push(XorItem {
            key: w.key,
            nonce: w.nonce,
            data: w.data,
        });
        tags.push(w.tag);
        aads.push(w.aad);
    }
    chacha_xor::<K>(&mut items);
    let mut out = vec![[0u8; TAG_LEN]; items.len()];
    {
        let inputs: Vec<MacInput<'_>> = items
            .iter()
            .zip(keys.iter())
            .zip(aads)
            .map(|((it, k), aad)| MacInput {
                key: k,
                aad,
                ct: it.data.output(),
            })
            .collect();
        mac::<K>(&inputs, &mut out);
    }
    for (t, o) in tags.into_iter().zip(&out) {
        t.copy_from_slice(o);
    }
}

pub(crate) fn open<K: Kernel>(works: Vec<OpenWork<'_>>, results: &mut [bool]) {
    let keys = poly_keys::<K>(works.iter().map(|w| (w.key, w.nonce)));
    let mut tags = vec![[0u8; TAG_LEN]; works.len()];
    {
        let inputs: Vec<MacInput<'_>> = works
            .iter()
            .zip(keys.iter())
            .map(|(w, k)| MacInput {
                key: k,
                aad: w.aad,
                ct: w.data.input(),
            })
            .collect();
        mac::<K>(&inputs, &mut tags);
    }
    for ((r, t), w) in results.iter_mut().zip(&tags).zip(&works) {
        *r = tags_equal(t, w.tag);
    }
    // Whether a tag verified is public (it is the result), so skipping forgeries leaks nothing
    // and spares the keystream work an attacker could otherwise make us do.
    let mut items: Vec<XorItem<'_>> = Vec::with_capacity(works.len());
    for (w, ok) in works.into_iter().zip(results.iter()) {
        let mut data = w.data;
        if *ok {
            items.push(XorItem {
                key: w.key,
                nonce: w.nonce,
                data,
            });
        } else {
            data.output_mut().fill(0);
        }
    }
    chacha_xor::<K>(&mut items);
}
