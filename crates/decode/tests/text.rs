//! Text tokenizer: the token rules against a reference, round trips, split invariance, golden.

mod common;

use common::*;
use expect_test::expect;
use hart_decode::{Collected, Decoder, TextTokenizer, LEAF_MAX};
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
        let once = run_once(&mut TextTokenizer::new(), data);
        assert_lossless(&once, data);
        let (tokens, ends) = reference(&s);
        prop_assert_eq!(as_strings(&once), tokens);
        prop_assert_eq!(&once.group_ends, &ends);
        let split = run_split(&mut TextTokenizer::new(), data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
    }

    /// Without `\r`, pieces of 256 bytes or more take the vector path (64 bytes at a time,
    /// where the CPU has AVX-512BW): the same tokens as the rules, and as small pieces (which
    /// stay on the scalar path), at every kind of boundary.
    #[test]
    fn tokens_without_cr_are_the_same_on_the_vector_path(
        v in prop::collection::vec(text(), 1..6),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let s = v.concat().replace('\r', "\u{c}");
        let data = s.as_bytes();
        let once = run_once(&mut TextTokenizer::new(), data);
        let (tokens, ends) = reference(&s);
        prop_assert_eq!(as_strings(&once), tokens);
        prop_assert_eq!(&once.group_ends, &ends);
        let small: Vec<usize> = (1..data.len()).step_by(200).collect();
        prop_assert_eq!(&run_split(&mut TextTokenizer::new(), data, &small), &once);
        let split = run_split(&mut TextTokenizer::new(), data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
    }

    #[test]
    fn arbitrary_bytes_without_cr_stay_lossless_whatever_the_splits(
        data in prop::collection::vec(prop_oneof![any::<u8>(), 0x80u8..0xc0, Just(b'\n'), Just(b' ')], 0..3000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let data: Vec<u8> = data.into_iter().map(|b| if b == b'\r' { b'\t' } else { b }).collect();
        let once = run_once(&mut TextTokenizer::new(), &data);
        assert_lossless(&once, &data);
        let small: Vec<usize> = (1..data.len()).step_by(200).collect();
        prop_assert_eq!(&run_split(&mut TextTokenizer::new(), &data, &small), &once);
        let split = run_split(&mut TextTokenizer::new(), &data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
    }

    #[test]
    fn arbitrary_bytes_stay_lossless_whatever_the_splits(
        data in prop::collection::vec(prop_oneof![any::<u8>(), 0x80u8..0xc0], 0..2000),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let once = run_once(&mut TextTokenizer::new(), &data);
        assert_lossless(&once, &data);
        let split = run_split(&mut TextTokenizer::new(), &data, &splits_of(data.len(), &idx));
        prop_assert_eq!(once, split);
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
