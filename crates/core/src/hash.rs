//! The 32-byte BLAKE3 content hash: an atom's true identity.

use std::fmt;
use std::str::FromStr;

/// BLAKE3 digest of an atom's canonical encoding (see [`crate::atom`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl std::hash::Hash for Hash {
    /// BLAKE3 output is already uniform: eight bytes are a perfect table hash, and hashing
    /// all 32 would cost four times as much in every map keyed by `Hash`.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.prefix_u64());
    }
}

impl Hash {
    pub const LEN: usize = 32;

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// First 8 bytes as a little-endian integer: a well-mixed value for hash tables and
    /// bloom filters (BLAKE3 output is uniform, so no further hashing is needed).
    #[inline]
    pub fn prefix_u64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// Bytes 24..28 as an integer: used for content-defined boundaries, disjoint from the
    /// bytes that fill positions' low bits.
    #[inline]
    pub fn boundary_bits(&self) -> u32 {
        u32::from_le_bytes(self.0[24..28].try_into().expect("4 bytes"))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashParseError {
    #[error("a content hash is 64 hexadecimal characters, got {0} characters")]
    Length(usize),
    #[error("not hexadecimal: {0:?}")]
    NotHex(String),
}

impl FromStr for Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(HashParseError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| HashParseError::NotHex(s.to_string()))?;
        Ok(Hash(out))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
