//! Fuzz target `manifest`: MANIFEST files, placed in a small real store that is then opened and read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hart_embedded::fuzzing::fuzz_manifest(data));
