//! Shared by the engine's integration tests.

use sealpost_core::engine::{Backend, Engine};

/// Every backend this machine runs, with a line saying which of the SIMD ones run natively.
pub fn engines() -> Vec<Engine> {
    let b = Backend::supported();
    assert!(b.contains(&Backend::Portable) && b.contains(&Backend::Avx512Emulated));
    let names =
        |v: &mut dyn Iterator<Item = Backend>| v.map(|b| b.name()).collect::<Vec<_>>().join(", ");
    eprintln!(
        "backends under test: {}; SIMD natively on this CPU: [{}]; not on this CPU: [{}] (the \
         AVX-512 algorithms run on their emulation, avx512-emulated, everywhere)",
        names(&mut b.iter().copied()),
        names(&mut b.iter().copied().filter(|b| b.is_simd())),
        names(&mut Backend::ALL.into_iter().filter(|x| !b.contains(x))),
    );
    b.into_iter().map(|b| Engine::new(b).unwrap()).collect()
}
