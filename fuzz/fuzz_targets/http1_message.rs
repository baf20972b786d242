#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbtape::fuzzing::http1_message(data));
