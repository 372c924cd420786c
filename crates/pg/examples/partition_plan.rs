//! Measures how atoms spread over `atoms` partitions and derives the partition plan of
//! migration 0003 (docs/decisions/0010-pg-partition-plan.md).
//!
//! `cargo run --release -p hart-pg --example partition_plan -- MODALITY FILE... [+ HELD-OUT...] [-- MODALITY ...]`
//!
//! For each modality given, every file is decoded and built into a tree exactly as ingest does;
//! the distinct atoms' `h_xy` are collected, and the modality's range is cut into 32 ranges
//! holding equal numbers of atoms (boundaries rounded down to multiples of 2^20, well inside the
//! 2^32-wide cells that the 64 hash bits of a position fill uniformly). It prints the
//! boundaries as SQL rows, then the spread of the sample over (a) uniform ranges and (b) the
//! derived ranges, and, when files follow a `+`, the spread of that held-out sample over the
//! same ranges (the plan is trained on the first files only).

use hart_core::features::leaf_identity;
use hart_core::tree::{Child, NodeOut, TreeBuilder};
use hart_core::{HilbertKey, Modality};
use std::collections::HashSet;

const SUBRANGES: u64 = 32;
const ROUND: u64 = 1 << 20;

fn sample(modality: Modality, files: &[String]) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for path in files {
        let Ok(data) = std::fs::read(path) else {
            eprintln!("skipping unreadable {path}");
            continue;
        };
        let decoded = hart_decode::decode_all(modality, &data);
        let mut tree = TreeBuilder::new(modality);
        let mut nodes = Vec::new();
        for v in &decoded.leaves {
            let (hash, pos) = leaf_identity(modality, v);
            if seen.insert(hash) {
                keys.push(HilbertKey::new(modality, &pos).h_xy);
            }
            tree.push(Child { hash, pos }, &mut |n: &NodeOut<'_>| nodes.push((n.hash, n.pos)));
        }
        tree.finish(&mut |n: &NodeOut<'_>| nodes.push((n.hash, n.pos)));
        for (hash, pos) in nodes {
            if seen.insert(hash) {
                keys.push(HilbertKey::new(modality, &pos).h_xy);
            }
        }
    }
    keys.sort_unstable();
    keys
}

/// 31 inner boundaries cutting `keys` (sorted, one modality) into 32 equal-count ranges.
fn quantiles(modality: u64, keys: &[u64]) -> Vec<u64> {
    let lo = modality << 56;
    let mut out: Vec<u64> = Vec::new();
    for i in 1..SUBRANGES {
        let k = keys[(keys.len() as u64 * i / SUBRANGES) as usize];
        let mut b = (k / ROUND) * ROUND;
        // Keep boundaries strictly increasing and inside the modality's range.
        let prev = out.last().copied().unwrap_or(lo);
        if b <= prev {
            b = prev + ROUND;
        }
        out.push(b);
    }
    out
}

fn spread(label: &str, keys: &[u64], bounds: &[u64]) {
    let mut counts = vec![0usize; bounds.len() + 1];
    for k in keys {
        counts[bounds.partition_point(|b| b <= k)] += 1;
    }
    let used = counts.iter().filter(|&&c| c > 0).count();
    let max = *counts.iter().max().unwrap_or(&0);
    println!(
        "--   {label}: {used}/{} ranges used, largest holds {:.1}% (ideal {:.1}%)",
        counts.len(),
        100.0 * max as f64 / keys.len().max(1) as f64,
        100.0 / counts.len() as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for group in args.split(|a| a == "--") {
        let Some((m, rest)) = group.split_first() else { continue };
        let modality: Modality = m.parse().unwrap_or_else(|e| panic!("{e}"));
        let mut parts = rest.split(|a| a == "+");
        let files = parts.next().unwrap_or(&[]);
        let held_out = parts.next().unwrap_or(&[]);
        let keys = sample(modality, files);
        assert!(keys.len() >= 1000, "{modality}: too small a sample ({} atoms)", keys.len());
        let mb = u64::from(modality.as_u8());
        let bounds = quantiles(mb, &keys);
        println!("-- {modality}: {} distinct atoms from {} files", keys.len(), files.len());
        let uniform: Vec<u64> = (1..SUBRANGES).map(|i| (mb << 56) | (i << 51)).collect();
        spread("uniform 32 ranges", &keys, &uniform);
        spread("equal-count 32 ranges", &keys, &bounds);
        if !held_out.is_empty() {
            let test = sample(modality, held_out);
            println!("-- {modality} held out: {} distinct atoms from {} files", test.len(), held_out.len());
            spread("uniform 32 ranges", &test, &uniform);
            spread("equal-count 32 ranges (trained above)", &test, &bounds);
        }
        let list: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
        println!("({mb}, ARRAY[{}]::bigint[]),", list.join(","));
    }
}
