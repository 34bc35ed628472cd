//! The portable backend: scalar ChaCha20 and Poly1305 in safe Rust, for every CPU. It is also
//! the reference the SIMD backends are tested against (besides ring).
//!
//! Constant time: only additions, XORs, rotations and full-width multiplications on secret
//! data; the final reduction selects with masks, never with branches.

use super::{BLOCK, PolyLanes};

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

/// Computes `states.len()` blocks, one per state.
pub fn chacha_blocks(states: &[[u32; 16]], out: &mut [[u8; BLOCK]]) {
    for (s, o) in states.iter().zip(out.iter_mut()) {
        chacha_block(s, o);
    }
}

/// Poly1305 state with 44-bit limbs (three per 130-bit number), multiplied through u128.
#[derive(Clone, Default)]
pub struct Poly {
    r: [u64; 3],
    s: [u64; 2],
    h: [u64; 3],
}

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;

impl Poly {
    /// A fresh state for the one-time key `r || s`.
    pub fn new(key: &[u8; 32]) -> Self {
        let t0 = u64::from_le_bytes(key[0..8].try_into().expect("8 bytes")) & 0x0ffffffc0fffffff;
        let t1 = u64::from_le_bytes(key[8..16].try_into().expect("8 bytes")) & 0x0ffffffc0ffffffc;
        Self {
            r: [t0 & M44, ((t0 >> 44) | (t1 << 20)) & M44, (t1 >> 24) & M42],
            s: [
                u64::from_le_bytes(key[16..24].try_into().expect("8 bytes")),
                u64::from_le_bytes(key[24..32].try_into().expect("8 bytes")),
            ],
            h: [0; 3],
        }
    }

    /// Absorbs whole 16-byte blocks (each with the 2^128 bit set, as AEAD padding gives).
    pub fn blocks(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let [r0, r1, r2] = self.r;
        let s1 = r1 * (5 << 2);
        let s2 = r2 * (5 << 2);
        let [mut h0, mut h1, mut h2] = self.h;
        for b in data.chunks_exact(16) {
            let t0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
            let t1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
            h0 += t0 & M44;
            h1 += ((t0 >> 44) | (t1 << 20)) & M44;
            h2 += ((t1 >> 24) & M42) | (1 << 40);
            let m = |a: u64, b: u64| (a as u128) * (b as u128);
            let d0 = m(h0, r0) + m(h1, s2) + m(h2, s1);
            let d1 = m(h0, r1) + m(h1, r0) + m(h2, s2);
            let d2 = m(h0, r2) + m(h1, r1) + m(h2, r0);
            let mut c = (d0 >> 44) as u64;
            h0 = d0 as u64 & M44;
            let d1 = d1 + c as u128;
            c = (d1 >> 44) as u64;
            h1 = d1 as u64 & M44;
            let d2 = d2 + c as u128;
            c = (d2 >> 42) as u64;
            h2 = d2 as u64 & M42;
            h0 += c * 5;
            c = h0 >> 44;
            h0 &= M44;
            h1 += c;
        }
        self.h = [h0, h1, h2];
    }

    /// The tag: `(h mod p) + s mod 2^128`, computed without secret-dependent branches.
    pub fn finish(&self) -> [u8; 16] {
        let [mut h0, mut h1, mut h2] = self.h;
        let mut c = h1 >> 44;
        h1 &= M44;
        h2 += c;
        c = h2 >> 42;
        h2 &= M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        h1 += c;
        c = h1 >> 44;
        h1 &= M44;
        h2 += c;
        c = h2 >> 42;
        h2 &= M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        h1 += c;
        // g = h + 5 - 2^130; keep g if it did not borrow.
        let mut g0 = h0 + 5;
        c = g0 >> 44;
        g0 &= M44;
        let mut g1 = h1 + c;
        c = g1 >> 44;
        g1 &= M44;
        let g2 = h2.wrapping_add(c).wrapping_sub(1 << 42);
        let keep_g = (g2 >> 63).wrapping_sub(1); // all ones when g2 did not go negative
        h0 = (h0 & !keep_g) | (g0 & keep_g);
        h1 = (h1 & !keep_g) | (g1 & keep_g);
        h2 = (h2 & !keep_g) | (g2 & keep_g);
        // Sum rather than OR the limbs; everything is modulo 2^128 from here on.
        let v = (h0 as u128)
            .wrapping_add((h1 as u128) << 44)
            .wrapping_add((h2 as u128) << 88)
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

/// One lane at a time: the portable backend's [`PolyLanes`].
#[derive(Default)]
pub struct PortableLanes {
    lane: Poly,
}

impl PolyLanes for PortableLanes {
    const LANES: usize = 1;

    fn set_lane(&mut self, _lane: usize, key: &[u8; 32]) {
        self.lane = Poly::new(key);
    }

    fn blocks(&mut self, n: usize, inputs: &[&[u8]]) {
        self.lane.blocks(&inputs[0][..16 * n]);
    }

    fn finish_lane(&mut self, _lane: usize) -> [u8; 16] {
        self.lane.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chacha_state;

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
