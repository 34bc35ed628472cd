//! The kernels alone, timed: what a backend's ChaCha20 and Poly1305 cost per block when they
//! run on hot data with nothing around them. A whole operation can only approach this floor;
//! `sealpost-loadtest speed` reports how close each one comes.

use super::wave::{Data, Kernel, Lanes, MAX_LANES, Tag, Work};
use super::{Engine, Imp, tsc_now};
use std::time::{Duration, Instant};

/// A backend's kernel costs, in TSC ticks per lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelCost {
    /// One 64-byte ChaCha20 keystream block, transposed and XORed into data in place.
    pub chacha_tsc_per_block: f64,
    /// ChaCha20 block 0 turned into the lane's Poly1305 key (`mac_init`), per lane.
    pub key_tsc_per_lane: f64,
    /// One 16-byte Poly1305 block.
    pub poly_tsc_per_block: f64,
    /// Finishing a tag and comparing it (`mac_verify`), per lane.
    pub finish_tsc_per_lane: f64,
}

impl KernelCost {
    /// What the kernels alone take for one job with `aad` bytes of AAD and `ct` bytes of
    /// message: its key block, its keystream, its Poly1305 blocks and its tag.
    pub fn job_tsc(&self, aad: usize, ct: usize) -> f64 {
        let poly_blocks = aad.div_ceil(16) + ct.div_ceil(16) + 1;
        self.key_tsc_per_lane
            + ct.div_ceil(64) as f64 * self.chacha_tsc_per_block
            + poly_blocks as f64 * self.poly_tsc_per_block
            + self.finish_tsc_per_lane
    }
}

/// Bytes per lane the kernels are timed on: small enough that every lane's data stays in L1.
const LANE_BYTES: usize = 1024;

impl Engine {
    /// Times this engine's kernels for about `budget` each and returns the fastest of several
    /// repetitions (a floor, so the best run is the meaningful one). `None` for the ring
    /// backend, which has no kernels of ours, and off x86_64 (no TSC).
    pub fn kernel_cost(&self, budget: Duration) -> Option<KernelCost> {
        tsc_now()?;
        match self.imp {
            Imp::Ring => None,
            Imp::Portable => Some(measure(super::portable::PortableKernel, budget)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => Some(measure(super::avx2::Avx2Kernel(t), budget)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => Some(measure(super::avx512::NativeKernel(t), budget)),
            Imp::Avx512Emulated => Some(measure(super::avx512::EmuKernel, budget)),
        }
    }
}

/// TSC ticks per call of `f`: the fastest of ten timed slices of about `budget / 10` each.
fn ticks_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    let slice = budget / 10;
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t0 = Instant::now();
        let c0 = tsc_now().unwrap_or(0);
        let mut calls = 0u64;
        while calls == 0 || t0.elapsed() < slice {
            f();
            calls += 1;
        }
        let ticks = tsc_now().unwrap_or(0).wrapping_sub(c0);
        best = best.min(ticks as f64 / calls as f64);
    }
    best
}

fn measure<K: Kernel>(k: K, budget: Duration) -> KernelCost {
    let key = [7u8; 32];
    let nonce = [9u8; 12];
    let mut bufs = vec![[0x5au8; LANE_BYTES]; K::LANES];
    let chacha = ticks_per_call(budget, || {
        let mut works: Vec<Work<'_>> = bufs
            .iter_mut()
            .map(|b| Work {
                key: &key,
                nonce: &nonce,
                aad: &[],
                data: Data::InPlace(&mut b[..]),
                tag: Tag::In(&[]),
            })
            .collect();
        k.xor(&mut works);
    });
    let keys: Lanes<&[u8; 32]> = [&key; MAX_LANES];
    let nonces: Lanes<&[u8; 12]> = [&nonce; MAX_LANES];
    let mut mac = k.new_mac();
    k.mac_init(&mut mac, &keys, &nonces);
    let inputs: Lanes<&[u8]> = core::array::from_fn(|l| &bufs[l % K::LANES][..]);
    let all = if K::LANES >= 32 {
        u32::MAX
    } else {
        (1u32 << K::LANES) - 1
    };
    let poly = ticks_per_call(budget, || {
        k.mac_blocks(&mut mac, LANE_BYTES / 16, &inputs, all);
    });
    let key = ticks_per_call(budget / 2, || k.mac_init(&mut mac, &keys, &nonces));
    let tags: Lanes<&[u8; 16]> = [&[0; 16]; MAX_LANES];
    let finish = ticks_per_call(budget / 2, || {
        std::hint::black_box(k.mac_verify(&mut mac, &tags));
    });
    let lanes = K::LANES as f64;
    KernelCost {
        chacha_tsc_per_block: chacha / (lanes * (LANE_BYTES / 64) as f64),
        key_tsc_per_lane: key / lanes,
        poly_tsc_per_block: poly / (lanes * (LANE_BYTES / 16) as f64),
        finish_tsc_per_lane: finish / lanes,
    }
}
