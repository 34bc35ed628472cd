//! Randomness from the operating system, for keys and identifiers (not per-message nonces,
//! which callers draw from a seeded user-space CSPRNG).

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `out` from the operating system's CSPRNG.
pub fn fill(out: &mut [u8]) -> Result<(), crate::CryptoError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| crate::CryptoError::Rng)
}

/// `N` random bytes from the operating system's CSPRNG.
pub fn array<const N: usize>() -> Result<[u8; N], crate::CryptoError> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
