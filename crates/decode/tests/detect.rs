//! UTF-8 validation and the text-or-binary choice, on real files written to a temporary dir.

mod common;

use common::splits_of;
use hart_core::Modality;
use hart_decode::detect::{NUL_SNIFF_LEN, READ_BLOCK};
use hart_decode::{choose_modality, decoder_for, Utf8Validator};
use proptest::prelude::*;

fn validate(data: &[u8], splits: &[usize]) -> (bool, Option<u64>) {
    let mut v = Utf8Validator::new();
    let mut last = 0;
    for &s in splits {
        v.feed(&data[last..s]);
        last = s;
    }
    v.feed(&data[last..]);
    (v.finish(), v.error_offset())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn validator_agrees_with_std_whatever_the_splits(
        s in "\\PC{0,40}",
        noise in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..2),
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut data = s.into_bytes();
        for (at, b) in noise {
            if !data.is_empty() {
                let k = at.index(data.len());
                data[k] = b;
            }
        }
        let expected = match std::str::from_utf8(&data) {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.valid_up_to() as u64)),
        };
        prop_assert_eq!(validate(&data, &splits_of(data.len(), &idx)), expected);
    }
}

fn modality_of(bytes: &[u8]) -> Modality {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    choose_modality(&path).unwrap()
}

#[test]
fn text_or_binary() {
    assert_eq!(modality_of(b""), Modality::Binary, "empty");
    assert_eq!(modality_of(b"hello\n"), Modality::Text);
    assert_eq!(modality_of("héllo 中文\r\n".as_bytes()), Modality::Text);
    assert_eq!(modality_of(b"a\0b"), Modality::Binary, "NUL near the start");
    assert_eq!(modality_of(b"ab\xff"), Modality::Binary, "invalid UTF-8");
    assert_eq!(modality_of(b"ab\xe4\xb8"), Modality::Binary, "truncated character");

    // A NUL after the sniffed prefix is allowed in text.
    let mut late_nul = vec![b'x'; NUL_SNIFF_LEN];
    late_nul.push(0);
    assert_eq!(modality_of(&late_nul), Modality::Text);
    late_nul[NUL_SNIFF_LEN - 1] = 0;
    assert_eq!(modality_of(&late_nul), Modality::Binary);

    // A multi-byte character across the read block boundary, then one invalid byte at the end.
    let mut big = "中".repeat(READ_BLOCK / 3 + 10).into_bytes();
    assert_eq!(modality_of(&big), Modality::Text);
    big.push(0xc0);
    assert_eq!(modality_of(&big), Modality::Binary);
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = choose_modality(&dir.path().join("absent")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn decoder_for_each_modality() {
    for m in Modality::ALL {
        let expected = if m == Modality::Text { Modality::Text } else { Modality::Binary };
        assert_eq!(decoder_for(m).modality(), expected, "{m}");
    }
}
