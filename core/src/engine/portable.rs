//! The portable backend: scalar ChaCha20 and Poly1305 in safe Rust, for every CPU. It is also
//! the reference the SIMD backends are tested against (besides ring).
//!
//! Constant time: only additions, XORs, rotations and full-width multiplications on secret
//! data; the final reduction selects with masks, never with branches.

use super::wave::{Kernel, Lanes, Work};
use super::{BLOCK, chacha_state};
use crate::suite::TAG_LEN;
use zeroize::Zeroizing;

/// One ChaCha20 block (RFC 8439 §2.3) for `state`, as bytes.
pub fn chacha_block(state: &[u32; 16], out: &mut [u8; BLOCK]) {
    let mut x = *state;
    #[inline(always)]
    fn qr(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    }
    for _ in 0..10 {
        qr(&mut x, 0, 4, 8, 12);
        qr(&mut x, 1, 5, 9, 13);
        qr(&mut x, 2, 6, 10, 14);
        qr(&mut x, 3, 7, 11, 15);
        qr(&mut x, 0, 5, 10, 15);
        qr(&mut x, 1, 6, 11, 12);
        qr(&mut x, 2, 7, 8, 13);
        qr(&mut x, 3, 4, 9, 14);
    }
    for (i, w) in x.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.wrapping_add(state[i]).to_le_bytes());
    }
}

/// Poly1305 state in base 2^64: `h = h0 + h1·2^64 + h2·2^128` with `h2` a few bits, and the
/// clamped key `r = r0 + r1·2^64`. Products go through u128, which x86_64 and aarch64 compute
/// with constant-time multiply instructions.
#[derive(Clone, Default)]
pub struct Poly {
    r: [u64; 2],
    s: [u64; 2],
    h: [u64; 3],
}

impl Poly {
    /// A fresh state for the one-time key `r || s`.
    pub fn new(key: &[u8; 32]) -> Self {
        let le = |i: usize| u64::from_le_bytes(key[i..i + 8].try_into().expect("8 bytes"));
        Self {
            r: [le(0) & 0x0fff_fffc_0fff_ffff, le(8) & 0x0fff_fffc_0fff_fffc],
            s: [le(16), le(24)],
            h: [0; 3],
        }
    }

    /// Absorbs one 16-byte block with the 2^128 bit set.
    #[inline(always)]
    pub fn block(&mut self, b: &[u8; 16]) {
        let [r0, r1] = self.r;
        // 2^130 ≡ 5 (mod p) and r1 is a multiple of 4, so h1·r1·2^128 ≡ h1·(5·r1/4): s1 = r1 + r1/4.
        let s1 = r1 + (r1 >> 2);
        let [h0, h1, h2] = self.h;
        let m0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let m1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let (h0, c) = h0.overflowing_add(m0);
        let (h1, c1) = h1.overflowing_add(m1);
        let (h1, c2) = h1.overflowing_add(c as u64);
        let h2 = h2 + (c1 as u64) + (c2 as u64) + 1;
        let m = |a: u64, b: u64| (a as u128) * (b as u128);
        let d0 = m(h0, r0) + m(h1, s1);
        let d1 = m(h0, r1) + m(h1, r0) + m(h2, s1);
        let d2 = h2 * r0;
        let d1 = d1 + (d0 >> 64);
        let d2 = d2 + (d1 >> 64) as u64;
        // Fold everything at or above 2^130 back in, times 5.
        let fold = (d2 & !3) + (d2 >> 2);
        let (h0, c) = (d0 as u64).overflowing_add(fold);
        let (h1, c) = (d1 as u64).overflowing_add(c as u64);
        self.h = [h0, h1, (d2 & 3) + c as u64];
    }

    /// Absorbs whole 16-byte blocks (each with the 2^128 bit set, as AEAD padding gives).
    pub fn blocks(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        for b in data.chunks_exact(16) {
            self.block(b.try_into().expect("16-byte chunk"));
        }
    }

    /// The tag: `(h mod p) + s mod 2^128`, computed without secret-dependent branches.
    pub fn finish(&self) -> [u8; 16] {
        let [h0, h1, h2] = self.h;
        // g = h + 5; if g reaches 2^130, h ≥ p and the tag uses g (its low 128 bits).
        let (g0, c) = h0.overflowing_add(5);
        let (g1, c) = h1.overflowing_add(c as u64);
        let g2 = h2 + c as u64;
        let use_g = 0u64.wrapping_sub(g2 >> 2); // all ones when g2 ≥ 4
        let f0 = (h0 & !use_g) | (g0 & use_g);
        let f1 = (h1 & !use_g) | (g1 & use_g);
        let v = (f0 as u128 | ((f1 as u128) << 64))
            .wrapping_add(self.s[0] as u128 | ((self.s[1] as u128) << 64));
        v.to_le_bytes()
    }
}

impl Drop for Poly {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.r);
        zeroize::Zeroize::zeroize(&mut self.s);
        zeroize::Zeroize::zeroize(&mut self.h);
    }
}

/// The portable kernel: waves of one job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortableKernel;

impl Kernel for PortableKernel {
    const LANES: usize = 1;
    type Mac = Poly;

    fn new_mac(self) -> Poly {
        Poly::default()
    }

    fn mac_init(self, mac: &mut Poly, keys: &Lanes<&[u8; 32]>, nonces: &Lanes<&[u8; 12]>) {
        let mut block = Zeroizing::new([0u8; BLOCK]);
        chacha_block(&chacha_state(keys[0], nonces[0], 0), &mut block);
        *mac = Poly::new(block[..32].try_into().expect("32 bytes"));
    }

    fn mac_blocks(self, mac: &mut Poly, n: usize, inputs: &Lanes<&[u8]>, active: u32) {
        if active & 1 == 1 {
            mac.blocks(&inputs[0][..16 * n]);
        }
    }

    fn mac_verify(self, mac: &mut Poly, expected: &Lanes<&[u8; TAG_LEN]>) -> u32 {
        tags_equal(&mac.finish(), expected[0]) as u32
    }

    fn mac_tags(self, mac: &mut Poly, out: &mut Lanes<[u8; TAG_LEN]>) {
        out[0] = mac.finish();
    }

    fn xor(self, jobs: &mut [Work<'_>]) {
        let mut ks = Zeroizing::new([0u8; BLOCK]);
        for job in jobs {
            let mut state = Zeroizing::new(chacha_state(job.key, job.nonce, 1));
            for b in 0..job.data.len().div_ceil(BLOCK) {
                chacha_block(&state, &mut ks);
                if let Some((src, dst)) = job.data.window(b) {
                    match src {
                        Some(src) => {
                            for ((d, s), k) in dst.iter_mut().zip(src).zip(ks.iter()) {
                                *d = s ^ k;
                            }
                        }
                        None => {
                            for (d, k) in dst.iter_mut().zip(ks.iter()) {
                                *d ^= k;
                            }
                        }
                    }
                }
                // Messages are bounded to 2^32 - 1 blocks, so the counter does not wrap.
                state[12] = state[12].wrapping_add(1);
            }
        }
    }
}

/// Compares tags without an early exit: every byte is XORed and ORed in, and only the final
/// (public) verdict is branched on.
pub(crate) fn tags_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc8439_chacha_block() {
        // RFC 8439 §2.3.2.
        let key: [u8; 32] = h("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = h("000000090000004a00000000").try_into().unwrap();
        let mut out = [0u8; 64];
        chacha_block(&chacha_state(&key, &nonce, 1), &mut out);
        assert_eq!(
            out.to_vec(),
            h(
                "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4ed2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
            )
        );
    }
}
