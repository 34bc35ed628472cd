//! libFuzzer harness for `sealpost_fuzz::mailbox_file`; the property checks live there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_fuzz::mailbox_file(data);
});
