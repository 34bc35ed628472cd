//! The instruction set the AVX-512 kernels are written in: a small set of operations on
//! 512-bit vectors, each the meaning of one AVX-512 instruction (or a fixed pair of them).
//!
//! The kernels are generic over [`Isa`], so the same source runs two ways:
//! [`super::native::Native`] maps every operation to its intrinsic (and can only be obtained from
//! the CPU detection), and [`super::emu::Emu`] implements each one in plain Rust with the
//! instruction's documented semantics. Tests run the kernels on `Emu` on every machine, and on
//! machines with AVX-512 they also check every `Emu` operation against the instruction it
//! stands for.
//!
//! Lane conventions follow the hardware: element 0 is the least significant. "32-bit lanes" are
//! the sixteen `u32` elements, "64-bit lanes" the eight `u64` elements, and "128-bit blocks" the
//! four 16-byte quarters a vector is made of.

use zeroize::Zeroize;

/// A 512-bit vector instruction set. `self` is the proof that the instructions may be run.
pub(crate) trait Isa: Copy {
    /// One 512-bit vector.
    type V: Copy + Zeroize;

    /// All zeros.
    fn zero(self) -> Self::V;
    /// Every 32-bit lane set to `x`.
    fn splat32(self, x: u32) -> Self::V;
    /// Every 64-bit lane set to `x`.
    fn splat64(self, x: u64) -> Self::V;

    /// 64 bytes from memory.
    fn load(self, b: &[u8; 64]) -> Self::V;
    /// 64 bytes to memory.
    fn store(self, v: Self::V, b: &mut [u8; 64]);
    /// The first `b.len()` bytes (at most 64) from memory, the rest zero; nothing past the
    /// slice is read.
    fn load_partial(self, b: &[u8]) -> Self::V;
    /// Writes the first `b.len()` bytes (at most 64) of `v`; nothing past the slice is written.
    fn store_partial(self, v: Self::V, b: &mut [u8]);
    /// Four 16-byte blocks from memory, `a` in the lowest quarter.
    fn load4x128(self, a: &[u8; 16], b: &[u8; 16], c: &[u8; 16], d: &[u8; 16]) -> Self::V;
    /// Four memory blocks of at most 16 bytes each, each zero-padded to 16, `a` lowest.
    fn load4x128_partial(self, a: &[u8], b: &[u8], c: &[u8], d: &[u8]) -> Self::V;
    /// Two 32-byte halves from memory, `lo` in the low half.
    fn load2x256(self, lo: &[u8; 32], hi: &[u8; 32]) -> Self::V;
    /// Quarter `Q` (0..=3) of `v` to memory.
    fn store128<const Q: i32>(self, v: Self::V, out: &mut [u8; 16]);

    /// Bitwise XOR.
    fn xor(self, a: Self::V, b: Self::V) -> Self::V;
    /// Bitwise OR.
    fn or(self, a: Self::V, b: Self::V) -> Self::V;
    /// Bitwise AND.
    fn and(self, a: Self::V, b: Self::V) -> Self::V;

    /// 32-bit lanes: wrapping addition.
    fn add32(self, a: Self::V, b: Self::V) -> Self::V;
    /// 32-bit lanes: rotation left by `N` (`vprold`).
    fn rotl32<const N: i32>(self, a: Self::V) -> Self::V;

    /// 64-bit lanes: wrapping addition.
    fn add64(self, a: Self::V, b: Self::V) -> Self::V;
    /// 64-bit lanes: wrapping subtraction.
    fn sub64(self, a: Self::V, b: Self::V) -> Self::V;
    /// 64-bit lanes: logical shift right by `N` (< 64).
    fn shr64<const N: u32>(self, a: Self::V) -> Self::V;
    /// 64-bit lanes: shift left by `N` (< 64).
    fn shl64<const N: u32>(self, a: Self::V) -> Self::V;
    /// 64-bit lanes: `acc + low 52 bits of (b mod 2^52) · (c mod 2^52)` (`vpmadd52luq`).
    fn madd52lo(self, acc: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// 64-bit lanes: `acc + high 52 bits of (b mod 2^52) · (c mod 2^52)` (`vpmadd52huq`).
    fn madd52hi(self, acc: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// 64-bit lanes: lane `i` from `b` where bit `i` of `mask` is set, else from `a`.
    fn blend64(self, mask: u8, a: Self::V, b: Self::V) -> Self::V;
    /// 64-bit lanes: bit `i` set where lane `i` of `a` equals lane `i` of `b`.
    fn eq64(self, a: Self::V, b: Self::V) -> u8;

    /// Within each 128-bit block: `[a0, b0, a1, b1]` of 32-bit elements (`vpunpckldq`).
    fn unpacklo32(self, a: Self::V, b: Self::V) -> Self::V;
    /// Within each 128-bit block: `[a2, b2, a3, b3]` of 32-bit elements (`vpunpckhdq`).
    fn unpackhi32(self, a: Self::V, b: Self::V) -> Self::V;
    /// Within each 128-bit block: `[a0, b0]` of 64-bit elements (`vpunpcklqdq`).
    fn unpacklo64(self, a: Self::V, b: Self::V) -> Self::V;
    /// Within each 128-bit block: `[a1, b1]` of 64-bit elements (`vpunpckhqdq`).
    fn unpackhi64(self, a: Self::V, b: Self::V) -> Self::V;
    /// 128-bit blocks `[a[I&3], a[(I>>2)&3], b[(I>>4)&3], b[(I>>6)&3]]` (`vshufi32x4`).
    fn shuffle128<const I: i32>(self, a: Self::V, b: Self::V) -> Self::V;
}
