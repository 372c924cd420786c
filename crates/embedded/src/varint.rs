//! LEB128 unsigned varints, the integer encoding of log records.

/// Longest encoding of a u64.
pub const MAX_LEN: usize = 10;

/// Encode `v` at the start of `out` (at least [`MAX_LEN`] bytes); returns the bytes used.
/// Bytes of `out` past them may be overwritten.
#[inline(always)]
pub fn write(out: &mut [u8], v: u64) -> usize {
    if v < 1 << 56 {
        // Up to eight bytes at once: spread the 7-bit groups a byte apart, set the
        // continuation bit of every byte but the last, store one word.
        let n = len(v);
        let mut x = 0u64;
        for g in 0..8 {
            x |= (v & (0x7f << (7 * g))) << g;
        }
        x |= CONTINUATION[n];
        out[..8].copy_from_slice(&x.to_le_bytes());
        return n;
    }
    write_slow(out, v)
}

/// Encode `own - c` for every `c` of `children`, one after another, at the start of `out` (at
/// least [`MAX_LEN`] bytes per value); returns the bytes used. Bytes of `out` past them may
/// be overwritten. A composite's children are written this way, ~30 per line of text.
#[inline]
pub fn write_deltas(out: &mut [u8], own: u64, children: &[u64]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("bmi2") && std::is_x86_feature_detected!("lzcnt") {
        // SAFETY: the CPU has BMI2 and LZCNT, checked just above.
        return unsafe { write_deltas_bmi2(out, own, children) };
    }
    let mut p = 0;
    for &c in children {
        p += write(&mut out[p..], own - c);
    }
    p
}

/// [`write_deltas`] with one `pdep` spreading a value's 7-bit groups a byte apart (instead of
/// eight shifts and masks per value).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2,lzcnt")]
unsafe fn write_deltas_bmi2(out: &mut [u8], own: u64, children: &[u64]) -> usize {
    use std::arch::x86_64::_pdep_u64;
    let mut p = 0;
    for &c in children {
        let v = own - c;
        if v < 1 << 56 {
            let n = len(v);
            let x = _pdep_u64(v, 0x7f7f_7f7f_7f7f_7f7f) | CONTINUATION[n];
            out[p..p + 8].copy_from_slice(&x.to_le_bytes());
            p += n;
        } else {
            p += write_slow(&mut out[p..], v);
        }
    }
    p
}

/// Bytes in the encoding of `v`.
#[inline(always)]
pub fn len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The continuation bits of an encoding of `n` bytes (1..=8).
const CONTINUATION: [u64; 9] = {
    let mut t = [0u64; 9];
    let mut n = 2;
    while n <= 8 {
        t[n] = 0x8080_8080_8080_8080 >> (8 * (9 - n));
        n += 1;
    }
    t
};

fn write_slow(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

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
            let mut w = [0xaau8; super::MAX_LEN];
            let n = super::write(&mut w, v);
            prop_assert_eq!(&w[..n], &b[..]);
            prop_assert_eq!(super::len(v), b.len());
            let small = v >> (v % 64);
            // Several at once, as a composite's children are written (deltas from `own`).
            let kids = [0, v / 3, v / 2, v - small.min(v), v];
            let own = v;
            let mut want = Vec::new();
            for &k in &kids {
                super::put(&mut want, own - k);
            }
            let mut got = vec![0x55u8; kids.len() * super::MAX_LEN];
            let n = super::write_deltas(&mut got, own, &kids);
            prop_assert_eq!(&got[..n], &want[..]);
            // Small values too (the fast path), whatever the bytes around them.
            let mut b = Vec::new();
            super::put(&mut b, small);
            let n = super::write(&mut w, small);
            prop_assert_eq!(&w[..n], &b[..]);
        }
    }
}
