//! Fuzz target `state`: state checkpoints (as given, and with their CRC fixed).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_state(data));
