//! The AVX-512 backend: sixteen jobs per wave, ChaCha20 with one job per 32-bit lane of a zmm
//! register (rotations by `vprold`), Poly1305 with IFMA in radix 2^44 on two groups of eight
//! 64-bit lanes.
//!
//! The kernels ([`chacha`], [`poly`]) are written once, generic over the small instruction set
//! [`isa::Isa`]. They are compiled twice: on the real instructions ([`NativeKernel`], reachable
//! only with the [`Avx512`] token from the CPU detection, each entry point a `#[target_feature]`
//! function), and on their plain-Rust emulation ([`EmuKernel`], for tests on every machine; see
//! [`emu`]).
#![allow(unsafe_code)]

mod chacha;
pub(crate) mod emu;
pub(crate) mod isa;
#[cfg(target_arch = "x86_64")]
mod native;
mod poly;

use super::wave::{Kernel, Lanes, Work};
use crate::suite::TAG_LEN;

/// The AVX-512 kernels on the emulated instruction set: correct everywhere, slow everywhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EmuKernel;

impl Kernel for EmuKernel {
    const LANES: usize = 16;
    type Mac = poly::Mac<emu::E512>;

    fn new_mac(self) -> Self::Mac {
        poly::new(emu::Emu)
    }

    fn mac_init(self, mac: &mut Self::Mac, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>) {
        poly::init(emu::Emu, mac, keys, nonces)
    }

    fn mac_blocks(self, mac: &mut Self::Mac, n: usize, inputs: &Lanes<&[u8]>, active: u32) {
        if n >= poly::PAIRS_FROM {
            poly::blocks_paired(emu::Emu, mac, n, inputs, active)
        } else {
            poly::blocks(emu::Emu, mac, n, inputs, active)
        }
    }

    fn mac_verify(self, mac: &mut Self::Mac, expected: &Lanes<&[u8; TAG_LEN]>) -> u32 {
        poly::verify(emu::Emu, mac, expected)
    }

    fn mac_tags(self, mac: &mut Self::Mac, out: &mut Lanes<[u8; TAG_LEN]>) {
        poly::tags(emu::Emu, mac, out)
    }

    fn xor(self, jobs: &mut [Work<'_>]) {
        chacha::xor(emu::Emu, jobs)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use native_kernel::NativeKernel;

#[cfg(target_arch = "x86_64")]
mod native_kernel {
    use super::{Kernel, Lanes, TAG_LEN, Work, chacha, poly};
    use crate::engine::cpu::Avx512;
    use core::arch::x86_64::__m512i;

    /// The AVX-512 kernels on the real instructions. Made only from an [`Avx512`] token.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct NativeKernel(pub(crate) Avx512);

    // Each entry point enables the features the token proves, so that the generic kernels
    // inline into AVX-512 code; calling one is sound exactly when such a token exists.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn init(t: Avx512, mac: &mut poly::Mac<__m512i>, k: &Lanes<&[u8; 32]>, n: &Lanes<&[u8; 12]>) {
        poly::init(t, mac, k, n)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn blocks(t: Avx512, mac: &mut poly::Mac<__m512i>, n: usize, i: &Lanes<&[u8]>, a: u32) {
        poly::blocks(t, mac, n, i, a)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn blocks_paired(t: Avx512, mac: &mut poly::Mac<__m512i>, n: usize, i: &Lanes<&[u8]>, a: u32) {
        poly::blocks_paired(t, mac, n, i, a)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn verify(t: Avx512, mac: &poly::Mac<__m512i>, e: &Lanes<&[u8; TAG_LEN]>) -> u32 {
        poly::verify(t, mac, e)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn tags(t: Avx512, mac: &poly::Mac<__m512i>, out: &mut Lanes<[u8; TAG_LEN]>) {
        poly::tags(t, mac, out)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
    fn xor(t: Avx512, jobs: &mut [Work<'_>]) {
        chacha::xor(t, jobs)
    }

    impl Kernel for NativeKernel {
        const LANES: usize = 16;
        type Mac = poly::Mac<__m512i>;

        fn new_mac(self) -> Self::Mac {
            poly::new(self.0)
        }

        fn mac_init(self, mac: &mut Self::Mac, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>) {
            // SAFETY: `self.0` is an `Avx512` token: the CPU has every feature `init` enables.
            unsafe { init(self.0, mac, keys, nonces) }
        }

        fn mac_blocks(self, mac: &mut Self::Mac, n: usize, inputs: &Lanes<&[u8]>, active: u32) {
            // Two entry points, so that short runs keep the one-block loop's lean register use.
            if n >= poly::PAIRS_FROM {
                // SAFETY: as above.
                unsafe { blocks_paired(self.0, mac, n, inputs, active) }
            } else {
                // SAFETY: as above.
                unsafe { blocks(self.0, mac, n, inputs, active) }
            }
        }

        fn mac_verify(self, mac: &mut Self::Mac, expected: &Lanes<&[u8; TAG_LEN]>) -> u32 {
            // SAFETY: as above.
            unsafe { verify(self.0, mac, expected) }
        }

        fn mac_tags(self, mac: &mut Self::Mac, out: &mut Lanes<[u8; TAG_LEN]>) {
            // SAFETY: as above.
            unsafe { tags(self.0, mac, out) }
        }

        fn xor(self, jobs: &mut [Work<'_>]) {
            // SAFETY: as above.
            unsafe { xor(self.0, jobs) }
        }
    }
}

/// The emulation checked against the instructions it stands for. On a CPU without AVX-512 these
/// tests say so loudly and check nothing; the kernels themselves are checked on the emulation
/// everywhere by the RFC, Wycheproof and differential tests.
#[cfg(all(test, target_arch = "x86_64"))]
mod emulation_matches_hardware {
    use super::emu::{E512, Emu};
    use super::isa::Isa;
    use crate::engine::cpu::Avx512;
    use core::arch::x86_64::__m512i;

    /// A deterministic stream of test vectors, with some limbs near 2^52 and 2^64.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // SplitMix64.
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn vector(&mut self) -> E512 {
            E512(core::array::from_fn(|_| match self.next() % 4 {
                0 => self.next() & ((1 << 52) - 1),
                1 => self.next() | (1 << 63),
                _ => self.next(),
            }))
        }

        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
    }

    fn to_native(t: Avx512, v: E512) -> __m512i {
        let mut b = [0u8; 64];
        Emu.store(v, &mut b);
        t.load(&b)
    }

    fn from_native(t: Avx512, v: __m512i) -> E512 {
        let mut b = [0u8; 64];
        t.store(v, &mut b);
        Emu.load(&b)
    }

    fn hardware() -> Option<Avx512> {
        let t = Avx512::detect();
        if t.is_none() {
            eprintln!(
                "NOT RUN: this CPU has no AVX-512 (F, VL, BW, IFMA), so the emulation could not be \
                 checked against the hardware here; the AVX-512 kernels were tested on the emulation only"
            );
        } else {
            eprintln!("AVX-512 present: checking every emulated operation against the hardware");
        }
        t
    }

    #[test]
    fn every_operation_agrees_on_random_inputs() {
        let Some(t) = hardware() else { return };
        let mut g = Gen(0x5ea1);
        for round in 0..2000 {
            let (a, b, c) = (g.vector(), g.vector(), g.vector());
            let (na, nb, nc) = (to_native(t, a), to_native(t, b), to_native(t, c));
            let back = |v| from_native(t, v);
            let m8 = g.next() as u8;
            macro_rules! same {
                ($name:expr, $emu:expr, $native:expr) => {
                    assert_eq!($emu, back($native), "{} differs (round {round})", $name);
                };
            }
            same!("xor", Emu.xor(a, b), t.xor(na, nb));
            same!("or", Emu.or(a, b), t.or(na, nb));
            same!("and", Emu.and(a, b), t.and(na, nb));
            same!("add32", Emu.add32(a, b), t.add32(na, nb));
            same!("rotl32<7>", Emu.rotl32::<7>(a), t.rotl32::<7>(na));
            same!("rotl32<8>", Emu.rotl32::<8>(a), t.rotl32::<8>(na));
            same!("rotl32<12>", Emu.rotl32::<12>(a), t.rotl32::<12>(na));
            same!("rotl32<16>", Emu.rotl32::<16>(a), t.rotl32::<16>(na));
            same!("add64", Emu.add64(a, b), t.add64(na, nb));
            same!("sub64", Emu.sub64(a, b), t.sub64(na, nb));
            same!("shr64<44>", Emu.shr64::<44>(a), t.shr64::<44>(na));
            same!("shr64<20>", Emu.shr64::<20>(a), t.shr64::<20>(na));
            same!("shl64<20>", Emu.shl64::<20>(a), t.shl64::<20>(na));
            same!("shl64<44>", Emu.shl64::<44>(a), t.shl64::<44>(na));
            same!("madd52lo", Emu.madd52lo(a, b, c), t.madd52lo(na, nb, nc));
            same!("madd52hi", Emu.madd52hi(a, b, c), t.madd52hi(na, nb, nc));
            same!("blend64", Emu.blend64(m8, a, b), t.blend64(m8, na, nb));
            same!("unpacklo32", Emu.unpacklo32(a, b), t.unpacklo32(na, nb));
            same!("unpackhi32", Emu.unpackhi32(a, b), t.unpackhi32(na, nb));
            same!("unpacklo64", Emu.unpacklo64(a, b), t.unpacklo64(na, nb));
            same!("unpackhi64", Emu.unpackhi64(a, b), t.unpackhi64(na, nb));
            same!(
                "shuffle128<0x44>",
                Emu.shuffle128::<0x44>(a, b),
                t.shuffle128::<0x44>(na, nb)
            );
            same!(
                "shuffle128<0xEE>",
                Emu.shuffle128::<0xEE>(a, b),
                t.shuffle128::<0xEE>(na, nb)
            );
            same!(
                "shuffle128<0x88>",
                Emu.shuffle128::<0x88>(a, b),
                t.shuffle128::<0x88>(na, nb)
            );
            same!(
                "shuffle128<0xDD>",
                Emu.shuffle128::<0xDD>(a, b),
                t.shuffle128::<0xDD>(na, nb)
            );
            same!(
                "shuffle128<0x1B>",
                Emu.shuffle128::<0x1B>(a, b),
                t.shuffle128::<0x1B>(na, nb)
            );
            same!(
                "splat32",
                Emu.splat32(a.0[0] as u32),
                t.splat32(a.0[0] as u32)
            );
            same!("splat64", Emu.splat64(a.0[1]), t.splat64(a.0[1]));
            same!("zero", Emu.zero(), t.zero());
            // Equal lanes are rare at random: make some.
            let b2 = Emu.blend64(m8, a, b);
            assert_eq!(Emu.eq64(a, b2), t.eq64(na, to_native(t, b2)), "eq64");
            // Memory forms.
            let bytes: [u8; 64] = g.bytes();
            same!("load", Emu.load(&bytes), t.load(&bytes));
            let n = (g.next() % 65) as usize;
            same!(
                "load_partial",
                Emu.load_partial(&bytes[..n]),
                t.load_partial(&bytes[..n])
            );
            let (mut x, mut y) = ([0xa5u8; 64], [0xa5u8; 64]);
            Emu.store_partial(a, &mut x[..n]);
            t.store_partial(na, &mut y[..n]);
            assert_eq!(x, y, "store_partial {n}");
            let q: [[u8; 16]; 4] = [g.bytes(), g.bytes(), g.bytes(), g.bytes()];
            same!(
                "load4x128",
                Emu.load4x128(&q[0], &q[1], &q[2], &q[3]),
                t.load4x128(&q[0], &q[1], &q[2], &q[3])
            );
            let l: [usize; 4] = core::array::from_fn(|_| (g.next() % 17) as usize);
            same!(
                "load4x128_partial",
                Emu.load4x128_partial(&q[0][..l[0]], &q[1][..l[1]], &q[2][..l[2]], &q[3][..l[3]]),
                t.load4x128_partial(&q[0][..l[0]], &q[1][..l[1]], &q[2][..l[2]], &q[3][..l[3]])
            );
            let h: [[u8; 32]; 2] = [g.bytes(), g.bytes()];
            same!(
                "load2x256",
                Emu.load2x256(&h[0], &h[1]),
                t.load2x256(&h[0], &h[1])
            );
            let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
            Emu.store128::<2>(a, &mut x);
            t.store128::<2>(na, &mut y);
            assert_eq!(x, y, "store128");
        }
    }

    #[test]
    fn kernels_agree_on_the_hardware_and_the_emulation() {
        use crate::engine::wave::{Kernel, MAX_LANES};
        let Some(t) = hardware() else { return };
        let (native, emulated) = (super::NativeKernel(t), super::EmuKernel);
        let mut g = Gen(7);
        for _ in 0..20 {
            let keys: Vec<[u8; 32]> = (0..MAX_LANES).map(|_| g.bytes()).collect();
            let nonces: Vec<[u8; 12]> = (0..MAX_LANES).map(|_| g.bytes()).collect();
            let k: [&[u8; 32]; MAX_LANES] = core::array::from_fn(|l| &keys[l]);
            let n: [&[u8; 12]; MAX_LANES] = core::array::from_fn(|l| &nonces[l]);
            // 160 bytes a lane: ten blocks, so both the one-block and the paired paths run.
            let data: Vec<[u8; 160]> = (0..MAX_LANES).map(|_| g.bytes()).collect();
            let inputs: [&[u8]; MAX_LANES] = core::array::from_fn(|l| &data[l][..]);
            let active = g.next() as u32 & 0xffff;
            let (mut a, mut b) = (native.new_mac(), emulated.new_mac());
            native.mac_init(&mut a, &k, &n);
            emulated.mac_init(&mut b, &k, &n);
            native.mac_blocks(&mut a, 9, &inputs, 0xffff);
            emulated.mac_blocks(&mut b, 9, &inputs, 0xffff);
            native.mac_blocks(&mut a, 2, &inputs, active);
            emulated.mac_blocks(&mut b, 2, &inputs, active);
            native.mac_blocks(&mut a, 10, &inputs, active);
            emulated.mac_blocks(&mut b, 10, &inputs, active);
            let (mut ta, mut tb) = ([[0u8; 16]; MAX_LANES], [[0u8; 16]; MAX_LANES]);
            native.mac_tags(&mut a, &mut ta);
            emulated.mac_tags(&mut b, &mut tb);
            assert_eq!(ta, tb);
        }
    }
}
