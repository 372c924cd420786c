//! Fuzz target `frames`: log segments: frame scanning and the records of good frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_frames(data));
