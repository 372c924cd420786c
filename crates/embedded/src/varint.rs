//! LEB128 unsigned varints, the integer encoding of log records.

#[inline]
pub fn put(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Decode a varint at the start of `b`: the value and the bytes used, or None if truncated
/// or longer than ten bytes.
#[inline]
pub fn get(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    proptest! {
        #[test]
        fn round_trip(v: u64) {
            let mut b = Vec::new();
            super::put(&mut b, v);
            prop_assert_eq!(super::get(&b), Some((v, b.len())));
        }
    }
}
