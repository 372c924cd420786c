//! Fuzz target `record`: log records (a record, or a payload of several, at a given offset).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_record(data));
