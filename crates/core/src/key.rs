//! The Hilbert key `(h_xy, h_yz, h_zm)`: primary key and spatial order (DESIGN.md §4).

use crate::{hilbert, Modality, Position};

/// `h_xy` = modality in the high byte, then the Hilbert index of `(x, y)`; `h_yz`, `h_zm` the
/// Hilbert indices of `(y, z)` and `(z, m)`. All three are non-negative as `i64`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
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
        HilbertKey {
            h_xy: u(0..8),
            h_yz: u(8..16),
            h_zm: u(16..24),
        }
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
            return Err(format!(
                "a Hilbert key is h_xy:h_yz:h_zm (three integers), got {s:?}"
            ));
        }
        let p = |t: &str| {
            t.parse::<u64>()
                .map_err(|e| format!("{t:?} in Hilbert key: {e}"))
        };
        Ok(HilbertKey {
            h_xy: p(parts[0])?,
            h_yz: p(parts[1])?,
            h_zm: p(parts[2])?,
        })
    }
}
