//! Poly1305 on sixteen lanes with IFMA (`vpmadd52luq`/`vpmadd52huq`), written over [`Isa`].
//!
//! Radix 2^44: an accumulator is three limbs of 44, 44 and 42 bits held in three vectors of
//! eight 64-bit lanes, and the sixteen lanes are two such groups. Group 0 holds lanes
//! 0, 1, 4, 5, 8, 9, 12, 13 and group 1 lanes 2, 3, 6, 7, 10, 11, 14, 15: that is the order in
//! which a 32-bit interleave of the ChaCha20 key block's column vectors yields each lane's 128-bit
//! `r` and `s`, and the order in which message blocks are loaded, so that neither the key nor
//! the data is ever moved lane by lane.
//!
//! One block is `h = (h + m) · r mod 2^130 - 5`: nine 52×52-bit products, each as its low and
//! its high 52 bits (eighteen IFMA instructions), where the three products that reach 2^132 use
//! `20·r` (2^132 ≡ 20), the high halves move one limb up (shifted by 8, as 2^52 = 2^44 · 2^8),
//! and one carry pass leaves every limb a few bits short of 52, which is all IFMA needs. Blocks
//! go two at a time, `h = (h + m1)·r^2 + m2·r`: the same products, but one carry pass per two
//! blocks, and the `m2·r` half does not wait for `h`, which shortens the chain a step waits on.
//! Every operation is a vector add, shift, mask or multiply: nothing depends on data but values.

use super::chacha;
use super::isa::Isa;
use crate::engine::wave::{Lanes, MAX_LANES};
use zeroize::Zeroize;

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;

/// Runs of at least this many blocks go two blocks per step ([`blocks_paired`]).
pub(super) const PAIRS_FROM: usize = 8;

/// The Poly1305 state of a wave.
pub(crate) struct Mac<V: Copy + Zeroize> {
    /// Accumulator limbs, per group.
    h: [[V; 3]; 2],
    /// `r` limbs, per group.
    r: [[V; 3]; 2],
    /// `20·r1` and `20·r2`, per group.
    r20: [[V; 2]; 2],
    /// `r^2 mod p` (limbs a few bits over their width at most), per group.
    rr: [[V; 3]; 2],
    /// `20·(r^2)1` and `20·(r^2)2`, per group.
    rr20: [[V; 2]; 2],
    /// `s` as low and high 64 bits, per group.
    s: [[V; 2]; 2],
}

impl<V: Copy + Zeroize> Drop for Mac<V> {
    fn drop(&mut self) {
        self.h.zeroize();
        self.r.zeroize();
        self.r20.zeroize();
        self.rr.zeroize();
        self.rr20.zeroize();
        self.s.zeroize();
    }
}

/// A zeroed state.
#[inline(always)]
pub(super) fn new<I: Isa>(isa: I) -> Mac<I::V> {
    let z = isa.zero();
    Mac {
        h: [[z; 3]; 2],
        r: [[z; 3]; 2],
        r20: [[z; 2]; 2],
        rr: [[z; 3]; 2],
        rr20: [[z; 2]; 2],
        s: [[z; 2]; 2],
    }
}

/// The lane of 64-bit element `e` (0..8) of group `g`.
#[inline(always)]
const fn lane_of(g: usize, e: usize) -> usize {
    4 * (e / 2) + 2 * g + e % 2
}

/// The 8-bit element mask of group `g` from a 16-bit lane mask.
#[inline(always)]
fn group_mask(lanes: u32, g: usize) -> u8 {
    let mut m = 0u8;
    for e in 0..8 {
        m |= ((lanes >> lane_of(g, e) & 1) as u8) << e;
    }
    m
}

/// The 16-bit lane mask from group `g`'s element mask.
#[inline(always)]
fn lane_mask(elems: u8, g: usize) -> u32 {
    let mut m = 0u32;
    for e in 0..8 {
        m |= ((elems >> e & 1) as u32) << lane_of(g, e);
    }
    m
}

/// One 16-byte block of every lane of group `g` as (low 64 bits, high 64 bits) vectors:
/// `block(l)` is lane `l`'s block.
#[inline(always)]
fn load_group<'a, I: Isa>(isa: I, g: usize, block: impl Fn(usize) -> &'a [u8; 16]) -> (I::V, I::V) {
    let a = isa.load4x128(
        block(2 * g),
        block(4 + 2 * g),
        block(8 + 2 * g),
        block(12 + 2 * g),
    );
    let c = isa.load4x128(
        block(2 * g + 1),
        block(5 + 2 * g),
        block(9 + 2 * g),
        block(13 + 2 * g),
    );
    (isa.unpacklo64(a, c), isa.unpackhi64(a, c))
}

/// 32-bit interleave of `a` and `b` that yields group `g`'s 64-bit lanes.
#[inline(always)]
fn interleave<I: Isa>(isa: I, g: usize, a: I::V, b: I::V) -> I::V {
    if g == 0 {
        isa.unpacklo32(a, b)
    } else {
        isa.unpackhi32(a, b)
    }
}

/// `(t, u) += a·b`: the low (`t`) and high (`u`) 52-bit halves of the nine limb products,
/// sorted by the limb they belong to, with `b20 = 20·(b1, b2)` standing in for the three that
/// reach 2^132.
#[inline(always)]
fn products<I: Isa>(
    isa: I,
    acc: ([I::V; 3], [I::V; 3]),
    a: [I::V; 3],
    b: [I::V; 3],
    b20: [I::V; 2],
) -> ([I::V; 3], [I::V; 3]) {
    let ([t0, t1, t2], [u0, u1, u2]) = acc;
    let [a0, a1, a2] = a;
    let [b0, b1, b2] = b;
    let [c1, c2] = b20;
    (
        [
            isa.madd52lo(isa.madd52lo(isa.madd52lo(t0, a0, b0), a1, c2), a2, c1),
            isa.madd52lo(isa.madd52lo(isa.madd52lo(t1, a0, b1), a1, b0), a2, c2),
            isa.madd52lo(isa.madd52lo(isa.madd52lo(t2, a0, b2), a1, b1), a2, b0),
        ],
        [
            isa.madd52hi(isa.madd52hi(isa.madd52hi(u0, a0, b0), a1, c2), a2, c1),
            isa.madd52hi(isa.madd52hi(isa.madd52hi(u1, a0, b1), a1, b0), a2, c2),
            isa.madd52hi(isa.madd52hi(isa.madd52hi(u2, a0, b2), a1, b1), a2, b0),
        ],
    )
}

/// The limbs of `t + u·2^52` (limb by limb) modulo p, with one carry pass: every limb ends a
/// few bits over its width at most.
#[inline(always)]
fn reduce<I: Isa>(isa: I, acc: ([I::V; 3], [I::V; 3])) -> [I::V; 3] {
    let ([t0, t1, t2], [u0, u1, u2]) = acc;
    let m44 = isa.splat64(M44);
    // High halves sit 52 bits up: limb 0's and limb 1's move one limb up (<< 8); limb 2's land
    // at 2^140 ≡ 5·2^10 (u2 < 2^39 even for two blocks' products, so this product is exact).
    let x0 = isa.madd52lo(t0, u2, isa.splat64(5 << 10));
    let x1 = isa.add64(t1, isa.shl64::<8>(u0));
    let x2 = isa.add64(t2, isa.shl64::<8>(u1));
    let h0 = isa.and(x0, m44);
    let x1 = isa.add64(x1, isa.shr64::<44>(x0));
    let h1 = isa.and(x1, m44);
    let x2 = isa.add64(x2, isa.shr64::<44>(x1));
    let h2 = isa.and(x2, isa.splat64(M42));
    let h0 = isa.madd52lo(h0, isa.shr64::<42>(x2), isa.splat64(5));
    [h0, h1, h2]
}

/// `new` where `mask` has a lane's bit, else `old`.
#[inline(always)]
fn keep<I: Isa>(isa: I, old: [I::V; 3], new: [I::V; 3], mask: u8) -> [I::V; 3] {
    if mask == 0xff {
        return new;
    }
    [
        isa.blend64(mask, old[0], new[0]),
        isa.blend64(mask, old[1], new[1]),
        isa.blend64(mask, old[2], new[2]),
    ]
}

/// A 16-byte block of each lane of a group as radix-2^44 limbs, with the 2^128 pad bit.
#[inline(always)]
fn limbs<I: Isa>(isa: I, (lo, hi): (I::V, I::V)) -> [I::V; 3] {
    let m44 = isa.splat64(M44);
    [
        isa.and(lo, m44),
        isa.and(isa.or(isa.shr64::<44>(lo), isa.shl64::<20>(hi)), m44),
        isa.or(isa.shr64::<24>(hi), isa.splat64(1 << 40)),
    ]
}

/// Block 0 of ChaCha20 for every lane becomes its `r` (clamped) and `s`; accumulators restart.
#[inline(always)]
pub(super) fn init<I: Isa>(
    isa: I,
    mac: &mut Mac<I::V>,
    keys: &Lanes<&[u8; 32]>,
    nonces: &Lanes<&[u8; 12]>,
) {
    let x = chacha::block(isa, &chacha::state(isa, keys, nonces, 0));
    let m44 = isa.splat64(M44);
    let twenty = isa.splat64(20);
    for g in 0..2 {
        let lo = isa.and(
            interleave(isa, g, x[0], x[1]),
            isa.splat64(0x0fff_fffc_0fff_ffff),
        );
        let hi = isa.and(
            interleave(isa, g, x[2], x[3]),
            isa.splat64(0x0fff_fffc_0fff_fffc),
        );
        let r0 = isa.and(lo, m44);
        let r1 = isa.and(isa.or(isa.shr64::<44>(lo), isa.shl64::<20>(hi)), m44);
        let r2 = isa.shr64::<24>(hi);
        mac.r[g] = [r0, r1, r2];
        // r1 < 2^44 and r2 < 2^36, so 20·r fits IFMA's 52-bit low product exactly.
        let z = isa.zero();
        mac.r20[g] = [isa.madd52lo(z, r1, twenty), isa.madd52lo(z, r2, twenty)];
        // r^2 for two blocks per step; its limbs stay below 2^45, so 20·(r^2) is exact too.
        let rr = reduce(
            isa,
            products(isa, ([z; 3], [z; 3]), mac.r[g], mac.r[g], mac.r20[g]),
        );
        mac.rr[g] = rr;
        mac.rr20[g] = [
            isa.madd52lo(z, rr[1], twenty),
            isa.madd52lo(z, rr[2], twenty),
        ];
        mac.s[g] = [
            interleave(isa, g, x[4], x[5]),
            interleave(isa, g, x[6], x[7]),
        ];
        mac.h[g] = [z; 3];
    }
}

/// Every lane's `n` blocks as 16-byte arrays (each input has at least `16·n` bytes).
#[inline(always)]
fn chunks<'a>(n: usize, inputs: &Lanes<&'a [u8]>) -> Lanes<&'a [[u8; 16]]> {
    let mut chunks: Lanes<&[[u8; 16]]> = [&[]; MAX_LANES];
    for (c, input) in chunks.iter_mut().zip(inputs) {
        *c = &input.as_chunks::<16>().0[..n];
    }
    chunks
}

/// Absorbs `n` blocks of `inputs[l]` into every lane set in `active`, one block per step.
/// Short runs (a deposit tag's few blocks, tails, the length block) take this path: it keeps
/// only `r` in registers.
#[inline(always)]
pub(super) fn blocks<I: Isa>(
    isa: I,
    mac: &mut Mac<I::V>,
    n: usize,
    inputs: &Lanes<&[u8]>,
    active: u32,
) {
    let chunks = chunks(n, inputs);
    let masks = [group_mask(active, 0), group_mask(active, 1)];
    let z = isa.zero();
    let mut h = mac.h;
    let (r, r20) = (mac.r, mac.r20);
    #[allow(clippy::needless_range_loop)] // b indexes every lane's blocks at once
    for b in 0..n {
        for g in 0..2 {
            let m = limbs(isa, load_group(isa, g, |l| &chunks[l][b]));
            let x = [
                isa.add64(h[g][0], m[0]),
                isa.add64(h[g][1], m[1]),
                isa.add64(h[g][2], m[2]),
            ];
            let new = reduce(isa, products(isa, ([z; 3], [z; 3]), x, r[g], r20[g]));
            h[g] = keep(isa, h[g], new, masks[g]);
        }
    }
    mac.h = h;
}

/// [`blocks`] two blocks per step, `h = (h + m1)·r^2 + m2·r`, for runs of [`PAIRS_FROM`]
/// blocks or more: one carry pass per two blocks, and the `m2·r` products do not depend on
/// `h`, so they start while the previous step finishes. An odd last block goes alone.
#[inline(always)]
pub(super) fn blocks_paired<I: Isa>(
    isa: I,
    mac: &mut Mac<I::V>,
    n: usize,
    inputs: &Lanes<&[u8]>,
    active: u32,
) {
    let chunks = chunks(n, inputs);
    let masks = [group_mask(active, 0), group_mask(active, 1)];
    let z = isa.zero();
    let mut h = mac.h;
    let (r, r20, rr, rr20) = (mac.r, mac.r20, mac.rr, mac.rr20);
    for b in (0..n - n % 2).step_by(2) {
        for g in 0..2 {
            let m1 = limbs(isa, load_group(isa, g, |l| &chunks[l][b]));
            let m2 = limbs(isa, load_group(isa, g, |l| &chunks[l][b + 1]));
            let acc = products(isa, ([z; 3], [z; 3]), m2, r[g], r20[g]);
            let x = [
                isa.add64(h[g][0], m1[0]),
                isa.add64(h[g][1], m1[1]),
                isa.add64(h[g][2], m1[2]),
            ];
            let new = reduce(isa, products(isa, acc, x, rr[g], rr20[g]));
            h[g] = keep(isa, h[g], new, masks[g]);
        }
    }
    mac.h = h;
    if n % 2 == 1 {
        let last: Lanes<&[u8]> = core::array::from_fn(|l| &inputs[l][16 * (n - 1)..]);
        blocks(isa, mac, 1, &last, active);
    }
}

/// The finished tags of group `g` as (low 64 bits, high 64 bits): `(h mod p) + s mod 2^128`.
#[inline(always)]
fn finish<I: Isa>(isa: I, mac: &Mac<I::V>, g: usize) -> (I::V, I::V) {
    let m44 = isa.splat64(M44);
    let m42 = isa.splat64(M42);
    let [mut h0, mut h1, mut h2] = mac.h[g];
    // Two carry passes: h0, h1 < 2^44 and h2 ≤ 2^42, so h < 2p.
    for _ in 0..2 {
        h1 = isa.add64(h1, isa.shr64::<44>(h0));
        h0 = isa.and(h0, m44);
        h2 = isa.add64(h2, isa.shr64::<44>(h1));
        h1 = isa.and(h1, m44);
        let c = isa.shr64::<42>(h2);
        h2 = isa.and(h2, m42);
        h0 = isa.add64(h0, isa.add64(c, isa.shl64::<2>(c)));
    }
    h1 = isa.add64(h1, isa.shr64::<44>(h0));
    h0 = isa.and(h0, m44);
    h2 = isa.add64(h2, isa.shr64::<44>(h1));
    h1 = isa.and(h1, m44);
    // g = h + 5 - 2^130; use it where it does not go negative (h ≥ p), chosen by mask.
    let g0 = isa.add64(h0, isa.splat64(5));
    let g1 = isa.add64(h1, isa.shr64::<44>(g0));
    let g0 = isa.and(g0, m44);
    let g2 = isa.add64(h2, isa.shr64::<44>(g1));
    let g1 = isa.and(g1, m44);
    let use_g = isa.sub64(isa.zero(), isa.shr64::<42>(g2));
    let g2 = isa.and(g2, m42);
    let h0 = isa.xor(h0, isa.and(isa.xor(h0, g0), use_g));
    let h1 = isa.xor(h1, isa.and(isa.xor(h1, g1), use_g));
    let h2 = isa.xor(h2, isa.and(isa.xor(h2, g2), use_g));
    // + s, modulo 2^128.
    let [slo, shi] = mac.s[g];
    let t0 = isa.add64(h0, isa.and(slo, m44));
    let s1 = isa.and(isa.or(isa.shr64::<44>(slo), isa.shl64::<20>(shi)), m44);
    let t1 = isa.add64(isa.add64(h1, s1), isa.shr64::<44>(t0));
    let t0 = isa.and(t0, m44);
    let t2 = isa.add64(isa.add64(h2, isa.shr64::<24>(shi)), isa.shr64::<44>(t1));
    let t1 = isa.and(t1, m44);
    (
        isa.or(t0, isa.shl64::<44>(t1)),
        isa.or(isa.shr64::<20>(t1), isa.shl64::<24>(t2)),
    )
}

/// Bit `l` set where lane `l`'s tag equals `expected[l]`.
#[inline(always)]
pub(super) fn verify<I: Isa>(isa: I, mac: &Mac<I::V>, expected: &Lanes<&[u8; 16]>) -> u32 {
    let mut ok = 0u32;
    for g in 0..2 {
        let (lo, hi) = finish(isa, mac, g);
        let (elo, ehi) = load_group(isa, g, |l| expected[l]);
        ok |= lane_mask(isa.eq64(lo, elo) & isa.eq64(hi, ehi), g);
    }
    ok
}

/// Every lane's tag.
#[inline(always)]
pub(super) fn tags<I: Isa>(isa: I, mac: &Mac<I::V>, out: &mut Lanes<[u8; 16]>) {
    debug_assert_eq!(MAX_LANES, 16);
    for g in 0..2 {
        let (lo, hi) = finish(isa, mac, g);
        // Per 128-bit block q: (element 2q, element 2q+1) = lanes 4q+2g and 4q+2g+1.
        let even = isa.unpacklo64(lo, hi);
        let odd = isa.unpackhi64(lo, hi);
        isa.store128::<0>(even, &mut out[2 * g]);
        isa.store128::<1>(even, &mut out[4 + 2 * g]);
        isa.store128::<2>(even, &mut out[8 + 2 * g]);
        isa.store128::<3>(even, &mut out[12 + 2 * g]);
        isa.store128::<0>(odd, &mut out[2 * g + 1]);
        isa.store128::<1>(odd, &mut out[5 + 2 * g]);
        isa.store128::<2>(odd, &mut out[9 + 2 * g]);
        isa.store128::<3>(odd, &mut out[13 + 2 * g]);
    }
}
