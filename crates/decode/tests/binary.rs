//! Binary chunker: round trips, split invariance, golden boundaries, resynchronisation.

mod common;

use std::collections::HashSet;

use common::*;
use expect_test::expect;
use hart_decode::binary::{BOUNDARY_MASK, GEAR, MAX_CHUNK, MIN_CHUNK};
use hart_decode::{BinaryChunker, Decoder};
use proptest::prelude::*;

fn chunk(data: &[u8]) -> Vec<Vec<u8>> {
    run_once(&mut BinaryChunker::new(), data).leaves
}

/// The rule as `binary.rs` documents it, written the obvious way: one gear hash over the whole
/// stream, never reset, no skipping.
fn reference_chunks(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut h, mut start) = (0u64, 0);
    for (i, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        let len = i + 1 - start;
        if (len >= MIN_CHUNK && h & BOUNDARY_MASK == 0) || len == MAX_CHUNK {
            out.push(data[start..=i].to_vec());
            start = i + 1;
        }
    }
    if start < data.len() {
        out.push(data[start..].to_vec());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn chunker_follows_the_documented_rule(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        prop_assert_eq!(chunk(&data), reference_chunks(&data));
    }

    #[test]
    fn random_bytes_round_trip_whatever_the_splits(
        data in prop::collection::vec(any::<u8>(), 0..4000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let once = run_once(&mut BinaryChunker::new(), &data);
        assert_lossless(&once, &data);
        prop_assert!(once.group_ends.is_empty());
        let n = once.leaves.len();
        for (k, l) in once.leaves.iter().enumerate() {
            prop_assert!(l.len() >= MIN_CHUNK || k + 1 == n, "short chunk {k} of {n}");
        }
        let split = run_split(&mut BinaryChunker::new(), &data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
    }

    #[test]
    fn low_entropy_bytes_round_trip_whatever_the_splits(
        data in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xff]), 0..3000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let once = run_once(&mut BinaryChunker::new(), &data);
        assert_lossless(&once, &data);
        let split = run_split(&mut BinaryChunker::new(), &data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
    }
}

#[test]
fn byte_at_a_time_equals_one_shot() {
    let data = splitmix_bytes(7, 5000);
    let once = run_once(&mut BinaryChunker::new(), &data);
    assert_eq!(once.leaves, reference_chunks(&data));
    for size in [1, 2, 3, 31, 32, 33, 63, 64, 65, 4096] {
        assert_eq!(run_blocks(&mut BinaryChunker::new(), &data, size), once, "{size}");
    }
}

#[test]
fn golden_gear_table() {
    let head: Vec<String> = GEAR[..4].iter().map(|g| format!("{g:016x}")).collect();
    let fold = GEAR.iter().fold(0u64, |a, &g| a.rotate_left(5) ^ g);
    expect![[
        r#"["495b52a2b1b93273", "f6a31b56c43caf9a", "393bbcb5d9e7a2a3", "fe2d2819124957a7"] fold=734de9eacc319891"#
    ]]
    .assert_eq(&format!("{head:?} fold={fold:016x}"));
}

#[test]
fn golden_chunk_boundaries() {
    // Format test: changing the gear table, the mask or the chunk limits changes these.
    let data = splitmix_bytes(0x5EED, 2048);
    let lens: Vec<usize> = chunk(&data).iter().map(Vec::len).collect();
    expect!["[34, 48, 36, 32, 46, 36, 34, 64, 36, 50, 49, 44, 51, 63, 64, 41, 46, 41, 64, 64, 45, 38, 48, 45, 64, 37, 50, 57, 40, 37, 33, 32, 64, 44, 61, 64, 61, 35, 32, 47, 55, 64, 38, 14]"].assert_eq(&format!("{lens:?}"));
    let zeros = vec![0u8; 300];
    let lens: Vec<usize> = chunk(&zeros).iter().map(Vec::len).collect();
    expect!["[64, 64, 64, 64, 44]"].assert_eq(&format!("{lens:?}"));
}

#[test]
fn chunk_sizes_on_random_data() {
    let data = splitmix_bytes(1, 4 << 20);
    let chunks = chunk(&data);
    let n = chunks.len() - 1; // the last chunk is cut by the end of the stream
    let mean = (data.len() - chunks.last().unwrap().len()) as f64 / n as f64;
    let forced = chunks[..n].iter().filter(|c| c.len() == MAX_CHUNK).count();
    let mut hist = [0usize; MAX_CHUNK + 1];
    for c in &chunks[..n] {
        hist[c.len()] += 1;
    }
    println!(
        "random data: {} chunks, mean {mean:.2} bytes, {:.1}% forced at {MAX_CHUNK}, {:.1}% at {MIN_CHUNK}",
        n,
        100.0 * forced as f64 / n as f64,
        100.0 * hist[MIN_CHUNK] as f64 / n as f64
    );
    // 32 + 16 * (1 - (15/16)^32) ≈ 45.0 for an ideal hash.
    assert!((44.0..46.0).contains(&mean), "mean chunk {mean}");
    assert!(chunks[..n].iter().all(|c| c.len() >= MIN_CHUNK));
}

/// Chunks of `new` that are not chunks of `old` (compared by content).
fn changed_chunks(old: &[u8], new: &[u8]) -> usize {
    let old: HashSet<Vec<u8>> = chunk(old).into_iter().collect();
    chunk(new).iter().filter(|c| !old.contains(*c)).count()
}

#[test]
fn boundaries_resynchronise_after_an_edit() {
    let data = splitmix_bytes(2, 1 << 20);
    let mut worst = [0usize; 3];
    let mut total = [0usize; 3];
    let edits = 200;
    for k in 0..edits {
        let at = (1 << 19) + k * 977;
        let mut changed = data.clone();
        changed[at] ^= 0x5a;
        let mut inserted = data.clone();
        inserted.insert(at, 0x42);
        let mut deleted = data.clone();
        deleted.remove(at);
        for (e, edited) in [changed, inserted, deleted].iter().enumerate() {
            let c = changed_chunks(&data, edited);
            worst[e] = worst[e].max(c);
            total[e] += c;
        }
    }
    for (e, name) in ["one byte changed", "one byte inserted", "one byte deleted"].iter().enumerate() {
        println!(
            "1 MiB random, {name}: {:.2} new chunks on average, {} at worst ({edits} edits)",
            total[e] as f64 / edits as f64,
            worst[e]
        );
        let mean = total[e] as f64 / edits as f64;
        assert!(mean <= 3.0, "{name}: {mean} chunks changed on average");
        assert!(worst[e] <= 16, "{name}: {} chunks changed", worst[e]);
    }
}

#[test]
fn never_ends_a_group_and_reports_binary() {
    let d = BinaryChunker::new();
    assert_eq!(d.modality(), hart_core::Modality::Binary);
}
