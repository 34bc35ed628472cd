//! libFuzzer harness for `sealpost_fuzz::deposit_stream`; the invariants are checked by the relay's
//! simulated harness (relay/src/server/proto/sim).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_fuzz::deposit_stream(data);
});
