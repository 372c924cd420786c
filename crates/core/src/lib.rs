//! Hartonomous domain core: the atom model and everything derived from content alone.
//!
//! This crate does no I/O. Every function is deterministic: the same content gives the same
//! hash, position, Hilbert key and geometry on every machine, backend and run.

pub mod atom;
pub mod features;
pub mod geom;
pub mod hash;
pub mod hilbert;
pub mod key;
pub mod many;
pub mod modality;
pub mod position;
pub mod tree;

pub use atom::{AtomKind, LEAF_MAX, TAG_LEAF, TAG_NODE};
pub use hash::{Hash, HashParseError};
pub use key::HilbertKey;
pub use modality::{Modality, UnknownModality};
pub use position::{Position, COORD_BITS, FEATURE_BITS, HASH_BITS};
pub use tree::{Child, NodeOut, TreeBuilder, MAX_FANOUT};

/// Version of the canonical encoding, position layout and key layout (see docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 1;
