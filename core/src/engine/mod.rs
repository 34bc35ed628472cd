//! The batch ChaCha20-Poly1305 engine: many independent envelopes per call, one envelope per
//! SIMD lane.
//!
//! A batch is split into two kinds of work, each spread over the lanes of the backend:
//! ChaCha20 blocks (the one-time Poly1305 keys, then the keystream for seal and open) are a flat
//! list of (envelope, counter) pairs, so every lane is busy whatever the envelopes' lengths;
//! Poly1305 runs one envelope per lane, and a lane whose envelope is finished is refilled with
//! the next one. Scheduling depends only on lengths, never on keys or data.
//!
//! Backends, one module each: `portable` (safe scalar code, every CPU) and `avx2` (8 ChaCha20
//! lanes, 8 Poly1305 lanes in two interleaved groups of four with 26-bit limbs). The CPU is
//! detected once; [`Engine::new`] or the `SEALPOST_BACKEND` environment variable forces one.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub(crate) mod driver;
mod portable;

pub use driver::MAX_MESSAGE;

use std::sync::OnceLock;

/// Bytes of one ChaCha20 block.
pub const BLOCK: usize = 64;

/// A backend of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Safe scalar code; every CPU.
    Portable,
    /// AVX2: 8 envelopes per instruction.
    Avx2,
    /// AVX-512 with IFMA. Not built in this version (see docs/CRYPTO.md): selecting it is an
    /// error that says so.
    Avx512,
}

/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The CPU lacks the instructions the backend needs.
    #[error("backend {0} needs CPU features this machine does not have (supported here: {1})")]
    Unsupported(&'static str, String),
    /// The backend is not part of this build.
    #[error(
        "backend avx512 is not built in this version: it could not be tested on the development machines, which have no AVX-512 (use avx2 or portable)"
    )]
    NotBuilt,
    /// A name that is no backend.
    #[error("unknown backend {0:?}: expected portable, avx2 or avx512")]
    Unknown(String),
}

impl Backend {
    /// Every backend, slowest first.
    pub const ALL: [Backend; 3] = [Backend::Portable, Backend::Avx2, Backend::Avx512];

    /// The lowercase name used by `SEALPOST_BACKEND` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this build can run the backend on this CPU.
    pub fn check(self) -> Result<(), EngineError> {
        match self {
            Self::Portable => Ok(()),
            Self::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    return Ok(());
                }
                Err(EngineError::Unsupported("avx2", supported_names()))
            }
            Self::Avx512 => Err(EngineError::NotBuilt),
        }
    }

    /// The backends this machine can run, slowest first.
    pub fn supported() -> Vec<Backend> {
        Self::ALL
            .into_iter()
            .filter(|b| b.check().is_ok())
            .collect()
    }

    /// The fastest backend this machine can run.
    pub fn best() -> Backend {
        *Self::supported()
            .last()
            .expect("portable is always supported")
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
            "portable" => Ok(Self::Portable),
            "avx2" => Ok(Self::Avx2),
            "avx512" => Ok(Self::Avx512),
            _ => Err(EngineError::Unknown(s.to_owned())),
        }
    }
}

/// The environment variable that forces a backend.
pub const BACKEND_ENV: &str = "SEALPOST_BACKEND";

/// The backend `SEALPOST_BACKEND` asks for, checked; `Ok(None)` when it is unset. Programs call
/// this at start-up to report a bad value; [`Engine::active`] falls back to the best backend
/// when the variable is invalid.
pub fn backend_from_env() -> Result<Option<Backend>, EngineError> {
    match std::env::var(BACKEND_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let b: Backend = v.parse()?;
            b.check()?;
            Ok(Some(b))
        }
        _ => Ok(None),
    }
}

/// A checked backend choice. It can only be built for a backend the CPU supports, which is what
/// makes calling the SIMD code sound.
///
/// An engine may also hand some ChaCha20-Poly1305 jobs to ring, by operation and size, where
/// ring is measurably faster on this class of machine (see [`Engine::tuned`]); an engine made
/// with [`Engine::new`] never does, so tests and benchmarks see the pure backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    backend: Backend,
    /// Jobs whose message is at least this long go to ring: `[verify (AAD), seal, open]`.
    ring_from: [usize; 3],
}

static ACTIVE: OnceLock<Engine> = OnceLock::new();

/// Which operation a job belongs to, for the ring crossover.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OpKind {
    Verify = 0,
    Seal = 1,
    Open = 2,
}

impl Engine {
    /// An engine on `backend` alone, if this machine can run it.
    pub fn new(backend: Backend) -> Result<Self, EngineError> {
        backend.check()?;
        Ok(Self {
            backend,
            ring_from: [usize::MAX; 3],
        })
    }

    /// `backend` plus ring where ring is faster, from `sealpost-loadtest speed` on the
    /// development machine (docs/BENCHMARKS.md): with AVX2, deposit-tag verification is ours at
    /// every size, while ring's stitched single-message ChaCha20-Poly1305 (its scalar Poly1305
    /// runs on the integer units while its vector ChaCha20 runs on the vector units) seals and
    /// opens messages of 96 bytes and more faster than our 8-lane ChaCha20 plus vector
    /// Poly1305 do. Without AVX2, ring (which has its own SIMD code) beats the portable backend
    /// everywhere, so every job goes to ring.
    pub fn tuned(backend: Backend) -> Result<Self, EngineError> {
        let mut e = Self::new(backend)?;
        e.ring_from = match backend {
            Backend::Portable => [0; 3],
            Backend::Avx2 => [usize::MAX, 96, 96],
            Backend::Avx512 => [usize::MAX; 3],
        };
        Ok(e)
    }

    /// The process-wide engine: the pure backend `SEALPOST_BACKEND` names, if set and usable;
    /// otherwise the best backend, tuned (see [`Engine::tuned`]). Decided once, on first use.
    pub fn active() -> Self {
        *ACTIVE.get_or_init(|| match backend_from_env().ok().flatten() {
            Some(b) => Self::new(b).unwrap_or_else(|_| Self::fallback()),
            None => Self::tuned(Backend::best()).unwrap_or_else(|_| Self::fallback()),
        })
    }

    fn fallback() -> Self {
        Self {
            backend: Backend::Portable,
            ring_from: [usize::MAX; 3],
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether some jobs go to ring (a tuned engine).
    pub fn uses_ring(&self) -> bool {
        self.ring_from.iter().any(|&t| t != usize::MAX)
    }

    /// A short description: the backend, and `+ring` when tuned.
    pub fn describe(&self) -> String {
        if self.uses_ring() {
            format!("{}+ring", self.backend)
        } else {
            self.backend.name().to_owned()
        }
    }

    /// Whether a ChaCha20-Poly1305 job of this operation and message length goes to ring.
    pub(crate) fn goes_to_ring(&self, op: OpKind, len: usize) -> bool {
        len >= self.ring_from[op as usize]
    }
}

/// The CPU's time-stamp counter (x86_64), for reporting TSC cycles per byte; `None` elsewhere.
pub fn tsc_now() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(avx2::tsc())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
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

/// A backend's Poly1305: `LANES` independent MACs advanced together.
pub(crate) trait PolyLanes: Default {
    /// Lanes.
    const LANES: usize;
    /// Starts lane `lane` afresh with one-time key `r || s` (all zeros parks the lane).
    fn set_lane(&mut self, lane: usize, key: &[u8; 32]);
    /// Absorbs `n` whole blocks into every lane; `inputs[l]` has at least `16 * n` bytes.
    fn blocks(&mut self, n: usize, inputs: &[&[u8]]);
    /// The tag of lane `lane`.
    fn finish_lane(&mut self, lane: usize) -> [u8; 16];
}

/// A backend: its ChaCha20 block function and its Poly1305 lanes.
pub(crate) trait Kernel {
    /// Poly1305 lanes.
    type Lanes: PolyLanes;
    /// Blocks computed per `chacha_blocks` call at most.
    const CHACHA_LANES: usize;
    /// One block per state; `states.len() <= CHACHA_LANES` and `out.len() == states.len()`.
    fn chacha_blocks(states: &[[u32; 16]], out: &mut [[u8; BLOCK]]);
}

struct PortableKernel;

impl Kernel for PortableKernel {
    type Lanes = portable::PortableLanes;
    const CHACHA_LANES: usize = 8;
    fn chacha_blocks(states: &[[u32; 16]], out: &mut [[u8; BLOCK]]) {
        portable::chacha_blocks(states, out);
    }
}

/// Runs `$body` with `K` bound to the engine's kernel type.
macro_rules! with_kernel {
    ($engine:expr, $k:ident => $body:expr) => {
        match $engine.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                type $k = avx2::Avx2Kernel;
                $body
            }
            _ => {
                type $k = PortableKernel;
                $body
            }
        }
    };
}

impl Engine {
    /// Deposit-tag style verification of ChaCha20-Poly1305 jobs (empty plaintext).
    pub(crate) fn chacha_verify(
        &self,
        jobs: &[&crate::batch::VerifyJob<'_>],
        results: &mut [bool],
    ) {
        with_kernel!(self, K => driver::verify::<K>(jobs, results))
    }

    /// Seals ChaCha20-Poly1305 work items.
    pub(crate) fn chacha_seal(&self, works: Vec<driver::SealWork<'_>>) {
        with_kernel!(self, K => driver::seal::<K>(works))
    }

    /// Opens ChaCha20-Poly1305 work items.
    pub(crate) fn chacha_open(&self, works: Vec<driver::OpenWork<'_>>, results: &mut [bool]) {
        with_kernel!(self, K => driver::open::<K>(works, results))
    }
}
