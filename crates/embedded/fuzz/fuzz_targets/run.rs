//! Fuzz target `run`: index run files: open, verify, stream, lookups.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_run(data));
