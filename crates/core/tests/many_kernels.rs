//! `hart_core::many` through its public API: every kernel this CPU runs gives `blake3::hash`,
//! and the list of kernels matches what the CPU reports (so none is skipped unnoticed).

use hart_core::many::{kernel_name, Kernel, Messages};
use hart_core::Hash;
use proptest::prelude::*;

fn check_every_kernel(msgs: &[Vec<u8>]) {
    let mut m = Messages::new();
    for v in msgs {
        m.extend(v);
        m.end();
    }
    for k in Kernel::available() {
        let mut out = vec![Hash::default()]; // hashes are appended after what is there
        m.hash_all_with(k, &mut out);
        assert_eq!(out.len(), msgs.len() + 1, "{}", k.name());
        for (i, (v, h)) in msgs.iter().zip(&out[1..]).enumerate() {
            assert_eq!(*h, Hash(*blake3::hash(v).as_bytes()), "{}: message {i} of length {}", k.name(), v.len());
        }
    }
}

#[test]
fn kernels_listed_are_the_ones_the_cpu_runs() {
    let available = Kernel::available();
    let names: Vec<_> = available.iter().map(|k| k.name()).collect();
    let absent: Vec<_> = Kernel::ALL.iter().filter(|k| !available.contains(k)).map(|k| k.name()).collect();
    eprintln!("many: hash_all uses {}; kernels tested here: {names:?}; absent on this CPU: {absent:?}", kernel_name());
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(available.contains(&Kernel::Avx512), std::arch::is_x86_feature_detected!("avx512f"));
        assert_eq!(available.contains(&Kernel::Avx2), std::arch::is_x86_feature_detected!("avx2"));
        assert!(available.contains(&Kernel::Sse2));
    }
    assert!(available.contains(&Kernel::Portable));
    assert_eq!(kernel_name(), available[0].name());
}

#[test]
fn leaf_and_boundary_lengths() {
    let lens = [0usize, 1, 63, 64, 65, 66, 1023, 1024, 1025, 2047, 2048, 2049, 5000];
    let fill = |n: usize, k: usize| -> Vec<u8> { (0..n).map(|i| (i * 13 + k * 101) as u8).collect() };
    // Each length alone, twenty of it, and all of them mixed.
    for &n in &lens {
        check_every_kernel(&[fill(n, 0)]);
        check_every_kernel(&(0..20).map(|k| fill(n, k)).collect::<Vec<_>>());
    }
    check_every_kernel(&lens.iter().enumerate().map(|(k, &n)| fill(n, k)).collect::<Vec<_>>());
    check_every_kernel(&[]);
}

proptest! {
    #[test]
    fn random_counts_and_lengths(
        lens in proptest::collection::vec(prop_oneof![6 => 0usize..=66, 2 => 0usize..=1100, 1 => 0usize..6000], 0..100),
        seed in any::<u64>(),
    ) {
        let msgs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (seed.rotate_left((i + k) as u32 % 64) as u8) ^ i as u8).collect())
            .collect();
        check_every_kernel(&msgs);
    }
}
