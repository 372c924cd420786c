//! The Hilbert key `(h_xy, h_yz, h_zm)`: primary key and spatial order (DESIGN.md §4).

use crate::{hilbert, Modality, Position};

/// `h_xy` = modality in the high byte, then the Hilbert index of `(x, y)`; `h_yz`, `h_zm` the
/// Hilbert indices of `(y, z)` and `(z, m)`. All three are non-negative as `i64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HilbertKey {
    pub h_xy: u64,
    pub h_yz: u64,
    pub h_zm: u64,
}

impl HilbertKey {
    pub fn new(modality: Modality, p: &Position) -> Self {
        HilbertKey {
            h_xy: (u64::from(modality.as_u8()) << 56) | hilbert::encode(p.x, p.y),
            h_yz: hilbert::encode(p.y, p.z),
            h_zm: hilbert::encode(p.z, p.m),
        }
    }

    /// The modality byte of `h_xy`.
    pub fn modality_byte(&self) -> u8 {
        (self.h_xy >> 56) as u8
    }

    /// Inverse of [`HilbertKey::new`]: `None` if the three indices disagree on the shared
    /// coordinates or the modality byte is unknown.
    pub fn decode(&self) -> Option<(Modality, Position)> {
        let modality = Modality::from_u8(self.modality_byte()).ok()?;
        let (x, y) = hilbert::decode(self.h_xy & ((1 << 56) - 1));
        let (y2, z) = hilbert::decode(self.h_yz);
        let (z2, m) = hilbert::decode(self.h_zm);
        (y == y2 && z == z2 && self.h_yz >> 56 == 0 && self.h_zm >> 56 == 0)
            .then_some((modality, Position { x, y, z, m }))
    }

    /// Big-endian bytes `h_xy ‖ h_yz ‖ h_zm`: byte order equals key order.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.h_xy.to_be_bytes());
        b[8..16].copy_from_slice(&self.h_yz.to_be_bytes());
        b[16..].copy_from_slice(&self.h_zm.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 24]) -> Self {
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8 bytes"));
        HilbertKey { h_xy: u(0..8), h_yz: u(8..16), h_zm: u(16..24) }
    }
}

impl std::fmt::Display for HilbertKey {
    /// `h_xy:h_yz:h_zm` in decimal, the form the CLI accepts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.h_xy, self.h_yz, self.h_zm)
    }
}

impl std::str::FromStr for HilbertKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(format!("a Hilbert key is h_xy:h_yz:h_zm (three integers), got {s:?}"));
        }
        let p = |t: &str| t.parse::<u64>().map_err(|e| format!("{t:?} in Hilbert key: {e}"));
        Ok(HilbertKey { h_xy: p(parts[0])?, h_yz: p(parts[1])?, h_zm: p(parts[2])? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::COORD_MAX;
    use proptest::prelude::*;

    fn position() -> impl Strategy<Value = Position> {
        proptest::array::uniform4(0..=COORD_MAX).prop_map(Position::from_coords)
    }

    fn modality() -> impl Strategy<Value = Modality> {
        proptest::sample::select(Modality::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn key_round_trips_to_modality_and_position(m in modality(), p in position()) {
            let k = HilbertKey::new(m, &p);
            prop_assert_eq!(k.decode(), Some((m, p)));
            prop_assert_eq!(k.modality_byte(), m.as_u8());
        }

        #[test]
        fn keys_are_non_negative_bigints(m in modality(), p in position()) {
            let k = HilbertKey::new(m, &p);
            for h in [k.h_xy, k.h_yz, k.h_zm] {
                prop_assert!(h < 1 << 63);
                prop_assert!(i64::try_from(h).is_ok());
            }
            prop_assert!(k.h_yz < 1 << 56 && k.h_zm < 1 << 56);
        }

        #[test]
        fn bytes_and_text_round_trip(m in modality(), p in position()) {
            let k = HilbertKey::new(m, &p);
            prop_assert_eq!(HilbertKey::from_bytes(&k.to_bytes()), k);
            prop_assert_eq!(k.to_string().parse::<HilbertKey>(), Ok(k));
        }

        #[test]
        fn byte_order_is_key_order(a in position(), b in position(), ma in modality(), mb in modality()) {
            let (ka, kb) = (HilbertKey::new(ma, &a), HilbertKey::new(mb, &b));
            prop_assert_eq!(ka.to_bytes().cmp(&kb.to_bytes()), ka.cmp(&kb));
        }

        #[test]
        fn inconsistent_shared_coordinates_are_rejected(m in modality(), p in position(), other in 0..=COORD_MAX) {
            let k = HilbertKey::new(m, &p);
            prop_assume!(other != p.y);
            // h_yz built from a different y than h_xy carries.
            let bad_y = HilbertKey { h_yz: hilbert::encode(other, p.z), ..k };
            prop_assert_eq!(bad_y.decode(), None);
            prop_assume!(other != p.z);
            // h_zm built from a different z than h_yz carries.
            let bad_z = HilbertKey { h_zm: hilbert::encode(other, p.m), ..k };
            prop_assert_eq!(bad_z.decode(), None);
        }
    }

    #[test]
    fn out_of_range_parts_are_rejected() {
        let p = Position::new(1, 2, 3, 4);
        let k = HilbertKey::new(Modality::Text, &p);
        // Unknown modality byte.
        let unknown = HilbertKey { h_xy: (0x7f << 56) | (k.h_xy & ((1 << 56) - 1)), ..k };
        assert_eq!(unknown.decode(), None);
        // Bits above the 56-bit index in h_yz / h_zm.
        assert_eq!(HilbertKey { h_yz: k.h_yz | 1 << 56, ..k }.decode(), None);
        assert_eq!(HilbertKey { h_zm: k.h_zm | 1 << 62, ..k }.decode(), None);
        assert_eq!(k.decode(), Some((Modality::Text, p)));
    }

    #[test]
    fn text_form_errors_name_the_problem() {
        assert!("1:2".parse::<HilbertKey>().unwrap_err().contains("three integers"));
        assert!("1:x:3".parse::<HilbertKey>().unwrap_err().contains("\"x\""));
        assert_eq!("1:2:3".parse::<HilbertKey>(), Ok(HilbertKey { h_xy: 1, h_yz: 2, h_zm: 3 }));
    }

    /// SplitMix64: a fixed sample stream, so the averages below are reproducible.
    fn splitmix(s: &mut u64) -> u64 {
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Locality, stated honestly: on average, points within 2^10 of each other per coordinate
    /// get `h_xy` values far closer than random pairs do (the mean gap is dominated by the
    /// rare pairs that straddle a high-level quadrant boundary; the median is far smaller
    /// still). It is not a worst-case bound: see the next test.
    #[test]
    fn near_positions_have_near_keys_on_average() {
        const PAIRS: usize = 20_000;
        let mut s = 7u64;
        let coord = |s: &mut u64| (splitmix(s) as u32) & COORD_MAX;
        let (mut near, mut far) = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
        for _ in 0..PAIRS {
            let p = Position::new(coord(&mut s), coord(&mut s), coord(&mut s), coord(&mut s));
            let jitter = |c: u32, r: u64| {
                let off = (r & 0x7ff) as i64 - 0x400; // -2^10 ..= 2^10 - 1
                (i64::from(c) + off).clamp(0, i64::from(COORD_MAX)) as u32
            };
            let r = splitmix(&mut s);
            let q = Position::new(jitter(p.x, r), jitter(p.y, r >> 16), p.z, p.m);
            let o = Position::new(coord(&mut s), coord(&mut s), p.z, p.m);
            let h = |p: &Position| HilbertKey::new(Modality::Binary, p).h_xy;
            near.push(h(&p).abs_diff(h(&q)));
            far.push(h(&p).abs_diff(h(&o)));
        }
        let mean = |v: &[u64]| v.iter().map(|&d| d as f64).sum::<f64>() / v.len() as f64;
        let median = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (mn, mf) = (mean(&near), mean(&far));
        let (dn, df) = (median(&mut near), median(&mut far));
        // Random pairs: mean gap about 2^56 / 3. Near pairs: orders of magnitude less.
        assert!(mf > 2f64.powi(53), "random pairs mean gap {mf:e}");
        assert!(mn * 1000.0 < mf, "near mean {mn:e} vs random mean {mf:e}");
        assert!(dn * 100_000 < df, "near median {dn} vs random median {df}");
    }

    /// The converse of locality fails at quadrant boundaries: two adjacent points can be
    /// half the curve apart. Queries must not assume near points have near keys.
    #[test]
    fn adjacent_points_can_have_distant_keys() {
        let half = 1u32 << 27;
        let a = HilbertKey::new(Modality::Binary, &Position::new(half - 1, 0, 0, 0));
        let b = HilbertKey::new(Modality::Binary, &Position::new(half, 0, 0, 0));
        assert!(b.h_xy - a.h_xy > 1 << 55);
    }
}
