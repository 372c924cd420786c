//! Every kernel against `blake3::hash`, and proof that each kernel this CPU runs did run.

use super::*;
use proptest::prelude::*;
use std::cell::Cell;

thread_local! {
    /// Calls into each kernel's own code on this thread (tests run on threads of their own,
    /// so a test's counts are its own).
    static RAN: Cell<[usize; 4]> = const { Cell::new([0; 4]) };
}

/// Called by each kernel's entry point (in test builds only).
pub(super) fn ran(k: Kernel) {
    RAN.with(|r| {
        let mut a = r.get();
        a[k as usize] += 1;
        r.set(a);
    });
}

fn runs(k: Kernel) -> usize {
    RAN.with(|r| r.get()[k as usize])
}

fn messages(msgs: &[Vec<u8>]) -> Messages {
    let mut m = Messages::new();
    for v in msgs {
        m.extend(v);
        m.end();
    }
    m
}

fn expect(msgs: &[Vec<u8>], out: &[Hash], what: &str) {
    assert_eq!(out.len(), msgs.len(), "{what}");
    for (i, (v, h)) in msgs.iter().zip(out).enumerate() {
        assert_eq!(*h, Hash(*blake3::hash(v).as_bytes()), "{what}: message {i} of length {}", v.len());
    }
}

/// Every available kernel, and `hash_all`, against `blake3::hash`.
fn check(msgs: &[Vec<u8>]) {
    let m = messages(msgs);
    for k in Kernel::available() {
        let mut out = Vec::new();
        m.hash_all_with(k, &mut out);
        expect(msgs, &out, k.name());
    }
    let mut out = Vec::new();
    m.hash_all(&mut out);
    expect(msgs, &out, "hash_all");
}

fn filled(lens: &[usize], seed: u8) -> Vec<Vec<u8>> {
    lens.iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ k as u8)).collect())
        .collect()
}

const BOUNDARIES: [usize; 22] =
    [0, 1, 2, 34, 63, 64, 65, 66, 127, 128, 962, 1023, 1024, 1025, 2048, 2050, 3072, 3073, 4097, 5000, 9000, 17409];

#[test]
fn boundary_lengths_match_blake3() {
    check(&filled(&BOUNDARIES, 7));
    // Each length alone, and many of it (every lane, and lanes taking the next message).
    for &n in &BOUNDARIES {
        check(&filled(&[n], 1));
        check(&filled(&[n; 37], 2));
    }
    check(&[]);
    check(&[b"abc".to_vec()]);
    check(&[Vec::new(), Vec::new()]);
}

#[test]
fn an_empty_message_between_others() {
    let mut m = Messages::new();
    m.extend(b"x");
    m.end();
    m.end();
    m.extend(b"yz");
    m.extend(b"w");
    m.end();
    for k in Kernel::available() {
        let mut out = Vec::new();
        m.hash_all_with(k, &mut out);
        assert_eq!(out[1], Hash(*blake3::hash(b"").as_bytes()), "{}", k.name());
        assert_eq!(out[2], Hash(*blake3::hash(b"yzw").as_bytes()), "{}", k.name());
    }
    assert_eq!(m.get(2), b"yzw");
}

/// Calls are cut into batches of about `BATCH_JOBS` chunks: counts around it, and long
/// messages whose chunks carry a batch past it.
#[test]
fn batches_split_anywhere() {
    for n in [BATCH_JOBS - 1, BATCH_JOBS, BATCH_JOBS + 1, 2 * BATCH_JOBS + 3] {
        check(&filled(&vec![66; n], 4));
    }
    let mut lens = vec![34; BATCH_JOBS - 3];
    lens.extend([20_000, 66, 2048, 1]);
    lens.extend(vec![65; BATCH_JOBS - 2]);
    lens.extend([1025, 3000, 0]);
    check(&filled(&lens, 5));
}

/// Not vacuous: each kernel this CPU runs is run here (its own code, counted from inside it)
/// and gives `blake3::hash`; the kernels the CPU lacks are named. The x86 kernels are checked
/// against the CPU's features directly, so a wrong `is_available` cannot skip one silently.
#[test]
fn every_kernel_this_cpu_runs_ran_and_matched() {
    let msgs = filled(&[66, 66, 66, 0, 5000, 1024, 1025, 66, 2048, 63, 64, 65, 66, 66, 66, 66, 66, 1], 3);
    let m = messages(&msgs);
    let mut ran = Vec::new();
    for k in Kernel::available() {
        let before = runs(k);
        let mut out = Vec::new();
        m.hash_all_with(k, &mut out);
        expect(&msgs, &out, k.name());
        assert!(runs(k) > before, "kernel {} was asked for but its code did not run", k.name());
        ran.push(k.name());
    }
    let missing: Vec<_> = Kernel::ALL.iter().filter(|k| !k.is_available()).map(|k| k.name()).collect();
    eprintln!("many: kernels run and matched blake3::hash: {ran:?}; not on this CPU (untested here): {missing:?}");
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(Kernel::Avx512.is_available(), std::arch::is_x86_feature_detected!("avx512f"));
        assert_eq!(Kernel::Avx2.is_available(), std::arch::is_x86_feature_detected!("avx2"));
    }
    assert!(ran.contains(&"portable"));
    #[cfg(target_arch = "x86_64")]
    assert!(ran.contains(&"sse2"), "SSE2 is part of x86_64: its kernel must always run");
    assert_eq!(Kernel::selected(), Kernel::available()[0]);
    assert_eq!(kernel_name(), Kernel::selected().name());
}

/// `hash_all` runs the selected kernel's code for many messages, `blake3::hash` for fewer
/// than four, and eight lanes rather than sixteen for up to eight.
#[test]
fn hash_all_runs_the_kernel_for_the_count() {
    for (n, want) in
        [(40, Kernel::selected()), (3, Kernel::Portable), (1, Kernel::Portable), (4, Messages::kernel_for(4))]
    {
        let msgs = filled(&vec![66; n], 9);
        let before = runs(want);
        let mut out = Vec::new();
        messages(&msgs).hash_all(&mut out);
        expect(&msgs, &out, "hash_all");
        assert!(runs(want) > before, "hash_all of {n} messages did not run {}", want.name());
    }
    if Kernel::selected() == Kernel::Avx512 {
        assert_eq!(Messages::kernel_for(8), Kernel::Avx2);
        assert_eq!(Messages::kernel_for(9), Kernel::Avx512);
    }
}

proptest! {
    #[test]
    fn random_messages_match_blake3(lens in proptest::collection::vec(0usize..2200, 0..80), seed in any::<u8>()) {
        check(&filled(&lens, seed));
    }

    /// Mostly leaf-sized messages (the verified read's load) with a few long ones among them.
    #[test]
    fn leaves_with_long_messages_among_them(
        lens in proptest::collection::vec(prop_oneof![8 => 0usize..=66, 1 => 0usize..6000], 0..120),
        seed in any::<u8>(),
    ) {
        check(&filled(&lens, seed));
    }
}
