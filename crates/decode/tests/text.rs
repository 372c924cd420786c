//! Text tokenizer: the token rules against a reference, round trips, split invariance, golden.

mod common;

use common::*;
use expect_test::expect;
use hart_decode::{Collected, Decoder, Kernel, TextTokenizer, LEAF_MAX};
use proptest::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Number,
    Space,
    Punct(char),
}

/// The token rules of `text.rs`, written the obvious way over `char`s: (tokens, group ends).
fn reference(s: &str) -> (Vec<String>, Vec<usize>) {
    let chars: Vec<char> = s.chars().collect();
    let class = |k: usize| {
        let c = chars[k];
        if c.is_ascii_alphabetic() || !c.is_ascii() {
            Class::Word
        } else if c.is_ascii_digit() {
            Class::Number
        } else if matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}') || (c == '\r' && chars.get(k + 1) != Some(&'\n')) {
            Class::Space
        } else {
            Class::Punct(c)
        }
    };
    let (mut tokens, mut ends) = (Vec::<String>::new(), Vec::new());
    let mut k = 0;
    while k < chars.len() {
        if chars[k] == '\n' || (chars[k] == '\r' && chars.get(k + 1) == Some(&'\n')) {
            let w = if chars[k] == '\n' { 1 } else { 2 };
            tokens.push(chars[k..k + w].iter().collect());
            ends.push(tokens.len());
            k += w;
            continue;
        }
        let c = class(k);
        let mut piece = String::new();
        while k < chars.len() && chars[k] != '\n' && class(k) == c {
            if piece.len() + chars[k].len_utf8() > LEAF_MAX {
                tokens.push(std::mem::take(&mut piece));
            }
            piece.push(chars[k]);
            k += 1;
        }
        tokens.push(piece);
    }
    if ends.last() != Some(&tokens.len()) && !tokens.is_empty() {
        ends.push(tokens.len());
    }
    (tokens, ends)
}

/// Every kernel this CPU can run, the scalar one first; which ones is printed once per run,
/// so a log shows whether the vector kernel was tested on this machine.
fn kernels() -> Vec<Kernel> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let ks: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
    SAID.call_once(|| {
        let missing: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| !k.available()).collect();
        eprintln!("text tokenizer kernels tested on this CPU: {ks:?}; not available here: {missing:?}");
    });
    ks
}

fn tokenizer(k: Kernel) -> TextTokenizer {
    TextTokenizer::with_kernel(k).expect("kernels() lists only kernels this CPU has")
}

fn scalar() -> TextTokenizer {
    tokenizer(Kernel::Scalar)
}

fn as_strings(out: &Collected) -> Vec<String> {
    out.leaves.iter().map(|l| String::from_utf8(l.clone()).expect("a token split a character")).collect()
}

/// Text made of pieces that stress the rules: every class, multi-byte characters, CR/LF mixes
/// and runs long enough to be cut.
fn text() -> impl Strategy<Value = String> {
    let alphabet = vec![
        "a", "Z", "é", "中", "😀", "\u{a0}", "0", "7", " ", "\t", "\u{b}", "\u{c}", "\r", "\n", "\r\n", ".", ",", "_",
        "-", "\0", "\u{7f}",
    ];
    let piece = prop_oneof![
        4 => prop::sample::select(alphabet.clone()).prop_map(str::to_string),
        1 => (prop::sample::select(alphabet), 1usize..140).prop_map(|(s, n)| s.repeat(n)),
        1 => any::<char>().prop_map(|c| c.to_string()),
        1 => "[a-zA-Zé中]{1,100}",
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tokens_follow_the_rules_whatever_the_splits(
        s in text(),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let data = s.as_bytes();
        let once = run_once(&mut scalar(), data);
        assert_lossless(&once, data);
        let (tokens, ends) = reference(&s);
        prop_assert_eq!(as_strings(&once), tokens);
        prop_assert_eq!(&once.group_ends, &ends);
        let splits = splits_of(data.len(), &idx);
        for k in kernels() {
            prop_assert_eq!(&run_once(&mut tokenizer(k), data), &once, "{:?} whole", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), data, &splits), &once, "{:?} split", k);
        }
    }

    /// Without `\r`, pieces of 256 bytes or more take the vector path (64 bytes at a time)
    /// on every vector kernel the CPU has: each kernel gives the scalar kernel's tokens (and
    /// the rules'), whole, in small pieces (which stay on the scalar path) and at every kind
    /// of boundary.
    #[test]
    fn tokens_without_cr_are_the_same_on_the_vector_path(
        v in prop::collection::vec(text(), 1..6),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let s = v.concat().replace('\r', "\u{c}");
        let data = s.as_bytes();
        let want = run_once(&mut scalar(), data);
        let (tokens, ends) = reference(&s);
        prop_assert_eq!(as_strings(&want), tokens);
        prop_assert_eq!(&want.group_ends, &ends);
        let small: Vec<usize> = (1..data.len()).step_by(200).collect();
        let splits = splits_of(data.len(), &idx);
        for k in kernels() {
            prop_assert_eq!(&run_once(&mut tokenizer(k), data), &want, "{:?} whole", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), data, &small), &want, "{:?} in small pieces", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), data, &splits), &want, "{:?} split", k);
        }
    }

    #[test]
    fn arbitrary_bytes_without_cr_stay_lossless_whatever_the_splits(
        data in prop::collection::vec(prop_oneof![any::<u8>(), 0x80u8..0xc0, Just(b'\n'), Just(b' ')], 0..3000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let data: Vec<u8> = data.into_iter().map(|b| if b == b'\r' { b'\t' } else { b }).collect();
        let want = run_once(&mut scalar(), &data);
        assert_lossless(&want, &data);
        let small: Vec<usize> = (1..data.len()).step_by(200).collect();
        let splits = splits_of(data.len(), &idx);
        for k in kernels() {
            prop_assert_eq!(&run_once(&mut tokenizer(k), &data), &want, "{:?} whole", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), &data, &small), &want, "{:?} in small pieces", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), &data, &splits), &want, "{:?} split", k);
        }
    }

    #[test]
    fn arbitrary_bytes_stay_lossless_whatever_the_splits(
        data in prop::collection::vec(prop_oneof![any::<u8>(), 0x80u8..0xc0], 0..2000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let once = run_once(&mut scalar(), &data);
        assert_lossless(&once, &data);
        let splits = splits_of(data.len(), &idx);
        for k in kernels() {
            prop_assert_eq!(&run_once(&mut tokenizer(k), &data), &once, "{:?} whole", k);
            prop_assert_eq!(&run_split(&mut tokenizer(k), &data, &splits), &once, "{:?} split", k);
        }
    }
}

#[test]
fn every_single_split_of_a_tricky_line() {
    let s = format!(
        "{}\r\r\n{}\r {}x{}\r\n\n{}",
        " ".repeat(64),
        "é".repeat(40),
        "中".repeat(30),
        "9".repeat(70),
        "=".repeat(65)
    );
    let data = s.as_bytes();
    let once = run_once(&mut TextTokenizer::new(), data);
    let (tokens, ends) = reference(&s);
    assert_eq!(as_strings(&once), tokens);
    assert_eq!(once.group_ends, ends);
    for i in 0..=data.len() {
        assert_eq!(run_split(&mut TextTokenizer::new(), data, &[i]), once, "split at {i}");
    }
    for size in [1, 2, 3, 5, 64, 65] {
        assert_eq!(run_blocks(&mut TextTokenizer::new(), data, size), once, "{size}");
    }
}

#[test]
fn lines_and_groups() {
    let run = |s: &str| run_once(&mut TextTokenizer::new(), s.as_bytes()).group_ends;
    assert_eq!(run(""), Vec::<usize>::new());
    assert_eq!(run("a"), [1]);
    assert_eq!(run("a\n"), [2]);
    assert_eq!(run("a\nb"), [2, 3]);
    assert_eq!(run("\n\n"), [1, 2]);
    assert_eq!(run("a\r\n\r"), [2, 3]);
    let t = TextTokenizer::new();
    assert_eq!(t.modality(), hart_core::Modality::Text);
}

#[test]
fn golden_tokens() {
    // Format test: changing a token rule changes this.
    let s = "Hello, wörld! x_y=3.14;\tnaïve 中文 — ok...\r\n  \r\n\"quoted\" 2024-01-01\n";
    let out = run_once(&mut TextTokenizer::new(), s.as_bytes());
    let mut shown = String::new();
    let mut ends = out.group_ends.iter().peekable();
    for (k, t) in as_strings(&out).iter().enumerate() {
        shown.push_str(&format!("{t:?} "));
        if ends.peek() == Some(&&(k + 1)) {
            ends.next();
            shown.push_str("|\n");
        }
    }
    expect![[r#"
        "Hello" "," " " "wörld" "!" " " "x" "_" "y" "=" "3" "." "14" ";" "\t" "naïve" " " "中文" " " "—" " " "ok" "..." "\r\n" |
        "  " "\r\n" |
        "\"" "quoted" "\"" " " "2024" "-" "01" "-" "01" "\n" |
    "#]].assert_eq(&shown);
}

/// The vector kernel is tested, not skipped, wherever the CPU has it: on such a CPU it is
/// available, `new()` picks it, and it really finds the boundaries of a long text (counted in
/// `vector_bytes`) — giving the scalar kernel's tokens. Where the CPU lacks it, the test says
/// so and checks that it is never chosen. (Issue 12: on a CPU without AVX-512 the vector tests
/// compared the scalar path with itself and passed, saying nothing.)
#[test]
fn every_kernel_the_cpu_has_runs_and_matches_the_scalar_kernel() {
    let ks = kernels();
    let s = rand_words(0xa5, 200_000);
    let data = s.as_bytes();
    let mut plain = scalar();
    let want = run_once(&mut plain, data);
    assert_eq!(plain.vector_bytes(), 0, "the scalar kernel ran a vector path");
    assert_eq!(as_strings(&want), reference(&s).0);
    #[cfg(target_arch = "x86_64")]
    let cpu_has_avx512 = std::arch::is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    let cpu_has_avx512 = false;
    assert_eq!(ks.contains(&Kernel::Avx512), cpu_has_avx512, "AVX-512BW detected: {cpu_has_avx512}, kernels: {ks:?}");
    assert_eq!(TextTokenizer::with_kernel(Kernel::Avx512).is_some(), cpu_has_avx512);
    assert_eq!(TextTokenizer::new().kernel(), if cpu_has_avx512 { Kernel::Avx512 } else { Kernel::Scalar });
    for k in ks {
        let mut t = tokenizer(k);
        let got = run_once(&mut t, data);
        assert_eq!(got, want, "{k:?} differs from the scalar kernel");
        let share = t.vector_bytes() as f64 / data.len() as f64;
        eprintln!(
            "kernel {k:?}: {} of {} bytes through a vector path ({:.0} %), tokens equal",
            t.vector_bytes(),
            data.len(),
            share * 100.0
        );
        if k != Kernel::Scalar {
            assert!(share > 0.9, "{k:?} ran its vector path on only {:.1} % of the bytes", share * 100.0);
        }
    }
    if !cpu_has_avx512 {
        eprintln!("kernel Avx512: NOT TESTED on this machine (the CPU has no AVX-512BW)");
    }
}

/// Text without `\r` made of words, numbers, spaces and punctuation, in lines.
fn rand_words(seed: u64, len: usize) -> String {
    let words = ["store", "atom", "Merkle", "中文", "naïve", "42", "3.14", "...", "--", "_", "(x)", "\t", "  "];
    let mut x = seed | 1;
    let mut s = String::new();
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(words[(x % words.len() as u64) as usize]);
        s.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
    }
    s
}
