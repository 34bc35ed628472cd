//! ChaCha20 on sixteen lanes, one job per 32-bit lane, written over [`Isa`].
//!
//! The state is held column-wise: vector `i` holds state word `i` of all sixteen lanes, so a
//! quarter round is four vector additions, four XORs and four rotations (`vprold`), with no
//! shuffles. Keys and nonces enter through a transpose, and keystream leaves through one (a
//! 16×16 transpose of 32-bit words: 64 shuffles per sixteen blocks). Block 0, whose first 32
//! bytes are the Poly1305 key, needs no transpose out: its words are already lane-wise.

use super::isa::Isa;
use crate::engine::wave::{Lanes, Work, lane_keys};

/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The sixteen state vectors of the lanes' keys and nonces, with block counter `counter` in
/// every lane.
#[inline(always)]
pub(super) fn state<I: Isa>(
    isa: I,
    keys: &Lanes<&[u8; 32]>,
    nonces: &Lanes<&[u8; 12]>,
    counter: u32,
) -> [I::V; 16] {
    // Keys: vector j holds keys j and j+4 (j < 4) or keys j+4 and j+8 (j >= 4), one per
    // 256-bit half. Arranged so, a 32-bit and a 64-bit interleave per pair and then one 128-bit
    // shuffle leave word w of every key in lane order 0..15.
    let mut k = [isa.zero(); 8];
    for j in 0..4 {
        k[j] = isa.load2x256(keys[j], keys[j + 4]);
        k[4 + j] = isa.load2x256(keys[j + 8], keys[j + 12]);
    }
    let mut t = [isa.zero(); 8];
    for i in 0..4 {
        t[2 * i] = isa.unpacklo32(k[2 * i], k[2 * i + 1]);
        t[2 * i + 1] = isa.unpackhi32(k[2 * i], k[2 * i + 1]);
    }
    // u[4m + w] holds, per 128-bit block, word w (blocks 0, 2) and word 4 + w (blocks 1, 3).
    let mut u = [isa.zero(); 8];
    for m in 0..2 {
        u[4 * m] = isa.unpacklo64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 1] = isa.unpackhi64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 2] = isa.unpacklo64(t[4 * m + 1], t[4 * m + 3]);
        u[4 * m + 3] = isa.unpackhi64(t[4 * m + 1], t[4 * m + 3]);
    }
    let mut words = [isa.zero(); 16];
    words[0] = isa.splat32(SIGMA[0]);
    words[1] = isa.splat32(SIGMA[1]);
    words[2] = isa.splat32(SIGMA[2]);
    words[3] = isa.splat32(SIGMA[3]);
    for w in 0..4 {
        words[4 + w] = isa.shuffle128::<0x88>(u[w], u[4 + w]);
        words[8 + w] = isa.shuffle128::<0xDD>(u[w], u[4 + w]);
    }
    words[12] = isa.splat32(counter);
    // Nonces: vector j holds the nonces of lanes j, j+4, j+8, j+12 (one per 128-bit block);
    // a 4×4 transpose inside each block puts word w of lane 4q+j at 32-bit lane 4q+j.
    let mut n = [isa.zero(); 4];
    for j in 0..4 {
        n[j] = isa.load4x128_partial(nonces[j], nonces[j + 4], nonces[j + 8], nonces[j + 12]);
    }
    let lo01 = isa.unpacklo32(n[0], n[1]);
    let lo23 = isa.unpacklo32(n[2], n[3]);
    let hi01 = isa.unpackhi32(n[0], n[1]);
    let hi23 = isa.unpackhi32(n[2], n[3]);
    words[13] = isa.unpacklo64(lo01, lo23);
    words[14] = isa.unpackhi64(lo01, lo23);
    words[15] = isa.unpacklo64(hi01, hi23);
    words
}

/// The twenty rounds and the final addition: sixteen blocks, column-wise.
#[inline(always)]
pub(super) fn block<I: Isa>(isa: I, s: &[I::V; 16]) -> [I::V; 16] {
    let mut v = *s;
    macro_rules! qr {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            v[$a] = isa.add32(v[$a], v[$b]);
            v[$d] = isa.rotl32::<16>(isa.xor(v[$d], v[$a]));
            v[$c] = isa.add32(v[$c], v[$d]);
            v[$b] = isa.rotl32::<12>(isa.xor(v[$b], v[$c]));
            v[$a] = isa.add32(v[$a], v[$b]);
            v[$d] = isa.rotl32::<8>(isa.xor(v[$d], v[$a]));
            v[$c] = isa.add32(v[$c], v[$d]);
            v[$b] = isa.rotl32::<7>(isa.xor(v[$b], v[$c]));
        };
    }
    for _ in 0..10 {
        qr!(0, 4, 8, 12);
        qr!(1, 5, 9, 13);
        qr!(2, 6, 10, 14);
        qr!(3, 7, 11, 15);
        qr!(0, 5, 10, 15);
        qr!(1, 6, 11, 12);
        qr!(2, 7, 8, 13);
        qr!(3, 4, 9, 14);
    }
    for i in 0..16 {
        v[i] = isa.add32(v[i], s[i]);
    }
    v
}

/// Two independent sets of sixteen blocks, their quarter rounds interleaved. A vector op's
/// result takes two cycles to reach the next on the Zen 5 development CPU, so one set's quarter-round chains leave
/// the vector pipes half idle; a second set fills them (BENCHMARKS.md: 0.59 → 0.46 c/B).
#[inline(always)]
pub(super) fn block2<I: Isa>(isa: I, s: &[I::V; 16], t: &[I::V; 16]) -> ([I::V; 16], [I::V; 16]) {
    let mut v = *s;
    let mut w = *t;
    macro_rules! qr {
        ($x:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
            $x[$a] = isa.add32($x[$a], $x[$b]);
            $x[$d] = isa.rotl32::<16>(isa.xor($x[$d], $x[$a]));
            $x[$c] = isa.add32($x[$c], $x[$d]);
            $x[$b] = isa.rotl32::<12>(isa.xor($x[$b], $x[$c]));
            $x[$a] = isa.add32($x[$a], $x[$b]);
            $x[$d] = isa.rotl32::<8>(isa.xor($x[$d], $x[$a]));
            $x[$c] = isa.add32($x[$c], $x[$d]);
            $x[$b] = isa.rotl32::<7>(isa.xor($x[$b], $x[$c]));
        };
    }
    macro_rules! both {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            qr!(v, $a, $b, $c, $d);
            qr!(w, $a, $b, $c, $d);
        };
    }
    for _ in 0..10 {
        both!(0, 4, 8, 12);
        both!(1, 5, 9, 13);
        both!(2, 6, 10, 14);
        both!(3, 7, 11, 15);
        both!(0, 5, 10, 15);
        both!(1, 6, 11, 12);
        both!(2, 7, 8, 13);
        both!(3, 4, 9, 14);
    }
    for i in 0..16 {
        v[i] = isa.add32(v[i], s[i]);
        w[i] = isa.add32(w[i], t[i]);
    }
    (v, w)
}

/// Column-wise blocks to lane-wise rows: `rows[l]` is lane `l`'s 64-byte block.
#[inline(always)]
pub(super) fn transpose<I: Isa>(isa: I, x: &[I::V; 16]) -> [I::V; 16] {
    let mut t = [isa.zero(); 16];
    for i in 0..8 {
        t[2 * i] = isa.unpacklo32(x[2 * i], x[2 * i + 1]);
        t[2 * i + 1] = isa.unpackhi32(x[2 * i], x[2 * i + 1]);
    }
    // u[4k + j] holds, in 128-bit block q, words 4k..4k+4 of lane 4q + j.
    let mut u = [isa.zero(); 16];
    for k in 0..4 {
        u[4 * k] = isa.unpacklo64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = isa.unpackhi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = isa.unpacklo64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = isa.unpackhi64(t[4 * k + 1], t[4 * k + 3]);
    }
    let mut rows = [isa.zero(); 16];
    for j in 0..4 {
        let s0 = isa.shuffle128::<0x44>(u[j], u[4 + j]);
        let s1 = isa.shuffle128::<0xEE>(u[j], u[4 + j]);
        let s2 = isa.shuffle128::<0x44>(u[8 + j], u[12 + j]);
        let s3 = isa.shuffle128::<0xEE>(u[8 + j], u[12 + j]);
        rows[j] = isa.shuffle128::<0x88>(s0, s2);
        rows[4 + j] = isa.shuffle128::<0xDD>(s0, s2);
        rows[8 + j] = isa.shuffle128::<0x88>(s1, s3);
        rows[12 + j] = isa.shuffle128::<0xDD>(s1, s3);
    }
    rows
}

/// XORs keystream blocks 1, 2, ... into every job's data; lanes past `jobs.len()` compute the
/// first job's keystream and drop it.
#[inline(always)]
pub(super) fn xor<I: Isa>(isa: I, jobs: &mut [Work<'_>]) {
    let n = jobs.len();
    if n == 0 {
        return;
    }
    let (keys, nonces) = lane_keys(jobs);
    let blocks = jobs
        .iter()
        .map(|j| j.data.len().div_ceil(64))
        .max()
        .unwrap_or(0);
    let mut s = state(isa, &keys, &nonces, 1);
    let one = isa.splat32(1);
    let mut b = 0;
    // The caller bounds messages to 2^32 - 1 blocks, so the counter does not wrap.
    while b + 1 < blocks {
        let mut t = s;
        t[12] = isa.add32(s[12], one);
        let (x, y) = block2(isa, &s, &t);
        apply(isa, jobs, b, &transpose(isa, &x));
        apply(isa, jobs, b + 1, &transpose(isa, &y));
        s[12] = isa.add32(t[12], one);
        b += 2;
    }
    if b < blocks {
        apply(isa, jobs, b, &transpose(isa, &block(isa, &s)));
    }
}

/// XORs keystream block `b` (`rows[l]` for lane `l`) into every job's data that reaches it.
#[inline(always)]
fn apply<I: Isa>(isa: I, jobs: &mut [Work<'_>], b: usize, rows: &[I::V; 16]) {
    for (l, job) in jobs.iter_mut().enumerate() {
        let Some((src, dst)) = job.data.window(b) else {
            continue;
        };
        let ks = rows[l];
        if let Ok(out) = <&mut [u8; 64]>::try_from(&mut *dst) {
            let input = match src {
                Some(s) => isa.load(s.try_into().expect("as long as dst")),
                None => isa.load(out),
            };
            isa.store(isa.xor(input, ks), out);
        } else {
            let input = match src {
                Some(s) => isa.load_partial(s),
                None => isa.load_partial(dst),
            };
            isa.store_partial(isa.xor(input, ks), dst);
        }
    }
}
