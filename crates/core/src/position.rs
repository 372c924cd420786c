//! Positions in 4-D: feature bits high, content-hash bits low (DESIGN.md §3, FORMAT.md).

use crate::Hash;

/// Width of each coordinate.
pub const COORD_BITS: u32 = 28;
/// High bits of each coordinate: modality-specific features.
pub const FEATURE_BITS: u32 = 12;
/// Low bits of each coordinate: taken from the content hash (4 × 16 = 64 hash bits).
pub const HASH_BITS: u32 = COORD_BITS - FEATURE_BITS;

const FEATURE_MASK: u32 = (1 << FEATURE_BITS) - 1;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
/// Largest coordinate value.
pub const COORD_MAX: u32 = (1 << COORD_BITS) - 1;

/// `(x, y, z, m)`, each an unsigned integer below 2^28.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub m: u32,
}

impl Position {
    pub fn new(x: u32, y: u32, z: u32, m: u32) -> Self {
        Position { x, y, z, m }
    }

    pub fn coords(&self) -> [u32; 4] {
        [self.x, self.y, self.z, self.m]
    }

    pub fn from_coords(c: [u32; 4]) -> Self {
        Position { x: c[0], y: c[1], z: c[2], m: c[3] }
    }

    /// True when every coordinate fits in [`COORD_BITS`].
    pub fn is_valid(&self) -> bool {
        self.coords().iter().all(|&c| c <= COORD_MAX)
    }

    /// Place an atom: 12 feature bits high in each coordinate, then 16 bits of the content
    /// hash (bytes 0..8, two per coordinate, little-endian).
    #[inline]
    pub fn from_features(features: [u16; 4], hash: &Hash) -> Self {
        let h = &hash.0;
        let c = |i: usize| -> u32 {
            let f = u32::from(features[i]) & FEATURE_MASK;
            let low = u32::from(u16::from_le_bytes([h[2 * i], h[2 * i + 1]])) & HASH_MASK;
            (f << HASH_BITS) | low
        };
        Position { x: c(0), y: c(1), z: c(2), m: c(3) }
    }

    /// The feature part (high bits) of each coordinate.
    pub fn features(&self) -> [u16; 4] {
        self.coords().map(|c| (c >> HASH_BITS) as u16)
    }

    /// Squared Euclidean distance, exact in u128.
    pub fn dist2(&self, other: &Position) -> u128 {
        self.coords()
            .iter()
            .zip(other.coords())
            .map(|(&a, b)| {
                let d = i128::from(a) - i128::from(b);
                (d * d) as u128
            })
            .sum()
    }

    /// Euclidean distance.
    pub fn dist(&self, other: &Position) -> f64 {
        (self.dist2(other) as f64).sqrt()
    }
}

/// Running centroid of children's positions: a composite's features are the high bits of the
/// mean of its children's coordinates (repeats count once per occurrence).
#[derive(Clone, Copy, Debug, Default)]
pub struct Centroid {
    sum: [u64; 4],
    n: u64,
}

impl Centroid {
    #[inline]
    pub fn add(&mut self, p: &Position) {
        for (s, c) in self.sum.iter_mut().zip(p.coords()) {
            *s += u64::from(c);
        }
        self.n += 1;
    }

    /// Feature bits of the mean position (all zero for an empty set).
    pub fn features(&self) -> [u16; 4] {
        if self.n == 0 {
            return [0; 4];
        }
        self.sum.map(|s| ((s / self.n) >> HASH_BITS) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn features_survive_placement(f in proptest::array::uniform4(0u16..4096), h in proptest::array::uniform32(any::<u8>())) {
            let p = Position::from_features(f, &Hash(h));
            prop_assert!(p.is_valid());
            prop_assert_eq!(p.features(), f);
        }
    }

    #[test]
    fn centroid_is_mean() {
        let mut c = Centroid::default();
        c.add(&Position::new(0, 1 << 16, 4 << 16, COORD_MAX));
        c.add(&Position::new(2 << 16, 3 << 16, 4 << 16, COORD_MAX));
        assert_eq!(c.features(), [1, 2, 4, 4095]);
    }
}
