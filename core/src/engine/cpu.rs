//! CPU detection that hands out tokens. A token is a zero-sized value that only the functions
//! here can make, and only after the CPU (and the operating system, for the wider registers)
//! was found to support an instruction-set extension. The SIMD kernels take a token as an
//! argument, so no safe code path can reach them on a CPU that lacks their instructions.
//!
//! ```compile_fail
//! // Nothing outside the detection can make a token:
//! let token = sealpost_core::engine::cpu::Avx512(());
//! ```
//!
//! Also here: the time-stamp counter and a measurement of the core clock against it, for
//! reporting core cycles rather than TSC ticks (on the development VMs the TSC runs at a fixed
//! 2.6 GHz while the cores boost well above it).
#![allow(unsafe_code)]

/// Proof that this CPU runs AVX2. Made only by [`Avx2::detect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx2(());

/// Proof that this CPU runs AVX-512 F, VL, BW and IFMA (`vpmadd52luq`). Made only by
/// [`Avx512::detect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx512(());

impl Avx2 {
    /// The token, if this CPU has AVX2.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Self(()));
        }
        None
    }
}

impl Avx512 {
    /// The token, if this CPU has AVX-512 F, VL, BW and IFMA and the OS saves the registers.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512ifma")
        {
            return Some(Self(()));
        }
        None
    }
}

/// The CPU's time-stamp counter (x86_64); `None` elsewhere.
pub fn tsc_now() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and only reads a counter.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Core clock cycles per TSC tick, measured now: a chain of 80 million dependent one-cycle
/// additions is timed with the TSC. On a loaded or frequency-scaling machine the figure varies
/// from call to call; callers take the median of several. `None` off x86_64.
pub fn core_cycles_per_tsc_tick() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        const ROUNDS: u64 = 10_000_000;
        let t0 = tsc_now()?;
        let mut x: u64 = 0;
        // SAFETY: plain register arithmetic on `x` and a loop counter; no memory is touched.
        // Each `add` depends on the previous one, so the loop takes one core cycle per `add`
        // (the counter's own chain runs beside it).
        unsafe {
            core::arch::asm!(
                "2:",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) ROUNDS => _,
                options(nomem, nostack),
            );
        }
        let ticks = tsc_now()?.wrapping_sub(t0);
        debug_assert_eq!(x, 8 * ROUNDS);
        Some((8 * ROUNDS) as f64 / ticks as f64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}
