//! Modalities: what kind of data an atom belongs to. One byte, stable on disk and in keys.

use std::fmt;
use std::str::FromStr;

/// The kind of data an atom belongs to. The discriminant is the on-disk byte and the high byte
/// of `h_xy`; never renumber (adding one needs a decision note).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Modality {
    Binary = 0,
    Text = 1,
    Code = 2,
    Image = 3,
    Audio = 4,
    Video = 5,
    Model = 6,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown modality {0:?}: expected one of binary, text, code, image, audio, video, model")]
pub struct UnknownModality(pub String);

impl Modality {
    pub const ALL: [Modality; 7] = [
        Modality::Binary,
        Modality::Text,
        Modality::Code,
        Modality::Image,
        Modality::Audio,
        Modality::Video,
        Modality::Model,
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(b: u8) -> Result<Self, UnknownModality> {
        Self::ALL.get(b as usize).copied().ok_or_else(|| UnknownModality(b.to_string()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Modality::Binary => "binary",
            Modality::Text => "text",
            Modality::Code => "code",
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Video => "video",
            Modality::Model => "model",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Modality {
    type Err = UnknownModality;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownModality(s.to_string()))
    }
}
