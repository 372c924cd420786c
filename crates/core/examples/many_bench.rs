//! Throughput of `hart_core::many` per kernel beside `blake3::hash` one message at a time:
//! `cargo run --release -p hart-core --example many_bench [-- SECONDS_PER_CASE [KERNEL [LEN]]]`
//! (a kernel's name, or a message length (0 for the mixed case), to run only that, e.g. under
//! a profiler; `all` for every kernel).
//!
//! Cases: 66-byte messages (a leaf's encoding `TAG_LEAF ‖ modality ‖ 64-byte value`, what a
//! verified read re-hashes for every leaf), 34..=66 bytes at random (binary leaves of 32..=64
//! bytes: one block or two, in no order) and 994-byte ones (a composite of 31 children, one
//! chunk), about 1 MiB of each. Each figure is the best of many rounds, so that other work on
//! the machine shows less; MB/s counts message bytes.

use hart_core::many::{kernel_name, Kernel, Messages};
use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::args().nth(1).map_or(0.5, |s| s.parse().expect("seconds per case"));
    let only = std::env::args().nth(2).filter(|k| k != "all");
    let only_len: Option<usize> = std::env::args().nth(3).map(|s| s.parse().expect("message length"));
    println!("selected kernel: {}; available: {:?}", kernel_name(), Kernel::available());
    // (length, count); length 0 stands for 34..=66 bytes at random.
    for &(len, count) in &[(66usize, 8_192usize), (0, 8_192), (994, 1_024)] {
        if only_len.is_some_and(|n| n != len) {
            continue;
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let msgs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let n = if len == 0 { 34 + (seed >> 33) as usize % 33 } else { len };
                (0..n).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect()
            })
            .collect();
        let mut m = Messages::new();
        for v in &msgs {
            m.extend(v);
            m.end();
        }
        let bytes = msgs.iter().map(Vec::len).sum::<usize>() as f64;
        let kernels: Vec<Kernel> =
            Kernel::available().into_iter().filter(|k| only.as_ref().is_none_or(|o| o == k.name())).collect();
        // Rounds run every candidate once in turn, so that all of them see the machine in the
        // same states; each keeps its best time.
        let mut times = vec![Duration::MAX; 1 + kernels.len()];
        let mut out = Vec::with_capacity(count);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end || times[0] == Duration::MAX {
            let t = Instant::now();
            let mut x = 0u8;
            for v in &msgs {
                x ^= blake3::hash(v).as_bytes()[0];
            }
            std::hint::black_box(x);
            times[0] = times[0].min(t.elapsed());
            for (k, best) in kernels.iter().zip(&mut times[1..]) {
                let t = Instant::now();
                out.clear();
                m.hash_all_with(*k, &mut out);
                std::hint::black_box(&out);
                *best = (*best).min(t.elapsed());
            }
        }
        let what = if len == 0 { "34..=66".to_string() } else { len.to_string() };
        println!("{what}-byte messages, {count} at a time:");
        report("blake3::hash", count, bytes, times[0], times[0]);
        for (k, &t) in kernels.iter().zip(&times[1..]) {
            report(k.name(), count, bytes, t, times[0]);
        }
    }
}

fn report(name: &str, count: usize, bytes: f64, t: Duration, base: Duration) {
    let s = t.as_secs_f64();
    println!(
        "  {name:<13} {:>7.2} M hashes/s {:>7.0} MB/s  x{:.2}",
        count as f64 / s / 1e6,
        bytes / s / 1e6,
        base.as_secs_f64() / s
    );
}
