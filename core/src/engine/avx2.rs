//! The AVX2 backend: eight jobs per wave. ChaCha20 runs one job per 32-bit lane of a ymm
//! register (column-wise state, 8×8 transposes in and out); Poly1305 runs on two groups of four
//! 64-bit lanes with 26-bit limbs (`vpmuludq`), the groups interleaved so that one's multiply
//! latency hides behind the other's. Keys go from the ChaCha20 block into Poly1305 limbs, and
//! tags are finished and compared, without leaving vector registers.
//!
//! Constant time: only vector adds, XORs, shifts, shuffles, compares used as masks and
//! 32×32→64 multiplies touch secret values; no branch or address depends on a key, data or a
//! tag. Which lanes a step masks depends only on lengths.
#![allow(unsafe_code)]

use super::cpu::Avx2;
use super::wave::{Kernel, Lanes, Work, lane_keys};
use crate::suite::TAG_LEN;
use core::arch::x86_64::*;
use zeroize::Zeroize;

/// The AVX2 kernel. Made only from an [`Avx2`] token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Kernel(pub(crate) Avx2);

const M26: u64 = (1 << 26) - 1;

/// Poly1305 state of a wave of eight: per group (lanes 0-3, lanes 4-7) five 26-bit limbs of
/// the accumulator, of `r` and of `5·r`, and `s` as low and high 64 bits.
pub(crate) struct Mac {
    h: [[__m256i; 5]; 2],
    r: [[__m256i; 5]; 2],
    r5: [[__m256i; 5]; 2],
    s: [[__m256i; 2]; 2],
}

impl Drop for Mac {
    fn drop(&mut self) {
        self.h.zeroize();
        self.r.zeroize();
        self.r5.zeroize();
        self.s.zeroize();
    }
}

impl Kernel for Avx2Kernel {
    const LANES: usize = 8;
    type Mac = Mac;

    fn new_mac(self) -> Mac {
        // SAFETY: `self.0` proves AVX2.
        let z = unsafe { _mm256_setzero_si256() };
        Mac {
            h: [[z; 5]; 2],
            r: [[z; 5]; 2],
            r5: [[z; 5]; 2],
            s: [[z; 2]; 2],
        }
    }

    fn mac_init(self, mac: &mut Mac, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>) {
        // SAFETY: `self.0` is an `Avx2` token, made only after the CPU was found to have AVX2.
        unsafe { mac_init(mac, keys, nonces) }
    }

    fn mac_blocks(self, mac: &mut Mac, n: usize, inputs: &Lanes<&[u8]>, active: u32) {
        for i in &inputs[..8] {
            assert!(i.len() >= 16 * n, "every lane has n blocks");
        }
        // SAFETY: AVX2 as above; every lane's input holds 16·n bytes (asserted just above).
        unsafe { mac_blocks(mac, n, inputs, active) }
    }

    fn mac_verify(self, mac: &mut Mac, expected: &Lanes<&[u8; TAG_LEN]>) -> u32 {
        // SAFETY: AVX2 as above.
        unsafe { mac_verify(mac, expected) }
    }

    fn mac_tags(self, mac: &mut Mac, out: &mut Lanes<[u8; TAG_LEN]>) {
        // SAFETY: AVX2 as above.
        unsafe { mac_tags(mac, out) }
    }

    fn xor(self, jobs: &mut [Work<'_>]) {
        // SAFETY: AVX2 as above.
        unsafe { xor(jobs) }
    }
}

/// 8×8 transpose of 32-bit elements: row i, column j → row j, column i.
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256(u0, u4, 0x20),
        _mm256_permute2x128_si256(u1, u5, 0x20),
        _mm256_permute2x128_si256(u2, u6, 0x20),
        _mm256_permute2x128_si256(u3, u7, 0x20),
        _mm256_permute2x128_si256(u0, u4, 0x31),
        _mm256_permute2x128_si256(u1, u5, 0x31),
        _mm256_permute2x128_si256(u2, u6, 0x31),
        _mm256_permute2x128_si256(u3, u7, 0x31),
    ]
}

/// The sixteen column-wise state vectors of lanes 0..8, block counter `counter` in each.
#[target_feature(enable = "avx2")]
fn state(keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>, counter: u32) -> [__m256i; 16] {
    // SAFETY: each key is 32 readable bytes.
    let mut rows = [_mm256_setzero_si256(); 8];
    for (row, key) in rows.iter_mut().zip(keys) {
        *row = unsafe { _mm256_loadu_si256(key.as_ptr().cast()) };
    }
    let k = transpose8(rows);
    // Nonces: three masked 32-bit loads each (nothing past the 12 bytes is read), two lanes
    // per vector, then a 4×4 transpose inside each 128-bit half.
    let mask = _mm_setr_epi32(-1, -1, -1, 0);
    // SAFETY: the mask enables exactly the nonce's three words; masked-off words are not read.
    let ld = |l: usize| unsafe { _mm_maskload_epi32(nonces[l].as_ptr().cast(), mask) };
    let mut n = [_mm256_setzero_si256(); 4];
    for (j, v) in n.iter_mut().enumerate() {
        *v = _mm256_set_m128i(ld(j + 4), ld(j));
    }
    let lo01 = _mm256_unpacklo_epi32(n[0], n[1]);
    let lo23 = _mm256_unpacklo_epi32(n[2], n[3]);
    let hi01 = _mm256_unpackhi_epi32(n[0], n[1]);
    let hi23 = _mm256_unpackhi_epi32(n[2], n[3]);
    [
        _mm256_set1_epi32(0x6170_7865),
        _mm256_set1_epi32(0x3320_646e),
        _mm256_set1_epi32(0x7962_2d32),
        _mm256_set1_epi32(0x6b20_6574),
        k[0],
        k[1],
        k[2],
        k[3],
        k[4],
        k[5],
        k[6],
        k[7],
        _mm256_set1_epi32(counter as i32),
        _mm256_unpacklo_epi64(lo01, lo23),
        _mm256_unpackhi_epi64(lo01, lo23),
        _mm256_unpacklo_epi64(hi01, hi23),
    ]
}

/// The byte shuffles that rotate 32-bit lanes left by 16 and by 8.
#[target_feature(enable = "avx2")]
fn rotation_tables() -> (__m256i, __m256i) {
    (
        _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        ),
        _mm256_setr_epi8(
            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9,
            10, 15, 12, 13, 14,
        ),
    )
}

/// One ChaCha20 quarter round on column-wise state `$v`.
macro_rules! quarter {
    ($v:ident, $rot16:ident, $rot8:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $v[$a] = _mm256_add_epi32($v[$a], $v[$b]);
        $v[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($v[$d], $v[$a]), $rot16);
        $v[$c] = _mm256_add_epi32($v[$c], $v[$d]);
        let t = _mm256_xor_si256($v[$b], $v[$c]);
        $v[$b] = _mm256_or_si256(_mm256_slli_epi32(t, 12), _mm256_srli_epi32(t, 20));
        $v[$a] = _mm256_add_epi32($v[$a], $v[$b]);
        $v[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($v[$d], $v[$a]), $rot8);
        $v[$c] = _mm256_add_epi32($v[$c], $v[$d]);
        let t = _mm256_xor_si256($v[$b], $v[$c]);
        $v[$b] = _mm256_or_si256(_mm256_slli_epi32(t, 7), _mm256_srli_epi32(t, 25));
    };
}

/// Twenty rounds and the final addition on eight column-wise blocks.
#[target_feature(enable = "avx2")]
fn block(s: &[__m256i; 16]) -> [__m256i; 16] {
    let mut v = *s;
    let (rot16, rot8) = rotation_tables();
    for _ in 0..10 {
        quarter!(v, rot16, rot8, 0, 4, 8, 12);
        quarter!(v, rot16, rot8, 1, 5, 9, 13);
        quarter!(v, rot16, rot8, 2, 6, 10, 14);
        quarter!(v, rot16, rot8, 3, 7, 11, 15);
        quarter!(v, rot16, rot8, 0, 5, 10, 15);
        quarter!(v, rot16, rot8, 1, 6, 11, 12);
        quarter!(v, rot16, rot8, 2, 7, 8, 13);
        quarter!(v, rot16, rot8, 3, 4, 9, 14);
    }
    for i in 0..16 {
        v[i] = _mm256_add_epi32(v[i], s[i]);
    }
    v
}

/// Two independent sets of eight blocks, their quarter rounds interleaved: a vector op's
/// result takes two cycles to reach the next on the Zen 5 development CPU, so one set's chains leave the pipes
/// half idle, and the second set's spills (AVX2 has sixteen registers) cost less than that.
#[target_feature(enable = "avx2")]
fn block2(s: &[__m256i; 16], t: &[__m256i; 16]) -> ([__m256i; 16], [__m256i; 16]) {
    let mut v = *s;
    let mut w = *t;
    let (rot16, rot8) = rotation_tables();
    macro_rules! both {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            quarter!(v, rot16, rot8, $a, $b, $c, $d);
            quarter!(w, rot16, rot8, $a, $b, $c, $d);
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
        v[i] = _mm256_add_epi32(v[i], s[i]);
        w[i] = _mm256_add_epi32(w[i], t[i]);
    }
    (v, w)
}

/// Zero-extends 32-bit lanes 0-3 (`half` 0) or 4-7 (`half` 1) to 64 bits.
#[target_feature(enable = "avx2")]
fn widen(v: __m256i, half: usize) -> __m256i {
    if half == 0 {
        _mm256_cvtepu32_epi64(_mm256_castsi256_si128(v))
    } else {
        _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(v))
    }
}

/// ChaCha20 block 0 becomes each lane's `r` (clamped, in 26-bit limbs) and `s`.
#[target_feature(enable = "avx2")]
fn mac_init(mac: &mut Mac, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>) {
    let x = block(&state(keys, nonces, 0));
    let m = |v, c: u32| _mm256_and_si256(v, _mm256_set1_epi32(c as i32));
    let w0 = m(x[0], 0x0fff_ffff);
    let w1 = m(x[1], 0x0fff_fffc);
    let w2 = m(x[2], 0x0fff_fffc);
    let w3 = m(x[3], 0x0fff_fffc);
    let m26 = |v| m(v, M26 as u32);
    let or = _mm256_or_si256;
    // The 130-bit r = w0 + w1·2^32 + w2·2^64 + w3·2^96 in five 26-bit limbs, in 32-bit lanes.
    let limbs = [
        m26(w0),
        m26(or(_mm256_srli_epi32(w0, 26), _mm256_slli_epi32(w1, 6))),
        m26(or(_mm256_srli_epi32(w1, 20), _mm256_slli_epi32(w2, 12))),
        m26(or(_mm256_srli_epi32(w2, 14), _mm256_slli_epi32(w3, 18))),
        _mm256_srli_epi32(w3, 8),
    ];
    let five = |v| _mm256_add_epi32(v, _mm256_slli_epi32(v, 2));
    for g in 0..2 {
        for (k, limb) in limbs.iter().enumerate() {
            mac.r[g][k] = widen(*limb, g);
            mac.r5[g][k] = widen(five(*limb), g);
        }
        mac.h[g] = [_mm256_setzero_si256(); 5];
        let word64 = |lo, hi| or(widen(lo, g), _mm256_slli_epi64(widen(hi, g), 32));
        mac.s[g] = [word64(x[4], x[5]), word64(x[6], x[7])];
    }
}

/// One 16-byte block of lanes 4g..4g+4 as (low 64 bits, high 64 bits) vectors.
///
/// # Safety
/// Every pointer must have 16 readable bytes.
#[target_feature(enable = "avx2")]
unsafe fn load_group(p: [*const u8; 4]) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees 16 readable bytes behind each pointer.
    let (a, b, c, d) = unsafe {
        (
            _mm_loadu_si128(p[0].cast()),
            _mm_loadu_si128(p[1].cast()),
            _mm_loadu_si128(p[2].cast()),
            _mm_loadu_si128(p[3].cast()),
        )
    };
    let ac = _mm256_set_m128i(c, a);
    let bd = _mm256_set_m128i(d, b);
    (_mm256_unpacklo_epi64(ac, bd), _mm256_unpackhi_epi64(ac, bd))
}

/// Absorbs `n` blocks into the lanes set in `active`.
///
/// # Safety
/// Every `inputs[l]`, l < 8, must hold at least `16 * n` bytes.
#[target_feature(enable = "avx2")]
unsafe fn mac_blocks(mac: &mut Mac, n: usize, inputs: &Lanes<&[u8]>, active: u32) {
    let mask = _mm256_set1_epi64x(M26 as i64);
    let hibit = _mm256_set1_epi64x(1 << 24);
    let bits = _mm256_setr_epi64x(1, 2, 4, 8);
    let lane_bits = |g: usize| _mm256_set1_epi64x(((active >> (4 * g)) & 0xf) as i64);
    let keep = [
        _mm256_cmpeq_epi64(_mm256_and_si256(lane_bits(0), bits), bits),
        _mm256_cmpeq_epi64(_mm256_and_si256(lane_bits(1), bits), bits),
    ];
    let masked = active & 0xff != 0xff;
    let mut ptrs = [core::ptr::null::<u8>(); 8];
    for (p, input) in ptrs.iter_mut().zip(inputs) {
        *p = input.as_ptr();
    }
    let [ra, rb] = mac.r;
    let [sa, sb] = mac.r5;
    let [mut ha, mut hb] = mac.h;
    // One block of four lanes: split into 26-bit limbs, add, multiply by r, carry. A macro
    // applied to the two groups with separate variables, so that the compiler interleaves two
    // independent dependency chains.
    macro_rules! group_step {
        ($h:ident, $r:ident, $s:ident, $g:expr, $b:expr) => {{
            // SAFETY: block b of each lane lies within its first 16·n bytes.
            let (lo, hi) = unsafe {
                load_group([
                    ptrs[4 * $g].add(16 * $b),
                    ptrs[4 * $g + 1].add(16 * $b),
                    ptrs[4 * $g + 2].add(16 * $b),
                    ptrs[4 * $g + 3].add(16 * $b),
                ])
            };
            let m0 = _mm256_and_si256(lo, mask);
            let m1 = _mm256_and_si256(_mm256_srli_epi64(lo, 26), mask);
            let m2 = _mm256_and_si256(
                _mm256_or_si256(_mm256_srli_epi64(lo, 52), _mm256_slli_epi64(hi, 12)),
                mask,
            );
            let m3 = _mm256_and_si256(_mm256_srli_epi64(hi, 14), mask);
            let m4 = _mm256_or_si256(_mm256_srli_epi64(hi, 40), hibit);
            let x0 = _mm256_add_epi64($h[0], m0);
            let x1 = _mm256_add_epi64($h[1], m1);
            let x2 = _mm256_add_epi64($h[2], m2);
            let x3 = _mm256_add_epi64($h[3], m3);
            let x4 = _mm256_add_epi64($h[4], m4);
            let (r, s) = (&$r, &$s);
            let mul = |a, b| _mm256_mul_epu32(a, b);
            let add = |a, b| _mm256_add_epi64(a, b);
            let d0 = add(
                add(mul(x0, r[0]), mul(x1, s[4])),
                add(add(mul(x2, s[3]), mul(x3, s[2])), mul(x4, s[1])),
            );
            let d1 = add(
                add(mul(x0, r[1]), mul(x1, r[0])),
                add(add(mul(x2, s[4]), mul(x3, s[3])), mul(x4, s[2])),
            );
            let d2 = add(
                add(mul(x0, r[2]), mul(x1, r[1])),
                add(add(mul(x2, r[0]), mul(x3, s[4])), mul(x4, s[3])),
            );
            let d3 = add(
                add(mul(x0, r[3]), mul(x1, r[2])),
                add(add(mul(x2, r[1]), mul(x3, r[0])), mul(x4, s[4])),
            );
            let d4 = add(
                add(mul(x0, r[4]), mul(x1, r[3])),
                add(add(mul(x2, r[2]), mul(x3, r[1])), mul(x4, r[0])),
            );
            // Two carry chains in parallel (0→1→2→3 and 3→4→0→1), leaving every limb within
            // a few bits of 26, so the next block's products stay below 2^64.
            let c = _mm256_srli_epi64(d0, 26);
            let h0 = _mm256_and_si256(d0, mask);
            let d1 = add(d1, c);
            let c = _mm256_srli_epi64(d3, 26);
            let h3 = _mm256_and_si256(d3, mask);
            let d4 = add(d4, c);
            let c = _mm256_srli_epi64(d1, 26);
            let h1 = _mm256_and_si256(d1, mask);
            let d2 = add(d2, c);
            let c = _mm256_srli_epi64(d4, 26);
            let h4 = _mm256_and_si256(d4, mask);
            let h0 = add(h0, add(c, _mm256_slli_epi64(c, 2)));
            let c = _mm256_srli_epi64(d2, 26);
            let h2 = _mm256_and_si256(d2, mask);
            let h3 = add(h3, c);
            let c = _mm256_srli_epi64(h0, 26);
            let h0 = _mm256_and_si256(h0, mask);
            let h1 = add(h1, c);
            let c = _mm256_srli_epi64(h3, 26);
            let h3 = _mm256_and_si256(h3, mask);
            let h4 = add(h4, c);
            let new = [h0, h1, h2, h3, h4];
            if masked {
                for k in 0..5 {
                    $h[k] = _mm256_blendv_epi8($h[k], new[k], keep[$g]);
                }
            } else {
                $h = new;
            }
        }};
    }
    for b in 0..n {
        group_step!(ha, ra, sa, 0, b);
        group_step!(hb, rb, sb, 1, b);
    }
    mac.h = [ha, hb];
}

/// The finished tags of group `g` as (low 64 bits, high 64 bits).
#[target_feature(enable = "avx2")]
fn finish(mac: &Mac, g: usize) -> (__m256i, __m256i) {
    let mask = _mm256_set1_epi64x(M26 as i64);
    let add = _mm256_add_epi64;
    let and = _mm256_and_si256;
    let mut h = mac.h[g];
    for _ in 0..2 {
        for k in 0..4 {
            h[k + 1] = add(h[k + 1], _mm256_srli_epi64(h[k], 26));
            h[k] = and(h[k], mask);
        }
        let c = _mm256_srli_epi64(h[4], 26);
        h[0] = add(h[0], add(c, _mm256_slli_epi64(c, 2)));
        h[4] = and(h[4], mask);
    }
    h[1] = add(h[1], _mm256_srli_epi64(h[0], 26));
    h[0] = and(h[0], mask);
    // t = h + 5 - 2^130; use it where it does not go negative (h ≥ p), chosen by mask.
    let mut t = [_mm256_setzero_si256(); 5];
    let mut carry = _mm256_set1_epi64x(5);
    for k in 0..4 {
        let x = add(h[k], carry);
        t[k] = and(x, mask);
        carry = _mm256_srli_epi64(x, 26);
    }
    let top = _mm256_sub_epi64(add(h[4], carry), _mm256_set1_epi64x(1 << 26));
    let use_t = _mm256_sub_epi64(_mm256_srli_epi64(top, 63), _mm256_set1_epi64x(1));
    t[4] = top;
    let mut f = h;
    for k in 0..5 {
        f[k] = _mm256_blendv_epi8(h[k], t[k], use_t);
    }
    // Sum rather than OR the limbs, so a limb that is not fully canonical still adds up.
    let lo = add(
        add(f[0], _mm256_slli_epi64(f[1], 26)),
        _mm256_slli_epi64(f[2], 52),
    );
    let hi = add(
        add(_mm256_srli_epi64(f[2], 12), _mm256_slli_epi64(f[3], 14)),
        _mm256_slli_epi64(f[4], 40),
    );
    // hi also takes the carry out of lo = f0 + f1·2^26 + f2·2^52 (below 2^64 + 2^52 at most).
    let lo_parts = add(f[0], _mm256_slli_epi64(f[1], 26));
    let sign = _mm256_set1_epi64x(i64::MIN);
    let below = |a, b| _mm256_cmpgt_epi64(_mm256_xor_si256(b, sign), _mm256_xor_si256(a, sign));
    let hi = _mm256_sub_epi64(hi, below(lo, lo_parts));
    // + s, modulo 2^128.
    let [slo, shi] = mac.s[g];
    let lo2 = add(lo, slo);
    let hi2 = _mm256_sub_epi64(add(hi, shi), below(lo2, slo));
    (lo2, hi2)
}

/// Bit `l` set where lane `l`'s tag equals `expected[l]`.
#[target_feature(enable = "avx2")]
fn mac_verify(mac: &Mac, expected: &Lanes<&[u8; TAG_LEN]>) -> u32 {
    let mut ok = 0u32;
    for g in 0..2 {
        let (lo, hi) = finish(mac, g);
        // SAFETY: each expected tag is 16 readable bytes.
        let e = |l: usize| expected[4 * g + l].as_ptr();
        // SAFETY: each expected tag is 16 readable bytes.
        let (elo, ehi) = unsafe { load_group([e(0), e(1), e(2), e(3)]) };
        let eq = _mm256_and_si256(_mm256_cmpeq_epi64(lo, elo), _mm256_cmpeq_epi64(hi, ehi));
        ok |= (_mm256_movemask_pd(_mm256_castsi256_pd(eq)) as u32) << (4 * g);
    }
    ok
}

/// Every lane's tag.
#[target_feature(enable = "avx2")]
fn mac_tags(mac: &Mac, out: &mut Lanes<[u8; TAG_LEN]>) {
    for g in 0..2 {
        let (lo, hi) = finish(mac, g);
        let even = _mm256_unpacklo_epi64(lo, hi); // lanes 4g and 4g+2
        let odd = _mm256_unpackhi_epi64(lo, hi); // lanes 4g+1 and 4g+3
        let st = |v: __m128i, o: &mut [u8; 16]| {
            // SAFETY: `o` is 16 writable bytes.
            unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), v) }
        };
        st(_mm256_castsi256_si128(even), &mut out[4 * g]);
        st(_mm256_extracti128_si256::<1>(even), &mut out[4 * g + 2]);
        st(_mm256_castsi256_si128(odd), &mut out[4 * g + 1]);
        st(_mm256_extracti128_si256::<1>(odd), &mut out[4 * g + 3]);
    }
}

/// XORs keystream blocks 1, 2, ... into every job's data.
#[target_feature(enable = "avx2")]
fn xor(jobs: &mut [Work<'_>]) {
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
    let mut s = state(&keys, &nonces, 1);
    let one = _mm256_set1_epi32(1);
    let mut b = 0;
    // Messages are bounded to 2^32 - 1 blocks, so the counter does not wrap.
    while b + 1 < blocks {
        let mut t = s;
        t[12] = _mm256_add_epi32(s[12], one);
        let (x, y) = block2(&s, &t);
        apply(jobs, b, &x);
        apply(jobs, b + 1, &y);
        s[12] = _mm256_add_epi32(t[12], one);
        b += 2;
    }
    if b < blocks {
        apply(jobs, b, &block(&s));
    }
}

/// Transposes the column-wise keystream block `b` and XORs it into every job's data.
#[target_feature(enable = "avx2")]
fn apply(jobs: &mut [Work<'_>], b: usize, x: &[__m256i; 16]) {
    let lo = transpose8([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
    let hi = transpose8([x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]]);
    for (l, job) in jobs.iter_mut().enumerate() {
        let Some((src, dst)) = job.data.window(b) else {
            continue;
        };
        if dst.len() == 64 {
            let from: *const u8 = src.map_or(dst.as_ptr(), <[u8]>::as_ptr);
            // SAFETY: `from` and `dst` point at 64 bytes of the job's data (readable, and
            // writable for `dst`). Both loads happen before either store, so an in-place
            // window is read before it is written.
            unsafe { xor64(from, dst.as_mut_ptr(), lo[l], hi[l]) };
        } else {
            // A last partial block goes through a stack copy.
            let mut buf = [0u8; 64];
            let input: &[u8] = src.unwrap_or(&*dst);
            buf[..input.len()].copy_from_slice(input);
            let p = buf.as_mut_ptr();
            // SAFETY: `buf` is 64 readable and writable bytes.
            unsafe { xor64(p, p, lo[l], hi[l]) };
            let len = dst.len();
            dst.copy_from_slice(&buf[..len]);
            buf.zeroize();
        }
    }
}

/// `to[..64] = from[..64] ^ (lo ‖ hi)`.
///
/// # Safety
/// `from` must be 64 readable bytes and `to` 64 writable bytes (they may be the same).
#[target_feature(enable = "avx2")]
unsafe fn xor64(from: *const u8, to: *mut u8, lo: __m256i, hi: __m256i) {
    // SAFETY: the caller guarantees both 64-byte ranges; both loads precede the stores.
    unsafe {
        let a = _mm256_loadu_si256(from.cast());
        let c = _mm256_loadu_si256(from.add(32).cast());
        _mm256_storeu_si256(to.cast(), _mm256_xor_si256(a, lo));
        _mm256_storeu_si256(to.add(32).cast(), _mm256_xor_si256(c, hi));
    }
}
