//! libFuzzer harness for `sealpost_fuzz::invitation`; the property checks live there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_fuzz::invitation(data);
});
