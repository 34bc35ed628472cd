//! [`Isa`] on the real instructions. The implementing type is the CPU token
//! [`crate::engine::cpu::Avx512`], which only the detection makes: holding one proves that this
//! CPU (and its operating system) run AVX-512 F, VL, BW and IFMA, which is what makes every
//! `unsafe` block below sound. Every method is `#[inline(always)]` so that, inside the
//! `#[target_feature]` entry points of [`super`], the kernels compile to straight AVX-512 code.
#![allow(unsafe_code)]

use super::isa::Isa;
use crate::engine::cpu::Avx512;
use core::arch::x86_64::*;

/// `(1 << n) - 1` for `n` in 0..=64, as a byte mask.
#[inline(always)]
fn byte_mask64(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

impl Isa for Avx512 {
    type V = __m512i;

    #[inline(always)]
    fn zero(self) -> __m512i {
        // SAFETY: `self` proves AVX-512F (see the module docs).
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    fn splat32(self, x: u32) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_set1_epi32(x as i32) }
    }

    #[inline(always)]
    fn splat64(self, x: u64) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_set1_epi64(x as i64) }
    }

    #[inline(always)]
    fn load(self, b: &[u8; 64]) -> __m512i {
        // SAFETY: `self` proves AVX-512F; `b` is 64 readable bytes (unaligned load).
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    #[inline(always)]
    fn store(self, v: __m512i, b: &mut [u8; 64]) {
        // SAFETY: `self` proves AVX-512F; `b` is 64 writable bytes (unaligned store).
        unsafe { _mm512_storeu_si512(b.as_mut_ptr().cast(), v) }
    }

    #[inline(always)]
    fn load_partial(self, b: &[u8]) -> __m512i {
        assert!(b.len() <= 64);
        // SAFETY: `self` proves AVX-512BW; the mask covers exactly `b.len()` bytes, and masked-off
        // bytes are neither read nor able to fault.
        unsafe { _mm512_maskz_loadu_epi8(byte_mask64(b.len()), b.as_ptr().cast()) }
    }

    #[inline(always)]
    fn store_partial(self, v: __m512i, b: &mut [u8]) {
        assert!(b.len() <= 64);
        // SAFETY: `self` proves AVX-512BW; the mask covers exactly `b.len()` bytes, and masked-off
        // bytes are not written.
        unsafe { _mm512_mask_storeu_epi8(b.as_mut_ptr().cast(), byte_mask64(b.len()), v) }
    }

    #[inline(always)]
    fn load4x128(self, a: &[u8; 16], b: &[u8; 16], c: &[u8; 16], d: &[u8; 16]) -> __m512i {
        // SAFETY: `self` proves AVX-512F; each reference is 16 readable bytes.
        unsafe {
            let v = _mm512_castsi128_si512(_mm_loadu_si128(a.as_ptr().cast()));
            let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(b.as_ptr().cast()));
            let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(c.as_ptr().cast()));
            _mm512_inserti32x4::<3>(v, _mm_loadu_si128(d.as_ptr().cast()))
        }
    }

    #[inline(always)]
    fn load4x128_partial(self, a: &[u8], b: &[u8], c: &[u8], d: &[u8]) -> __m512i {
        assert!(a.len() <= 16 && b.len() <= 16 && c.len() <= 16 && d.len() <= 16);
        let m = |s: &[u8]| byte_mask64(s.len()) as u16;
        // SAFETY: `self` proves AVX-512BW and VL; each mask covers exactly its slice's bytes,
        // and masked-off bytes are neither read nor able to fault.
        unsafe {
            let ld = |s: &[u8]| _mm_maskz_loadu_epi8(m(s), s.as_ptr().cast());
            let v = _mm512_castsi128_si512(ld(a));
            let v = _mm512_inserti32x4::<1>(v, ld(b));
            let v = _mm512_inserti32x4::<2>(v, ld(c));
            _mm512_inserti32x4::<3>(v, ld(d))
        }
    }

    #[inline(always)]
    fn load2x256(self, lo: &[u8; 32], hi: &[u8; 32]) -> __m512i {
        // SAFETY: `self` proves AVX-512F; each reference is 32 readable bytes.
        unsafe {
            let v = _mm512_castsi256_si512(_mm256_loadu_si256(lo.as_ptr().cast()));
            _mm512_inserti64x4::<1>(v, _mm256_loadu_si256(hi.as_ptr().cast()))
        }
    }

    #[inline(always)]
    fn store128<const Q: i32>(self, v: __m512i, out: &mut [u8; 16]) {
        // SAFETY: `self` proves AVX-512F; `out` is 16 writable bytes.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_extracti32x4_epi32::<Q>(v)) }
    }

    #[inline(always)]
    fn xor(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_xor_si512(a, b) }
    }

    #[inline(always)]
    fn or(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_or_si512(a, b) }
    }

    #[inline(always)]
    fn and(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_and_si512(a, b) }
    }

    #[inline(always)]
    fn add32(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_add_epi32(a, b) }
    }

    #[inline(always)]
    fn rotl32<const N: i32>(self, a: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_rol_epi32::<N>(a) }
    }

    #[inline(always)]
    fn add64(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_add_epi64(a, b) }
    }

    #[inline(always)]
    fn sub64(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_sub_epi64(a, b) }
    }

    #[inline(always)]
    fn shr64<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_srli_epi64::<N>(a) }
    }

    #[inline(always)]
    fn shl64<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_slli_epi64::<N>(a) }
    }

    #[inline(always)]
    fn madd52lo(self, acc: __m512i, b: __m512i, c: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512IFMA.
        unsafe { _mm512_madd52lo_epu64(acc, b, c) }
    }

    #[inline(always)]
    fn madd52hi(self, acc: __m512i, b: __m512i, c: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512IFMA.
        unsafe { _mm512_madd52hi_epu64(acc, b, c) }
    }

    #[inline(always)]
    fn blend64(self, mask: u8, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_mask_blend_epi64(mask, a, b) }
    }

    #[inline(always)]
    fn eq64(self, a: __m512i, b: __m512i) -> u8 {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_cmpeq_epi64_mask(a, b) }
    }

    #[inline(always)]
    fn unpacklo32(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_unpacklo_epi32(a, b) }
    }

    #[inline(always)]
    fn unpackhi32(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_unpackhi_epi32(a, b) }
    }

    #[inline(always)]
    fn unpacklo64(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_unpacklo_epi64(a, b) }
    }

    #[inline(always)]
    fn unpackhi64(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_unpackhi_epi64(a, b) }
    }

    #[inline(always)]
    fn shuffle128<const I: i32>(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: `self` proves AVX-512F.
        unsafe { _mm512_shuffle_i32x4::<I>(a, b) }
    }
}
