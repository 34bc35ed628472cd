//! Property tests: random event sequences through the simulated pairs, which check the
//! invariants on every step (see [`super::fuzz_subscription`], [`super::fuzz_deposit`]).

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn subscription_invariants_hold(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        super::fuzz_subscription(&data);
    }

    #[test]
    fn deposit_invariants_hold(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        super::fuzz_deposit(&data);
    }
}

/// Many more sequences than proptest's cases, from a fixed seed, for little time: the
/// drivers take a few microseconds each.
#[test]
fn seeded_event_sequences_keep_the_invariants() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(0x5ea1_9057);
    let mut data = Vec::new();
    for _ in 0..5_000 {
        let n = rng.random_range(0..400);
        data.clear();
        data.extend((0..n).map(|_| rng.random::<u8>()));
        super::fuzz_subscription(&data);
        super::fuzz_deposit(&data);
    }
}
