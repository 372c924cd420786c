//! Helpers shared by the decoder tests: feeding with split points, deterministic data.

#![allow(dead_code)]

use hart_decode::{Collected, Decoder, LEAF_MAX};

/// Feed `data` to `decoder` in pieces cut at `splits` (sorted, each ≤ `data.len()`).
pub fn run_split(decoder: &mut dyn Decoder, data: &[u8], splits: &[usize]) -> Collected {
    let mut out = Collected::default();
    let mut last = 0;
    for &s in splits {
        decoder.feed(&data[last..s], &mut out);
        last = s;
    }
    decoder.feed(&data[last..], &mut out);
    decoder.finish(&mut out);
    out
}

/// Feed `data` in one piece.
pub fn run_once(decoder: &mut dyn Decoder, data: &[u8]) -> Collected {
    run_split(decoder, data, &[])
}

/// Feed `data` in pieces of `size` bytes.
pub fn run_blocks(decoder: &mut dyn Decoder, data: &[u8], size: usize) -> Collected {
    let splits: Vec<usize> = (1..).map(|k| k * size).take_while(|&s| s < data.len()).collect();
    run_split(decoder, data, &splits)
}

/// Lossless and every leaf 1..=64 bytes.
pub fn assert_lossless(out: &Collected, data: &[u8]) {
    for (i, l) in out.leaves.iter().enumerate() {
        assert!((1..=LEAF_MAX).contains(&l.len()), "leaf {i} has {} bytes", l.len());
    }
    assert!(out.concat() == data, "leaves do not concatenate to the input");
}

/// Deterministic pseudo-random bytes: splitmix64 outputs from `seed`, little-endian.
pub fn splitmix_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Turn proptest indices into sorted split points within `0..=len`.
pub fn splits_of(len: usize, idx: &[proptest::sample::Index]) -> Vec<usize> {
    let mut s: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
    s.sort_unstable();
    s
}
