//! The AVX2 backend: ChaCha20 on 8 blocks at once (one block per 32-bit lane, each lane its own
//! key, nonce and counter) and Poly1305 on 8 messages at once (two interleaved groups of four
//! 64-bit lanes with 26-bit limbs, so the multiply latency of one group hides behind the other).
//!
//! Constant time: the code uses only vector adds, XORs, shifts, shuffles and 32×32→64
//! multiplies, whose timing does not depend on their operands; no branch or address depends on
//! key, data or tag bytes. Lane assignment depends only on message lengths.
#![allow(unsafe_code)]

use super::{BLOCK, Kernel, PolyLanes};
use core::arch::x86_64::*;

/// The AVX2 kernel. The engine only selects it after `is_x86_feature_detected!("avx2")`.
pub(crate) struct Avx2Kernel;

impl Kernel for Avx2Kernel {
    type Lanes = Avx2Lanes;
    const CHACHA_LANES: usize = 8;

    fn chacha_blocks(states: &[[u32; 16]], out: &mut [[u8; BLOCK]]) {
        assert!(states.len() <= 8 && out.len() == states.len());
        debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
        // SAFETY: an `Engine` on the avx2 backend exists only after the CPU was checked for
        // AVX2 (`Backend::check`), and that is the only way this kernel is reached. The slice
        // lengths were checked just above.
        unsafe { chacha8(states, out) }
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

/// Computes `states.len()` (at most 8) ChaCha20 blocks.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn chacha8(states: &[[u32; 16]], out: &mut [[u8; BLOCK]]) {
    // Unused lanes repeat lane 0; their output is discarded.
    let lane = |i: usize| &states[if i < states.len() { i } else { 0 }];
    let mut v = [_mm256_setzero_si256(); 16];
    for half in 0..2 {
        let mut rows = [_mm256_setzero_si256(); 8];
        for (i, row) in rows.iter_mut().enumerate() {
            // SAFETY: each state is 16 u32s; this reads words 8*half .. 8*half+8 of one.
            *row = unsafe { _mm256_loadu_si256(lane(i)[8 * half..].as_ptr().cast()) };
        }
        let cols = transpose8(rows);
        v[8 * half..8 * half + 8].copy_from_slice(&cols);
    }
    let orig = v;
    let rot16 = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9,
        14, 15, 12, 13,
    );
    let rot8 = _mm256_setr_epi8(
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10,
        15, 12, 13, 14,
    );
    macro_rules! qr {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            v[$a] = _mm256_add_epi32(v[$a], v[$b]);
            v[$d] = _mm256_shuffle_epi8(_mm256_xor_si256(v[$d], v[$a]), rot16);
            v[$c] = _mm256_add_epi32(v[$c], v[$d]);
            let t = _mm256_xor_si256(v[$b], v[$c]);
            v[$b] = _mm256_or_si256(_mm256_slli_epi32(t, 12), _mm256_srli_epi32(t, 20));
            v[$a] = _mm256_add_epi32(v[$a], v[$b]);
            v[$d] = _mm256_shuffle_epi8(_mm256_xor_si256(v[$d], v[$a]), rot8);
            v[$c] = _mm256_add_epi32(v[$c], v[$d]);
            let t = _mm256_xor_si256(v[$b], v[$c]);
            v[$b] = _mm256_or_si256(_mm256_slli_epi32(t, 7), _mm256_srli_epi32(t, 25));
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
        v[i] = _mm256_add_epi32(v[i], orig[i]);
    }
    for half in 0..2 {
        let mut cols = [_mm256_setzero_si256(); 8];
        cols.copy_from_slice(&v[8 * half..8 * half + 8]);
        let rows = transpose8(cols);
        for (i, row) in rows.iter().enumerate().take(out.len()) {
            // SAFETY: out[i] is 64 bytes; this writes bytes 32*half .. 32*half+32 of it.
            unsafe { _mm256_storeu_si256(out[i][32 * half..].as_mut_ptr().cast(), *row) };
        }
    }
}

const M26: u64 = (1 << 26) - 1;

/// Eight Poly1305 states in 26-bit limbs, stored limb-major: `h[limb][lane]`.
#[derive(Default)]
pub(crate) struct Avx2Lanes {
    h: [[u64; 8]; 5],
    r: [[u64; 8]; 5],
    /// 5·r for limbs 1..4 (index 0 unused), for the reduction modulo 2^130 - 5.
    r5: [[u64; 8]; 5],
    s: [[u64; 2]; 8],
}

impl Drop for Avx2Lanes {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.h.zeroize();
        self.r.zeroize();
        self.r5.zeroize();
        self.s.zeroize();
    }
}

impl PolyLanes for Avx2Lanes {
    const LANES: usize = 8;

    fn set_lane(&mut self, lane: usize, key: &[u8; 32]) {
        let lo = u64::from_le_bytes(key[0..8].try_into().expect("8 bytes")) & 0x0fff_fffc_0fff_ffff;
        let hi =
            u64::from_le_bytes(key[8..16].try_into().expect("8 bytes")) & 0x0fff_fffc_0fff_fffc;
        let limbs = [
            lo & M26,
            (lo >> 26) & M26,
            ((lo >> 52) | (hi << 12)) & M26,
            (hi >> 14) & M26,
            hi >> 40,
        ];
        for (k, l) in limbs.iter().enumerate() {
            self.r[k][lane] = *l;
            self.r5[k][lane] = l * 5;
            self.h[k][lane] = 0;
        }
        self.s[lane] = [
            u64::from_le_bytes(key[16..24].try_into().expect("8 bytes")),
            u64::from_le_bytes(key[24..32].try_into().expect("8 bytes")),
        ];
    }

    fn blocks(&mut self, n: usize, inputs: &[&[u8]]) {
        assert!(inputs.len() == 8 && inputs.iter().all(|i| i.len() >= 16 * n));
        debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
        // SAFETY: reached only through an `Engine` whose avx2 backend passed the CPU check;
        // every input has at least 16·n bytes (asserted above), which is all `poly8` reads.
        unsafe { poly8(self, n, inputs) }
    }

    fn finish_lane(&mut self, lane: usize) -> [u8; 16] {
        let mut h = [0u64; 5];
        for (k, limb) in h.iter_mut().enumerate() {
            *limb = self.h[k][lane];
        }
        finish(h, self.s[lane])
    }
}

/// Full reduction of a lane modulo 2^130 - 5 and addition of `s`, branch-free.
fn finish(mut h: [u64; 5], s: [u64; 2]) -> [u8; 16] {
    for _ in 0..2 {
        for k in 0..4 {
            h[k + 1] += h[k] >> 26;
            h[k] &= M26;
        }
        h[0] += (h[4] >> 26) * 5;
        h[4] &= M26;
    }
    h[1] += h[0] >> 26;
    h[0] &= M26;
    // t = h + 5 - 2^130; use it when that does not go negative, i.e. when h ≥ p.
    let mut t = [0u64; 5];
    let mut carry = 5u64;
    for k in 0..4 {
        let x = h[k] + carry;
        t[k] = x & M26;
        carry = x >> 26;
    }
    let top = (h[4] + carry).wrapping_sub(1 << 26);
    let keep_g = (top >> 63).wrapping_sub(1); // all ones when h + 5 ≥ 2^130
    let sel = |a: u64, b: u64| (a & !keep_g) | (b & keep_g);
    let f = [
        sel(h[0], t[0]),
        sel(h[1], t[1]),
        sel(h[2], t[2]),
        sel(h[3], t[3]),
        sel(h[4], top),
    ];
    // Sum rather than OR the limbs, so a limb that is not fully canonical still adds up right;
    // everything is modulo 2^128 from here on.
    let v = f.iter().enumerate().fold(0u128, |acc, (k, l)| {
        acc.wrapping_add((*l as u128) << (26 * k))
    });
    let v = v.wrapping_add(s[0] as u128 | ((s[1] as u128) << 64));
    v.to_le_bytes()
}

/// Absorbs `n` blocks into all eight lanes.
///
/// # Safety
/// The CPU must support AVX2, and every `inputs[l]` must hold at least `16 * n` bytes.
#[target_feature(enable = "avx2")]
unsafe fn poly8(st: &mut Avx2Lanes, n: usize, inputs: &[&[u8]]) {
    // SAFETY (for every load/store of the state below): each array row is 8 u64s, and the two
    // groups read lanes 0..4 and 4..8 of it.
    let ld = |a: &[u64; 8], g: usize| unsafe { _mm256_loadu_si256(a[4 * g..].as_ptr().cast()) };
    let mask = _mm256_set1_epi64x(M26 as i64);
    let hibit = _mm256_set1_epi64x(1 << 24);
    let mut h = [[_mm256_setzero_si256(); 5]; 2];
    let mut r = [[_mm256_setzero_si256(); 5]; 2];
    let mut r5 = [[_mm256_setzero_si256(); 5]; 2];
    for g in 0..2 {
        for k in 0..5 {
            h[g][k] = ld(&st.h[k], g);
            r[g][k] = ld(&st.r[k], g);
            r5[g][k] = ld(&st.r5[k], g);
        }
    }
    let [ra, rb] = r;
    let [sa, sb] = r5;
    let [mut ha, mut hb] = h;
    let ptrs: [*const u8; 8] = core::array::from_fn(|l| inputs[l].as_ptr());
    // One block of four lanes: load and split into 26-bit limbs, add, multiply by r, carry.
    // Written as a macro and applied to the two groups with separate variables, so the
    // compiler interleaves two independent dependency chains instead of running them in turn.
    macro_rules! group_step {
        ($h:ident, $r:ident, $s:ident, $g:expr, $b:expr) => {{
            let p = |l: usize| {
                // SAFETY: block b of input 4g+l lies within its first 16·n bytes.
                unsafe { _mm_loadu_si128(ptrs[4 * $g + l].add(16 * $b).cast()) }
            };
            let a = _mm256_inserti128_si256(_mm256_castsi128_si256(p(0)), p(2), 1);
            let c = _mm256_inserti128_si256(_mm256_castsi128_si256(p(1)), p(3), 1);
            let lo = _mm256_unpacklo_epi64(a, c);
            let hi = _mm256_unpackhi_epi64(a, c);
            let m0 = _mm256_and_si256(lo, mask);
            let m1 = _mm256_and_si256(_mm256_srli_epi64(lo, 26), mask);
            let m2 = _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi64(lo, 52), _mm256_slli_epi64(hi, 12)), mask);
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
            let d0 = add(add(mul(x0, r[0]), mul(x1, s[4])), add(add(mul(x2, s[3]), mul(x3, s[2])), mul(x4, s[1])));
            let d1 = add(add(mul(x0, r[1]), mul(x1, r[0])), add(add(mul(x2, s[4]), mul(x3, s[3])), mul(x4, s[2])));
            let d2 = add(add(mul(x0, r[2]), mul(x1, r[1])), add(add(mul(x2, r[0]), mul(x3, s[4])), mul(x4, s[3])));
            let d3 = add(add(mul(x0, r[3]), mul(x1, r[2])), add(add(mul(x2, r[1]), mul(x3, r[0])), mul(x4, s[4])));
            let d4 = add(add(mul(x0, r[4]), mul(x1, r[3])), add(add(mul(x2, r[2]), mul(x3, r[1])), mul(x4, r[0])));
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
            $h = [h0, h1, h2, h3, h4];
        }};
    }
    for b in 0..n {
        group_step!(ha, ra, sa, 0, b);
        group_step!(hb, rb, sb, 1, b);
    }
    let h = [ha, hb];
    for (g, hg) in h.iter().enumerate() {
        for (k, limb) in hg.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm256_storeu_si256(st.h[k][4 * g..].as_mut_ptr().cast(), *limb) };
        }
    }
}

/// The time-stamp counter, for cycles-per-byte figures.
pub(crate) fn tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU and only reads a counter.
    unsafe { _rdtsc() }
}
