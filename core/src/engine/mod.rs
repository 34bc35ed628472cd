//! The batch AEAD engine: many independent envelopes per call, one envelope per SIMD lane.
//!
//! An [`Engine`] is a value, chosen once by the program and handed to whatever does crypto
//! (the relay's pipeline, the client), the way rustls takes a `CryptoProvider`: nothing in this
//! library reads the environment. [`Engine::detect`] picks the fastest backend this CPU runs;
//! [`Engine::new`] builds one for a named [`Backend`] if the CPU runs it.
//!
//! Backends, one module each, all behind the wave driver in `wave.rs`:
//! - `avx512`: sixteen jobs per wave; ChaCha20 with `vprold`, Poly1305 with IFMA (radix 2^44).
//!   Its kernels are written over a small lane-vector instruction set and also run on a
//!   plain-Rust emulation of it ([`Backend::Avx512Emulated`]), so they are tested on every CPU.
//! - `avx2`: eight jobs per wave; Poly1305 in 26-bit limbs with `vpmuludq`.
//! - `portable`: safe scalar code, one job per wave; the reference.
//! - `ring`: ring's ChaCha20-Poly1305, one job at a time, for CPUs without AVX2.
//!
//! AES-256-GCM jobs always go to ring, one at a time. SIMD kernels can only be reached through
//! a CPU token from `cpu.rs` ([`cpu::Avx2`], [`cpu::Avx512`]), which only the detection makes.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod avx512;
pub mod cpu;
mod floor;
mod ops;
mod portable;
mod ring;
mod wave;

pub use crate::batch::{MAX_MESSAGE, MAX_MESSAGE_AES_GCM, max_message};
pub use cpu::{core_cycles_per_tsc_tick, tsc_now};
pub use floor::KernelCost;

/// Bytes of one ChaCha20 block.
pub const BLOCK: usize = 64;

/// The environment variable sealpost's programs read to force a backend. The library itself
/// never reads it: programs parse it with [`Backend::from_str`](std::str::FromStr) and pass the
/// resulting [`Engine`] along.
pub const BACKEND_ENV: &str = "SEALPOST_BACKEND";

/// A backend of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ring's ChaCha20-Poly1305, one envelope at a time: the choice on CPUs without AVX2.
    Ring,
    /// Safe scalar code, one envelope at a time; every CPU. The reference implementation.
    Portable,
    /// AVX2: 8 envelopes per wave.
    Avx2,
    /// AVX-512 F/VL/BW with IFMA: 16 envelopes per wave.
    Avx512,
    /// The AVX-512 backend's algorithms on a plain-Rust emulation of its instructions: every
    /// CPU, very slow. For testing those algorithms on machines without AVX-512.
    Avx512Emulated,
}

/// Why an engine cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The CPU lacks the instructions the backend needs.
    #[error("backend {0} needs CPU features this machine does not have (supported here: {1})")]
    Unsupported(&'static str, String),
    /// A name that is no backend.
    #[error("unknown backend {0:?}: expected ring, portable, avx2, avx512 or avx512-emulated")]
    Unknown(String),
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 5] = [
        Backend::Ring,
        Backend::Portable,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Avx512Emulated,
    ];

    /// The lowercase name used by `SEALPOST_BACKEND` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Avx512Emulated => "avx512-emulated",
        }
    }

    /// Whether this CPU runs the backend.
    pub fn check(self) -> Result<(), EngineError> {
        Engine::new(self).map(|_| ())
    }

    /// Whether this CPU runs the backend, asked of the detection directly (so that building
    /// an error message, which lists these, never recurses into [`Engine::new`]).
    fn available(self) -> bool {
        match self {
            Self::Ring | Self::Portable | Self::Avx512Emulated => true,
            Self::Avx2 => cpu::Avx2::detect().is_some(),
            Self::Avx512 => cpu::Avx512::detect().is_some(),
        }
    }

    /// Whether the backend runs on this CPU's own SIMD instructions (as opposed to scalar code,
    /// ring, or the emulation).
    pub fn is_simd(self) -> bool {
        matches!(self, Self::Avx2 | Self::Avx512)
    }

    /// The backends this machine can run, in [`Backend::ALL`] order.
    pub fn supported() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.available()).collect()
    }

    /// The fastest backend this machine runs: AVX-512, else AVX2, else ring.
    pub fn best() -> Backend {
        [Self::Avx512, Self::Avx2]
            .into_iter()
            .find(|b| b.available())
            .unwrap_or(Self::Ring)
    }
}

fn supported_names() -> String {
    Backend::supported()
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ring" => Ok(Self::Ring),
            "portable" => Ok(Self::Portable),
            "avx2" => Ok(Self::Avx2),
            "avx512" => Ok(Self::Avx512),
            "avx512-emulated" | "avx512-emu" => Ok(Self::Avx512Emulated),
            _ => Err(EngineError::Unknown(s.to_owned())),
        }
    }
}

/// What an engine runs on: the backend, with the CPU token the SIMD ones need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Imp {
    Ring,
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(cpu::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(cpu::Avx512),
    Avx512Emulated,
}

/// The crypto engine: a checked backend choice. It can only be built for a backend this CPU
/// runs, which is what makes calling the SIMD code sound. Cheap to copy; share it freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Engine {
    imp: Imp,
}

impl Engine {
    /// An engine on `backend`, if this machine runs it.
    pub fn new(backend: Backend) -> Result<Self, EngineError> {
        let imp = match backend {
            Backend::Ring => Imp::Ring,
            Backend::Portable => Imp::Portable,
            Backend::Avx512Emulated => Imp::Avx512Emulated,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => match cpu::Avx2::detect() {
                Some(t) => Imp::Avx2(t),
                None => return Err(EngineError::Unsupported("avx2", supported_names())),
            },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => match cpu::Avx512::detect() {
                Some(t) => Imp::Avx512(t),
                None => {
                    return Err(EngineError::Unsupported(
                        "avx512 (F, VL, BW and IFMA)",
                        supported_names(),
                    ));
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 | Backend::Avx512 => {
                return Err(EngineError::Unsupported(backend.name(), supported_names()));
            }
        };
        Ok(Self { imp })
    }

    /// ring, one job at a time: the right engine for code that seals or opens one envelope at a
    /// time (a client), where a wave of SIMD lanes would carry one job. Every CPU runs it.
    pub const fn ring() -> Self {
        Self { imp: Imp::Ring }
    }

    /// The fastest engine this CPU runs ([`Backend::best`]).
    pub fn detect() -> Self {
        Self::new(Backend::best()).unwrap_or(Self { imp: Imp::Ring })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.imp {
            Imp::Ring => Backend::Ring,
            Imp::Portable => Backend::Portable,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => Backend::Avx2,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => Backend::Avx512,
            Imp::Avx512Emulated => Backend::Avx512Emulated,
        }
    }

    /// The backend's name.
    pub fn describe(&self) -> &'static str {
        self.backend().name()
    }

    /// Envelopes per wave: how many jobs the backend processes side by side.
    pub fn lanes(&self) -> usize {
        use wave::Kernel;
        match self.imp {
            Imp::Ring | Imp::Portable => 1,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => avx2::Avx2Kernel::LANES,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => avx512::NativeKernel::LANES,
            Imp::Avx512Emulated => avx512::EmuKernel::LANES,
        }
    }
}

impl Default for Engine {
    /// [`Engine::detect`].
    fn default() -> Self {
        Self::detect()
    }
}

/// The initial ChaCha20 state for `key`, `nonce` and block `counter` (RFC 8439 §2.3).
pub(crate) fn chacha_state(key: &[u8; 32], nonce: &[u8; 12], counter: u32) -> [u32; 16] {
    let w = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut s = [0u32; 16];
    s[0] = 0x6170_7865;
    s[1] = 0x3320_646e;
    s[2] = 0x7962_2d32;
    s[3] = 0x6b20_6574;
    for i in 0..8 {
        s[4 + i] = w(&key[4 * i..]);
    }
    s[12] = counter;
    for i in 0..3 {
        s[13 + i] = w(&nonce[4 * i..]);
    }
    s
}
