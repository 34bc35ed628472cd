//! [`Isa`] in plain Rust: each operation computed element by element with the semantics Intel
//! documents for the instruction it stands for. Slow, and meant only for tests: it lets the
//! AVX-512 kernels run (and be checked against the RFC vectors, Wycheproof and ring) on CPUs
//! without AVX-512. Where the CPU has AVX-512, a test checks every operation here against the
//! real instruction on random inputs.

use super::isa::Isa;
use zeroize::Zeroize;

/// The emulated instruction set; anyone may make one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Emu;

/// A 512-bit vector as eight little-endian 64-bit lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Zeroize)]
#[repr(C, align(64))]
pub(crate) struct E512(pub [u64; 8]);

impl E512 {
    fn u32s(self) -> [u32; 16] {
        core::array::from_fn(|i| (self.0[i / 2] >> (32 * (i % 2))) as u32)
    }

    fn from_u32s(w: [u32; 16]) -> Self {
        E512(core::array::from_fn(|i| {
            w[2 * i] as u64 | ((w[2 * i + 1] as u64) << 32)
        }))
    }

    fn bytes(self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, q) in self.0.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&q.to_le_bytes());
        }
        out
    }

    fn from_bytes(b: &[u8; 64]) -> Self {
        E512(core::array::from_fn(|i| {
            u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        }))
    }

    /// 128-bit block `q` as two 64-bit lanes.
    fn block(self, q: usize) -> [u64; 2] {
        [self.0[2 * q], self.0[2 * q + 1]]
    }

    fn from_blocks(b: [[u64; 2]; 4]) -> Self {
        E512(core::array::from_fn(|i| b[i / 2][i % 2]))
    }
}

fn map32(a: E512, b: E512, f: impl Fn(u32, u32) -> u32) -> E512 {
    let (a, b) = (a.u32s(), b.u32s());
    E512::from_u32s(core::array::from_fn(|i| f(a[i], b[i])))
}

fn map64(a: E512, b: E512, f: impl Fn(u64, u64) -> u64) -> E512 {
    E512(core::array::from_fn(|i| f(a.0[i], b.0[i])))
}

const M52: u64 = (1 << 52) - 1;

fn product52(b: u64, c: u64) -> u128 {
    (b & M52) as u128 * (c & M52) as u128
}

impl Isa for Emu {
    type V = E512;

    fn zero(self) -> E512 {
        E512([0; 8])
    }

    fn splat32(self, x: u32) -> E512 {
        E512::from_u32s([x; 16])
    }

    fn splat64(self, x: u64) -> E512 {
        E512([x; 8])
    }

    fn load(self, b: &[u8; 64]) -> E512 {
        E512::from_bytes(b)
    }

    fn store(self, v: E512, b: &mut [u8; 64]) {
        *b = v.bytes();
    }

    fn load_partial(self, b: &[u8]) -> E512 {
        assert!(b.len() <= 64);
        let mut full = [0u8; 64];
        full[..b.len()].copy_from_slice(b);
        E512::from_bytes(&full)
    }

    fn store_partial(self, v: E512, b: &mut [u8]) {
        assert!(b.len() <= 64);
        let n = b.len();
        b.copy_from_slice(&v.bytes()[..n]);
    }

    fn load4x128(self, a: &[u8; 16], b: &[u8; 16], c: &[u8; 16], d: &[u8; 16]) -> E512 {
        let mut full = [0u8; 64];
        for (i, part) in [a, b, c, d].into_iter().enumerate() {
            full[16 * i..16 * i + 16].copy_from_slice(part);
        }
        E512::from_bytes(&full)
    }

    fn load4x128_partial(self, a: &[u8], b: &[u8], c: &[u8], d: &[u8]) -> E512 {
        let mut full = [0u8; 64];
        for (i, part) in [a, b, c, d].into_iter().enumerate() {
            assert!(part.len() <= 16);
            full[16 * i..16 * i + part.len()].copy_from_slice(part);
        }
        E512::from_bytes(&full)
    }

    fn load2x256(self, lo: &[u8; 32], hi: &[u8; 32]) -> E512 {
        let mut full = [0u8; 64];
        full[..32].copy_from_slice(lo);
        full[32..].copy_from_slice(hi);
        E512::from_bytes(&full)
    }

    fn store128<const Q: i32>(self, v: E512, out: &mut [u8; 16]) {
        let q = (Q & 3) as usize;
        out.copy_from_slice(&v.bytes()[16 * q..16 * q + 16]);
    }

    fn xor(self, a: E512, b: E512) -> E512 {
        map64(a, b, |x, y| x ^ y)
    }

    fn or(self, a: E512, b: E512) -> E512 {
        map64(a, b, |x, y| x | y)
    }

    fn and(self, a: E512, b: E512) -> E512 {
        map64(a, b, |x, y| x & y)
    }

    fn add32(self, a: E512, b: E512) -> E512 {
        map32(a, b, u32::wrapping_add)
    }

    fn rotl32<const N: i32>(self, a: E512) -> E512 {
        map32(a, a, |x, _| x.rotate_left(N as u32 % 32))
    }

    fn add64(self, a: E512, b: E512) -> E512 {
        map64(a, b, u64::wrapping_add)
    }

    fn sub64(self, a: E512, b: E512) -> E512 {
        map64(a, b, u64::wrapping_sub)
    }

    fn shr64<const N: u32>(self, a: E512) -> E512 {
        map64(a, a, |x, _| if N < 64 { x >> N } else { 0 })
    }

    fn shl64<const N: u32>(self, a: E512) -> E512 {
        map64(a, a, |x, _| if N < 64 { x << N } else { 0 })
    }

    fn madd52lo(self, acc: E512, b: E512, c: E512) -> E512 {
        E512(core::array::from_fn(|i| {
            acc.0[i].wrapping_add(product52(b.0[i], c.0[i]) as u64 & M52)
        }))
    }

    fn madd52hi(self, acc: E512, b: E512, c: E512) -> E512 {
        E512(core::array::from_fn(|i| {
            acc.0[i].wrapping_add((product52(b.0[i], c.0[i]) >> 52) as u64)
        }))
    }

    fn blend64(self, mask: u8, a: E512, b: E512) -> E512 {
        E512(core::array::from_fn(|i| {
            if mask >> i & 1 == 1 { b.0[i] } else { a.0[i] }
        }))
    }

    fn eq64(self, a: E512, b: E512) -> u8 {
        (0..8).fold(0u8, |m, i| m | (((a.0[i] == b.0[i]) as u8) << i))
    }

    fn unpacklo32(self, a: E512, b: E512) -> E512 {
        let (a, b) = (a.u32s(), b.u32s());
        E512::from_u32s(core::array::from_fn(|i| {
            let (q, k) = (i / 4, i % 4);
            let src = if k % 2 == 0 { &a } else { &b };
            src[4 * q + k / 2]
        }))
    }

    fn unpackhi32(self, a: E512, b: E512) -> E512 {
        let (a, b) = (a.u32s(), b.u32s());
        E512::from_u32s(core::array::from_fn(|i| {
            let (q, k) = (i / 4, i % 4);
            let src = if k % 2 == 0 { &a } else { &b };
            src[4 * q + 2 + k / 2]
        }))
    }

    fn unpacklo64(self, a: E512, b: E512) -> E512 {
        E512::from_blocks(core::array::from_fn(|q| [a.block(q)[0], b.block(q)[0]]))
    }

    fn unpackhi64(self, a: E512, b: E512) -> E512 {
        E512::from_blocks(core::array::from_fn(|q| [a.block(q)[1], b.block(q)[1]]))
    }

    fn shuffle128<const I: i32>(self, a: E512, b: E512) -> E512 {
        let sel = |k: i32| ((I >> (2 * k)) & 3) as usize;
        E512::from_blocks([
            a.block(sel(0)),
            a.block(sel(1)),
            b.block(sel(2)),
            b.block(sel(3)),
        ])
    }
}
