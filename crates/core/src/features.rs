//! Modality-specific leaf features: the high bits of a leaf's position (DESIGN.md §3).
//!
//! Features depend on the value alone, so every backend derives the same position. Modalities
//! whose decoders do not exist yet use the byte statistics of [`binary`].

use crate::atom::leaf_hash;
use crate::position::Position;
use crate::{Hash, Modality};

/// The position of a leaf, from its value and (already computed) hash.
#[inline]
pub fn leaf_position(modality: Modality, value: &[u8], hash: &Hash) -> Position {
    let f = match modality {
        Modality::Text | Modality::Code => text_token(value),
        _ => binary(value),
    };
    Position::from_features(f, hash)
}

/// Hash and position of a leaf in one call.
pub fn leaf_identity(modality: Modality, value: &[u8]) -> (Hash, Position) {
    let h = leaf_hash(modality, value);
    (h, leaf_position(modality, value, &h))
}

/// Byte statistics of a chunk: x = mean byte and length, y = bit density,
/// z = first two bytes, m = number of distinct byte values.
pub fn binary(v: &[u8]) -> [u16; 4] {
    if v.is_empty() {
        return [0; 4];
    }
    let n = v.len() as u32;
    let mut sum = 0u32;
    let mut ones = 0u32;
    let mut seen = [0u64; 4];
    for &b in v {
        sum += u32::from(b);
        ones += b.count_ones();
        seen[(b >> 6) as usize] |= 1 << (b & 63);
    }
    let distinct: u32 = seen.iter().map(|w| w.count_ones()).sum();
    let mean = sum / n; // 0..=255
    let len_bucket = (n.min(64) * 15) / 64; // 0..=15
    let x = (mean << 4) | len_bucket;
    let y = (ones * 4095) / (n * 8);
    let z = (u32::from(v[0]) << 4) | (u32::from(*v.get(1).unwrap_or(&0)) >> 4);
    let m = (distinct.min(64) * 4095) / 64;
    [x as u16, y as u16, z as u16, m as u16]
}

/// Token classes, as decided by the text tokenizer from the first character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenClass {
    Word = 0,
    Number = 1,
    Space = 2,
    Punct = 3,
}

/// Class of a token from its first character.
pub fn token_class(value: &[u8]) -> TokenClass {
    match value.first() {
        None => TokenClass::Punct,
        Some(b) if b.is_ascii_digit() => TokenClass::Number,
        Some(b) if b.is_ascii_whitespace() => TokenClass::Space,
        Some(b) if b.is_ascii_alphabetic() || *b >= 0x80 => TokenClass::Word,
        Some(_) => TokenClass::Punct,
    }
}

/// Six-bit code of a character, case-folded, so that neighbouring codes are similar
/// characters: 0 none, 1–26 letters, 27–36 digits, 37–39 whitespace, 40–62 punctuation,
/// 63 anything beyond ASCII.
fn char_code(b: Option<&u8>) -> u32 {
    match b {
        None => 0,
        Some(&b) => match b {
            b'a'..=b'z' => 1 + u32::from(b - b'a'),
            b'A'..=b'Z' => 1 + u32::from(b - b'A'),
            b'0'..=b'9' => 27 + u32::from(b - b'0'),
            b' ' => 37,
            b'\t' => 38,
            b'\n' | b'\r' | 0x0b | 0x0c => 39,
            0x80..=0xff => 63,
            other => 40 + u32::from(other) % 23,
        },
    }
}

/// A text token: x = class and the first one and a half characters, y = the rest of the
/// second character, the third, and the length; z = case shape and the fourth character;
/// m = a coarse checksum of the remaining bytes, so long tokens spread out.
pub fn text_token(v: &[u8]) -> [u16; 4] {
    let class = token_class(v) as u32;
    let c0 = char_code(v.first());
    let c1 = char_code(v.get(1));
    let c2 = char_code(v.get(2));
    let c3 = char_code(v.get(3));
    let len = (v.len() as u32).min(15);
    let upper = v.iter().filter(|b| b.is_ascii_uppercase()).count();
    let case = match (upper, v.first().is_some_and(|b| b.is_ascii_uppercase())) {
        (0, _) => 0,
        (1, true) => 1,
        (n, _) if n == v.len() => 2,
        _ => 3,
    };
    let x = (class << 10) | (c0 << 4) | (c1 >> 2);
    let y = ((c1 & 3) << 10) | (c2 << 4) | len;
    let z = (case << 10) | (c3 << 4) | ((v.len() as u32 >> 4).min(15));
    let rest: u32 = v.iter().skip(4).fold(0u32, |a, &b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let m = rest & 0xfff;
    [x as u16, y as u16, z as u16, m as u16]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_tokens_share_leading_features() {
        let a = text_token(b"hello");
        let b = text_token(b"Help");
        assert_eq!(a[0], b[0], "same class and first characters give the same x feature");
        assert_ne!(text_token(b"42")[0] >> 10, a[0] >> 10);
    }

    #[test]
    fn binary_features_fit_twelve_bits() {
        for v in [&b""[..], b"\0", &[0xff; 64], b"abc"] {
            assert!(binary(v).iter().all(|&f| f < 4096), "{v:?}");
        }
        assert!(text_token(&[0xff; 64]).iter().all(|&f| f < 4096));
    }
}
