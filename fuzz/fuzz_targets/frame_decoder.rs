//! libFuzzer harness for `sealpost_fuzz::frame_decoder`; the property checks live there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_fuzz::frame_decoder(data);
});
