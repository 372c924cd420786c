//! Fuzz target `store`: tiny store directories laid out from the input, opened (and recovered), read, fsck'd.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_store(data));
