//! 2-D Hilbert curve over 28-bit coordinates (56-bit indices), with its exact inverse.
//! (Being written; see the helper's brief.)

/// Bits per coordinate handled by [`encode`] / [`decode`].
pub const ORDER: u32 = 28;

/// Hilbert index of `(x, y)`, both below 2^28. The result is below 2^56.
pub fn encode(x: u32, y: u32) -> u64 {
    // Placeholder interleave until the Hilbert implementation lands.
    let mut d = 0u64;
    for i in (0..ORDER).rev() {
        d = (d << 2) | (u64::from((x >> i) & 1) << 1) | u64::from((y >> i) & 1);
    }
    d
}

/// Inverse of [`encode`].
pub fn decode(d: u64) -> (u32, u32) {
    let (mut x, mut y) = (0u32, 0u32);
    for i in (0..ORDER).rev() {
        let two = (d >> (2 * i)) & 3;
        x = (x << 1) | (two >> 1) as u32;
        y = (y << 1) | (two & 1) as u32;
    }
    (x, y)
}
